"""The ``deliver`` step: hand a document to the entity's finance software or GED.

The entity's ``connectors.depot`` configuration picks the way:
``{"mode": "http", "url": ..., "token": ..., "timeout": 30}`` posts to an inbox
(see ``client.py``); ``{"mode": "folder", "path": ...}`` drops into a folder
(see ``folder.py``). Both are safe to run again after a lost answer or a crash.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from connectors.base import Done, Outcome, PermanentError, StepContext
from connectors.depot.client import DepotClient
from connectors.depot.folder import deliver_to_folder


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
    mode = config.get("mode")
    if mode is None:
        mode = "folder" if config.get("path") and not config.get("url") else "http"
    if mode == "http":
        url = config.get("url")
        if not url:
            raise PermanentError(
                f"entity {entity} has no depot endpoint configured (connectors.depot.url or .path)"
            )
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise PermanentError(
                f"entity {entity}: connectors.depot.url must be an http(s) URL, got {url!r}"
            )
        timeout = config.get("timeout", 30)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise PermanentError(
                f"entity {entity}: connectors.depot.timeout must be a positive number "
                f"of seconds, got {timeout!r}"
            )
        token = config.get("token")
        return HttpTarget(url, str(token) if token else None, float(timeout))
    if mode == "folder":
        path = config.get("path")
        if not isinstance(path, str) or not Path(path).is_absolute():
            raise PermanentError(
                f"entity {entity}: connectors.depot.path must be an absolute directory path, "
                f"got {path!r}"
            )
        return FolderTarget(Path(path))
    raise PermanentError(
        f"entity {entity}: unknown connectors.depot.mode {mode!r} (expected 'http' or 'folder')"
    )


def manifest(ctx: StepContext) -> dict[str, Any]:
    """The metadata sent with the files (HTTP part ``metadata.json`` or folder sidecar)."""
    return {
        "document_id": ctx.document_id,
        "flow": ctx.flow,
        "entity": ctx.entity,
        "metadata": dict(ctx.metadata),
        "files": [
            {"name": f.name, "sha256": f.sha256, "size": f.size}
            for f in ctx.files_with_role("document")
        ],
    }


class DepotConnector:
    """Delivers the files with role ``document`` and the metadata, once."""

    name = "depot"
    steps = frozenset({"deliver"})

    async def run(self, ctx: StepContext) -> Outcome:
        if ctx.step not in self.steps:
            raise PermanentError(f"the depot connector has no step {ctx.step!r}")
        target = depot_target(ctx.config, ctx.entity)
        files = ctx.files_with_role("document")
        if not files:
            raise PermanentError(f"document {ctx.document_id} has no file with role 'document'")
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
