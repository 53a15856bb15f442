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


async def test_documents_already_stored_get_their_keys_step_times_and_counts(
        database_url: str | None, tmp_path: Path) -> None:
    url = database_url or f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
    await upgrade(url, "0007")
    engine = make_engine(url)
    rows = [("01J0000000000000000000000A", "actes", "completed", 7200.5,
             '{"numero": "2024D1", "id_acte": "040-214400152-20240115-2024D1-DE"}'),
            ("01J0000000000000000000000B", "actes", "waiting", 9000.0, '{"numero": "2024D2"}'),
            ("01J0000000000000000000000C", "helios", "rejected", 10900.0,
             '{"nom_fic": "PES_1.xml", "archive": true}')]
    async with engine.begin() as conn:
        for doc_id, flow, state, updated, metadata in rows:
            await conn.execute(sa.text(
                "INSERT INTO documents (id, flow, entity, state, step, run, metadata, refs, "
                "created_at, updated_at) VALUES (:id, :flow, :e, :state, 'transmit', 1, :m, "
                "'{}', 1.0, :u)"), {"id": doc_id, "flow": flow, "e": ENTITY, "state": state,
                                    "m": metadata, "u": updated})
    await engine.dispose()
    await upgrade(url)
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            keys = sorted(tuple(r) for r in await conn.execute(sa.text(
                "SELECT document_id, name, value FROM document_keys")))
            since = [r[0] for r in await conn.execute(sa.text(
                "SELECT step_since FROM documents ORDER BY id"))]
            counts = sorted(tuple(r) for r in await conn.execute(sa.text(
                "SELECT flow, state, n FROM document_counts")))
            hours = sorted(tuple(r) for r in await conn.execute(sa.text(
                "SELECT hour, flow, state, n FROM ended_hours")))
    finally:
        await engine.dispose()
    a, b, c = (r[0] for r in rows)
    assert keys == [(a, "id_acte", "040-214400152-20240115-2024D1-DE"), (a, "numero", "2024D1"),
                    (b, "numero", "2024D2"), (c, "nom_fic", "PES_1.xml")]
    assert since == [7200.5, 9000.0, 10900.0]
    assert counts == [("actes", "completed", 1), ("actes", "waiting", 1),
                      ("helios", "rejected", 1)]
    assert hours == [(2, "actes", "completed", 1), (2, "actes", "completed", 1),
                     (3, "helios", "rejected", 1), (3, "helios", "rejected", 1)]
