"""The operator's entities: list, create, change, delete, and check a connector's settings.

Only operators manage entities; an entity's own token sees none of this. Settings are
checked against the connectors' models before anything is written (the same rule as
the TOML file and the CLI), and secrets are write-only: answers mask them, a change
that leaves a secret out keeps the stored one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp

from broker import accounts, journal
from broker.accounts import Principal
from broker.connector import Checkable
from broker.engine import iso
from broker.entity_settings import SettingsError
from broker.errors import ServiceError, not_found
from broker.flows.base import Problem
from broker.outcomes import StepError
from broker.runtime import Runtime, now
from broker.store import entities as stored
from broker.store import journal as stored_journal
from broker.views import MAX_PAGE

CHECK_TIMEOUT = 30.0


def _operator(who: Principal) -> None:
    if not who.is_operator:
        raise ServiceError(403, "only operators manage entities")


def _refused(exc: SettingsError | accounts.InvalidEntity) -> ServiceError:
    if isinstance(exc, accounts.InvalidEntity):
        return ServiceError(422, str(exc), [Problem("siren", str(exc))])
    problems = [Problem(where.split(": ", 1)[1] if ": " in where else where, what)
                for where, what in exc.problems]
    return ServiceError(422, "invalid connector settings", problems)


def view(rt: Runtime, row: Any) -> dict[str, Any]:
    return {"siren": row.siren, "name": row.name, "created_at": iso(row.created_at),
            "connectors": rt.catalog.settings.show(row.siren, row.connectors)}


async def list_entities(rt: Runtime, who: Principal, limit: int = 100,
                        cursor: str | None = None) -> dict[str, Any]:
    _operator(who)
    limit = max(1, min(limit, MAX_PAGE))
    async with rt.db.connect() as conn:
        rows = await stored.page(conn, limit, cursor)
    items = rows[:limit]
    return {"items": [view(rt, r) for r in items],
            "next_cursor": items[-1].siren if len(rows) > limit else None}


async def get_entity(rt: Runtime, who: Principal, siren: str) -> dict[str, Any]:
    _operator(who)
    async with rt.db.connect() as conn:
        row = await stored.get(conn, siren)
    if row is None:
        raise not_found(f"entity {siren}")
    return view(rt, row)


async def create_entity(rt: Runtime, who: Principal, siren: str, name: str,
                        connectors: Mapping[str, Any]) -> dict[str, Any]:
    _operator(who)
    async with rt.db.begin() as conn:
        if await stored.get(conn, siren) is not None:
            raise ServiceError(409, f"entity {siren} exists; change it with PATCH")
        try:
            await accounts.upsert_entity(conn, siren, name, connectors, rt.catalog.settings)
        except (SettingsError, accounts.InvalidEntity) as exc:
            raise _refused(exc) from exc
        await _journal(conn, who, "entity_created", siren)
        row = await stored.get(conn, siren)
    return view(rt, row)


def merged(current: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """Stored settings with ``changes`` applied: a connector or a field set to null is
    removed, a table is merged field by field (a secret left out is kept)."""
    result = {key: dict(values) for key, values in current.items()}
    for key, values in changes.items():
        if values is None:
            result.pop(key, None)
            continue
        if not isinstance(values, Mapping):
            result[key] = values  # refused by the settings check, naming it
            continue
        table = result.setdefault(key, {})
        for field, value in values.items():
            if value is None:
                table.pop(field, None)
            else:
                table[field] = value
    return result


async def update_entity(rt: Runtime, who: Principal, siren: str, name: str | None,
                        connectors: Mapping[str, Any] | None) -> dict[str, Any]:
    _operator(who)
    async with rt.db.begin() as conn:
        row = await stored.get(conn, siren)
        if row is None:
            raise not_found(f"entity {siren}")
        settings = merged(row.connectors, connectors or {})
        try:
            await accounts.upsert_entity(conn, siren, name or row.name, settings,
                                         rt.catalog.settings)
        except (SettingsError, accounts.InvalidEntity) as exc:
            raise _refused(exc) from exc
        await _journal(conn, who, "entity_changed", siren,
                       {"connectors": sorted(connectors or {}), "name": name is not None})
        row = await stored.get(conn, siren)
    rt.known_entities.forget(siren)
    return view(rt, row)


async def delete_entity(rt: Runtime, who: Principal, siren: str) -> None:
    _operator(who)
    async with rt.db.begin() as conn:
        if await stored.get(conn, siren) is None:
            raise not_found(f"entity {siren}")
        live = await stored.live_documents(conn, siren)
        if live:
            raise ServiceError(409, f"entity {siren} has {live} document(s) not ended yet; "
                               "wait for them or cancel them first")
        await stored.delete(conn, siren, now())
        await _journal(conn, who, "entity_deleted", siren)
    rt.known_entities.forget(siren)


async def check_connector(rt: Runtime, who: Principal, siren: str,
                          name: str) -> dict[str, Any]:
    """Ask the peer of connector ``name`` a harmless question with the entity's settings."""
    _operator(who)
    connector = rt.connectors.get(name)
    if connector is None:
        raise not_found(f"connector {name}")
    async with rt.db.connect() as conn:
        row = await stored.get(conn, siren)
    if row is None:
        raise not_found(f"entity {siren}")
    config = row.connectors.get(connector.settings_key)
    if config is None:
        raise ServiceError(422, f"entity {siren} has no {connector.settings_key} settings",
                           [Problem(f"connectors.{connector.settings_key}", "not set")])
    if not isinstance(connector, Checkable):
        raise ServiceError(422, f"connector {name} has no check")
    timeout = aiohttp.ClientTimeout(total=CHECK_TIMEOUT, sock_connect=10)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as http:
            found = await connector.check(config, siren, http)
    except StepError as exc:
        return {"connector": name, "entity": siren, "ok": False, "detail": str(exc)}
    return {"connector": name, "entity": siren, "ok": True, "detail": found}


async def _journal(conn: Any, who: Principal, action: str, siren: str,
                   extra: Mapping[str, Any] | None = None) -> None:
    await stored_journal.append(conn, [journal.Entry(
        "operator", {"action": action, "entity": siren, **(extra or {})}, None, who.actor)],
        now())
