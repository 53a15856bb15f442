"""The classification each entity's peer currently expects (ACTES: RetourClassification)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from broker.store.schema import classifications


async def get(conn: AsyncConnection, entity: str, flow: str) -> Any | None:
    return (await conn.execute(sa.select(classifications).where(
        classifications.c.entity == entity, classifications.c.flow == flow))).first()


async def put(conn: AsyncConnection, entity: str, flow: str, version_date: str,
              data: Mapping[str, Any], now: float) -> None:
    await conn.execute(classifications.delete().where(
        classifications.c.entity == entity, classifications.c.flow == flow))
    await conn.execute(classifications.insert().values(
        entity=entity, flow=flow, version_date=version_date, data=dict(data), fetched_at=now))
