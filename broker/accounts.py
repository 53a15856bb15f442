"""Who may use the broker: entities (authorities) and the API tokens that act for them."""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from broker.entity_settings import SettingsCatalog
from broker.ids import new_id, siren_problem
from broker.store import entities as stored_entities
from broker.store import tokens as stored_tokens

OPERATOR = "operator"
ENTITY = "entity"


class InvalidEntity(ValueError):
    pass


def validate_siren(siren: str) -> str:
    problem = siren_problem(siren)
    if problem:
        raise InvalidEntity(problem)
    return siren


async def upsert_entity(conn: AsyncConnection, siren: str, name: str,
                        connectors: Mapping[str, Any], settings: SettingsCatalog,
                        now: float | None = None) -> None:
    """Save an entity; its connector settings are checked first (SettingsError if not fit)."""
    validate_siren(siren)
    await stored_entities.put(conn, siren, name, settings.validate(siren, connectors),
                              now or time.time())


async def get_entity(conn: AsyncConnection, siren: str) -> Any | None:
    return await stored_entities.get(conn, siren)


async def sync_from_config(conn: AsyncConnection, declared: Mapping[str, Any],
                           settings: SettingsCatalog) -> int:
    """Upsert the entities a TOML config declares (``[entities.<SIREN>]``)."""
    for siren, table in declared.items():
        if not isinstance(table, dict):
            raise InvalidEntity(f"[entities.{siren}] must be a table")
        await upsert_entity(conn, str(siren), str(table.get("name", siren)),
                            table.get("connectors", {}), settings)
    return len(declared)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who is calling: an operator (sees all) or one entity's software."""

    token_id: str
    role: str
    entity: str | None

    @property
    def is_operator(self) -> bool:
        return self.role == OPERATOR

    def may_see(self, entity: str) -> bool:
        return self.is_operator or self.entity == entity

    @property
    def actor(self) -> str:
        return f"{self.role}:{self.token_id}"


async def create_token(conn: AsyncConnection, role: str, entity: str | None = None,
                       label: str = "") -> str:
    """Create a token and return it; only its hash is stored."""
    if role not in (OPERATOR, ENTITY):
        raise ValueError(f"unknown role {role!r}")
    if role == ENTITY and (entity is None or await get_entity(conn, entity) is None):
        raise InvalidEntity(f"unknown entity {entity!r}: add it first (demat entity add)")
    token = f"dmt_{secrets.token_urlsafe(32)}"
    await stored_tokens.insert(conn, new_id(), hash_token(token), role,
                               entity if role == ENTITY else None, label, time.time())
    return token


async def authenticate(conn: AsyncConnection, token: str) -> Principal | None:
    row = await stored_tokens.live_by_hash(conn, hash_token(token))
    return Principal(row.id, row.role, row.entity) if row else None


async def has_tokens(conn: AsyncConnection) -> bool:
    return await stored_tokens.any_exists(conn)
