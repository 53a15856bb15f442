"""What a connector step returns (or raises) and the engine applies.

A step either returns an outcome (``Done``, ``Pending``, ``Rejected``) or raises
``TransientError`` (worth retrying) or ``PermanentError`` (will not change).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class NewFile:
    """A file produced by a step (a signed PDF, an acknowledgement...).

    ``path`` is a local file the worker moves into the blob store; it must not be
    read again by the connector after the step returns.
    """

    role: str
    name: str
    path: Path
    content_type: str = "application/octet-stream"


@dataclass(frozen=True)
class Done:
    """The step finished; ``metadata`` is merged into the document's metadata."""

    metadata: dict[str, Any] = field(default_factory=dict)
    files: tuple[NewFile, ...] = ()
    note: str = ""


@dataclass(frozen=True)
class Pending:
    """The peer is working on it; check again after ``poll_after`` seconds."""

    poll_after: float
    remote_ref: str | None = None
    note: str = ""


@dataclass(frozen=True)
class Rejected:
    """The peer refused the document for a business reason (its words in ``reason``)."""

    reason: str
    metadata: dict[str, Any] = field(default_factory=dict)
    files: tuple[NewFile, ...] = ()


Outcome = Done | Pending | Rejected

# The metadata key under which a rejection waits while the flow's ``on_rejected`` steps
# run (telling the finance software): ``{"step": ..., "reason": ...}``.
REJECTION = "rejection"


class StepError(Exception):
    """Base of the errors a step may raise."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after

    def __str__(self) -> str:
        return self.message


class TransientError(StepError):
    """Connection refused, timeout, 5xx, 429...: the same call may succeed later.

    ``retry_after`` (seconds) carries a peer's ``Retry-After`` when it gave one.
    ``retry_in_call`` off: the call may have done its work before failing (a change lost
    on its way back), so it is not tried again within the step; the step's next run
    looks first.
    """

    retry_in_call: bool = True


class PermanentError(StepError):
    """Invalid input or a 4xx that will not change: no retry, fail with this message."""
