"""The connector contract: what a connector is and what it gets to run one step.

A connector (in ``connectors/``) speaks one peer's wire protocol and turns a step
into an outcome. It never touches the store or the queues: the worker hands it a
:class:`StepContext` and commits what it returns. The core depends on this module
only, never on a connector.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

import aiohttp
from pydantic import ValidationError

from broker.entity_settings import ConnectorSettings, problems_of
from broker.outcomes import (
    REJECTION,
    Done,
    NewFile,
    Outcome,
    Pending,
    PermanentError,
    Rejected,
    TransientError,
)
from broker.retry import InCallRetry, RetryPolicy

__all__ = [
    "REJECTION",
    "Checkable",
    "Connector",
    "ConnectorSettings",
    "Done",
    "FetchSource",
    "Fetched",
    "FileView",
    "Found",
    "Incoming",
    "IngestSource",
    "NewFile",
    "Outcome",
    "Pending",
    "PermanentError",
    "Rejected",
    "StepContext",
    "TransientError",
    "secret_of",
    "settings_of",
]

T = TypeVar("T")


@dataclass(frozen=True)
class FileView:
    """A stored file of the document, readable at ``path`` (never modify it)."""

    id: str
    role: str
    name: str
    content_type: str
    size: int
    sha256: str
    path: Path


@dataclass
class StepContext:
    """Everything one run of one step may use."""

    document_id: str
    flow: str
    entity: str
    step: str
    # Scheduled run of this step, 1-based (in-call tries are not counted here).
    run: int
    kind: str  # "run" | "retry" | "poll"
    metadata: Mapping[str, Any]
    files: list[FileView]
    # This entity's configuration for the connector (endpoint, credentials...).
    config: Mapping[str, Any]
    # Remote references recorded by earlier runs (transaction ids...).
    refs: Mapping[str, str]
    http: aiohttp.ClientSession
    workdir: Path
    # The flow step's options for its connector (``Step.options``).
    options: Mapping[str, Any] = field(default_factory=dict)
    # What the platform's settings give flows and connectors (``Settings.platform_options``:
    # the XAdES trust anchors...).
    platform: Mapping[str, Any] = field(default_factory=dict)
    retry: InCallRetry = field(default_factory=lambda: InCallRetry(RetryPolicy()))
    # Persists a remote reference at once, before the step ends, so a re-run
    # after a crash finds it and reconciles with the peer instead of re-sending.
    save_ref: Callable[[str, str], Awaitable[None]] | None = None
    # Stores a file on the document at once (e.g. a signed PDF fetched before the
    # peer deletes it); storing the same content twice under one role is a no-op.
    save_file: Callable[[NewFile], Awaitable[FileView]] | None = None
    # Whether ``scratch`` made the directory (then the worker removes it after the run).
    scratch_made: bool = field(default=False, init=False, repr=False)

    def files_with_role(self, role: str) -> list[FileView]:
        return [f for f in self.files if f.role == role]

    def scratch(self, name: str = "") -> Path:
        """This run's scratch directory (or ``name`` in it): made on first use, removed after."""
        if not self.scratch_made:
            self.workdir.mkdir(parents=True, exist_ok=True)
            self.scratch_made = True
        return self.workdir / name if name else self.workdir

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run one peer call with the quick in-call retries."""
        return await self.retry(fn)


class Connector(Protocol):
    """One peer family.

    ``name`` is also its queue's; ``serves`` lists the (flow, step) pairs it runs;
    ``settings`` is the model of the entity settings it reads under ``settings_key``
    (connectors of one peer account share a key and a model).
    """

    name: str
    steps: frozenset[str]
    settings_key: str
    serves: frozenset[tuple[str, str]]

    @property
    def settings(self) -> type[ConnectorSettings]:
        """The model of this connector's entity settings."""

    async def run(self, ctx: StepContext) -> Outcome:
        """Run ``ctx.step`` for ``ctx.document_id`` once; raise Transient/PermanentError."""


S = TypeVar("S", bound=ConnectorSettings)


def settings_of(model: type[S], config: Mapping[str, Any], entity: str | None, key: str) -> S:
    """``config`` read as ``model``; PermanentError naming each field when it does not fit
    (settings saved before they were checked at saving)."""
    try:
        return model.model_validate(dict(config))
    except ValidationError as exc:
        who = f"entity {entity}: " if entity else ""
        listed = "; ".join(f"connectors.{key}{'.' + field if field else ''}: {what}"
                           for field, what in problems_of(exc))
        raise PermanentError(f"{who}{listed}") from exc


def secret_of(settings: ConnectorSettings, name: str, entity: str | None,
              key: str) -> str | None:
    """The secret ``name`` of ``settings``; PermanentError when its reference cannot be read."""
    try:
        return settings.secret(name)
    except LookupError as exc:
        who = f"entity {entity}: " if entity else ""
        raise PermanentError(f"{who}connectors.{key}.{exc}") from exc


@runtime_checkable
class Checkable(Protocol):
    """A connector that can ask its peer a harmless question with an entity's settings."""

    async def check(self, config: Mapping[str, Any], entity: str,
                    http: aiohttp.ClientSession) -> str:
        """What the peer answered, in a sentence; raise a StepError when it did not."""


@dataclass(frozen=True)
class Incoming:
    """A document a peer sends on its own (a préfecture's letter about an act...)."""

    # The peer's id for it: a document is ingested once per entity and flow.
    key: str
    flow: str
    metadata: dict[str, Any]
    files: tuple[NewFile, ...]
    # (metadata key, value) of the document it relates to, e.g. ("id_acte", "034-…-DE").
    link: tuple[str, str] | None = None
    summary: str = ""


@runtime_checkable
class IngestSource(Protocol):
    """A connector whose peer has documents waiting for the entity."""

    async def incoming(self, config: Mapping[str, Any], entity: str,
                       http: aiohttp.ClientSession, workdir: Path) -> list[Incoming]:
        """What the peer has for the entity now (files written under ``workdir``)."""

    async def acknowledge(self, config: Mapping[str, Any], http: aiohttp.ClientSession,
                          key: str) -> None:
        """Tell the peer the document is safely stored (it stops offering it)."""


@dataclass(frozen=True)
class Found:
    """Something a fetch found at the peer (an invoice whose status changed...)."""

    # Never two documents of ``flow`` for one key of an entity (an invoice and the status
    # change that made it need work).
    key: str
    flow: str
    metadata: dict[str, Any]
    summary: str = ""
    # Why it needs no document (nothing for the entity to do), journaled as skipped.
    skip: str | None = None


@dataclass(frozen=True)
class Fetched:
    found: list[Found]
    # Where the next fetch starts (the peer's time window, its ids...), kept by the broker.
    cursor: dict[str, Any]


@runtime_checkable
class FetchSource(Protocol):
    """A connector that asks its peer, from a cursor, what changed for the entity."""

    def fetch_every(self, config: Mapping[str, Any], entity: str) -> float:
        """Seconds between two fetches for this entity."""

    async def fetch(self, config: Mapping[str, Any], entity: str, http: aiohttp.ClientSession,
                    cursor: Mapping[str, Any] | None) -> Fetched:
        """What changed since ``cursor`` (None: the first fetch), and the next cursor."""
