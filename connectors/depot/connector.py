"""The ``deliver`` step: hand a document to the entity's finance software or GED.

The entity's ``connectors.depot`` configuration picks the way:
``{"mode": "http", "url": ..., "token": ..., "timeout": 30}`` posts to an inbox
(see ``client.py``); ``{"mode": "folder", "path": ...}`` drops into a folder
(see ``folder.py``). Both are safe to run again after a lost answer or a crash.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from pydantic import BaseModel, ConfigDict

from connectors.base import (
    Done,
    FileView,
    Outcome,
    PermanentError,
    StepContext,
    TransientError,
    secret_of,
    settings_of,
    transient_from,
)
from connectors.depot.client import DepotClient
from connectors.depot.folder import deliver_to_folder
from connectors.depot.settings import DepotSettings


@dataclass(frozen=True)
class HttpTarget:
    url: str
    token: str | None = None
    timeout: float = 30.0


@dataclass(frozen=True)
class FolderTarget:
    path: Path


def depot_target(config: Mapping[str, Any], entity: str) -> HttpTarget | FolderTarget:
    """The entity's depot endpoint, or a PermanentError saying what to configure."""
    settings = settings_of(DepotSettings, config, entity, "depot")
    if settings.way == "folder":
        assert settings.path is not None
        return FolderTarget(settings.path)
    assert settings.url is not None
    return HttpTarget(settings.url, secret_of(settings, "token", entity, "depot"),
                      settings.timeout)


class DeliverOptions(BaseModel):
    """Which of the document's files go (``Step.options``): ``document`` by default; an
    invoice sends its PDF, attachments, PIVOT and data."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    roles: tuple[str, ...] = ("document",)


def delivered(ctx: StepContext) -> list[FileView]:
    """The files the step delivers, by role in the options' order."""
    roles = DeliverOptions.model_validate(dict(ctx.options)).roles
    return [f for role in roles for f in ctx.files_with_role(role)]


def manifest(ctx: StepContext) -> dict[str, Any]:
    """The metadata sent with the files (HTTP part ``metadata.json`` or folder sidecar)."""
    return {
        "document_id": ctx.document_id,
        "flow": ctx.flow,
        "entity": ctx.entity,
        "metadata": dict(ctx.metadata),
        "files": [
            {"name": f.name, "sha256": f.sha256, "size": f.size, "role": f.role}
            for f in delivered(ctx)
        ],
    }


async def check_target(target: HttpTarget | FolderTarget, http: aiohttp.ClientSession) -> str:
    """Reach the inbox without sending anything (OPTIONS), or look at the folder."""
    if isinstance(target, FolderTarget):
        if not target.path.is_dir():
            raise PermanentError(f"folder {target.path} does not exist")
        if not os.access(target.path, os.W_OK | os.X_OK):
            raise PermanentError(f"folder {target.path} is not writable by the broker")
        return f"folder {target.path} exists and is writable"
    headers = {"Authorization": f"Bearer {target.token}"} if target.token else {}
    try:
        async with http.options(target.url, headers=headers,
                                timeout=aiohttp.ClientTimeout(total=target.timeout)) as resp:
            status = resp.status
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise transient_from(exc, f"inbox {target.url}") from exc
    if status in (401, 403):
        raise PermanentError(f"inbox {target.url} refused the credentials (HTTP {status})")
    if status in (404, 410):
        raise PermanentError(f"no inbox at {target.url} (HTTP {status})")
    if status >= 500:
        raise TransientError(f"inbox {target.url} answered HTTP {status}")
    return f"inbox {target.url} answered HTTP {status}"


class DepotConnector:
    """Delivers the files of the step's roles (``document``) and the metadata, once."""

    name = "depot"
    steps = frozenset({"deliver"})
    settings_key = "depot"
    settings = DepotSettings
    options = DeliverOptions
    serves = frozenset({("depot", "deliver"), ("helios-retour", "deliver"),
                        ("facture", "deliver")})

    async def check(self, config: Mapping[str, Any], entity: str,
                    http: aiohttp.ClientSession) -> str:
        return await check_target(depot_target(config, entity), http)

    async def run(self, ctx: StepContext) -> Outcome:
        if ctx.step not in self.steps:
            raise PermanentError(f"the depot connector has no step {ctx.step!r}")
        target = depot_target(ctx.config, ctx.entity)
        files = delivered(ctx)
        if not files:
            roles = " or ".join(repr(r) for r in
                                DeliverOptions.model_validate(dict(ctx.options)).roles)
            raise PermanentError(f"document {ctx.document_id} has no file with role {roles}")
        body = manifest(ctx)
        if isinstance(target, FolderTarget):
            drop = await deliver_to_folder(target.path, ctx.document_id, files, body)
            return Done(
                metadata={"depot": {"folder": str(drop.folder), "sidecar": str(drop.sidecar)}},
                note=drop.status,
            )
        client = DepotClient(ctx.http, target.url, target.token, target.timeout)
        answer = await ctx.call(lambda: client.deliver(files, body, ctx.document_id))
        return Done(
            metadata={"depot": {"receipt": answer.receipt, "status": answer.status}},
            note="already received" if answer.replayed else "delivered",
        )
