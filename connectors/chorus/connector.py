"""Chorus Pro for the ``facture`` flow: invoices fetched per entity (``intake``), received
and judged (``receive``), and the recipient's statuses sent back (``sending``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp

from connectors.base import Fetched, Outcome, PermanentError, StepContext, settings_of
from connectors.chorus import intake
from connectors.chorus.client import KEY, ChorusClient
from connectors.chorus.receive import receive
from connectors.chorus.sending import send_statuses
from connectors.chorus.settings import ChorusSettings


class ChorusConnector:
    name = "chorus"
    steps = frozenset({"receive", "status"})
    settings_key = KEY
    settings = ChorusSettings
    serves = frozenset({("facture", "receive"), ("facture", "status")})

    def fetch_every(self, config: Mapping[str, Any], entity: str) -> float:
        return settings_of(ChorusSettings, config, entity, KEY).poll_every

    async def fetch(self, config: Mapping[str, Any], entity: str, http: aiohttp.ClientSession,
                    cursor: Mapping[str, Any] | None) -> Fetched:
        return await intake.fetch(config, entity, http, cursor)

    async def check(self, config: Mapping[str, Any], entity: str,
                    http: aiohttp.ClientSession) -> str:
        client = ChorusClient.of(http, config, entity)
        await client.health()
        structure = await client.structure(client.settings.siret)
        return (f"Chorus Pro answered with the application {client.settings.client_id!r} and "
                f"the account {client.settings.login!r}: SIRET {client.settings.siret} is "
                f"structure {structure.idStructureCPP}")

    async def run(self, ctx: StepContext) -> Outcome:
        if ctx.step == "receive":
            return await receive(ctx)
        if ctx.step == "status":
            return await send_statuses(ctx)
        raise PermanentError(f"the chorus connector has no step {ctx.step!r}")
