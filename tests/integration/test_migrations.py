"""Migrations that move data keep it: a store written by an earlier version still works."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from broker import accounts
from broker.accounts import Principal
from broker.runtime import Runtime
from broker.settings import Settings
from broker.store.db import make_engine
from broker.store.migrate import upgrade
from broker.views import classification_of
from broker.wiring import catalog

ENTITY = "214400152"
OPERATOR = Principal("t", accounts.OPERATOR, None)


async def test_kept_classifications_become_documents_of_their_flow(
        database_url: str | None, tmp_path: Path) -> None:
    url = database_url or f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
    await upgrade(url, "0006")
    engine = make_engine(url)
    async with engine.begin() as conn:
        await conn.execute(sa.text(
            "INSERT INTO entities (siren, name, connectors, created_at) "
            "VALUES (:e, 'Commune', :none, 1.0)"), {"e": ENTITY, "none": "{}"})
        await conn.execute(sa.text(
            "INSERT INTO classifications (entity, flow, version_date, data, fetched_at) "
            "VALUES (:e, 'actes', '2024-01-15', :data, 1700000000.0)"),
            {"e": ENTITY, "data": '{"date": "2024-01-15", "matieres": [[1, 1]]}'})
    await engine.dispose()

    rt = await Runtime.open(Settings(data_dir=tmp_path / "data", database_url=url), catalog())
    try:
        current = await classification_of(rt, OPERATOR, ENTITY, "actes")
        assert current["version_date"] == "2024-01-15"
        assert current["data"] == {"date": "2024-01-15", "matieres": [[1, 1]]}
        assert current["fetched_at"] == "2023-11-14T22:13:20.000Z"
        async with rt.db.connect() as conn:
            tables = await conn.run_sync(lambda c: sa.inspect(c).get_table_names())
            kinds = (await conn.execute(sa.text(
                "SELECT kind, actor FROM journal WHERE document_id = :d"),
                {"d": current["document"]})).all()
        assert "classifications" not in tables
        assert [tuple(k) for k in kinds] == [("intake", "migration")]
    finally:
        await rt.close()
