"""What a flow declares: its files, its metadata, its steps and their order."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import IO, Any

from pydantic import BaseModel

from broker.retry import PollPolicy, RetryPolicy


@dataclass(frozen=True)
class FileRule:
    """How many parts of one role a submission may carry."""

    min: int = 0
    max: int | None = None
    description: str = ""


@dataclass(frozen=True)
class Step:
    name: str
    connector: str
    # None: the platform's default policies (settings).
    retry: RetryPolicy | None = None
    poll: PollPolicy | None = None
    # What this step asks of its connector (which file roles to sign, the signature
    # format...): checked against the connector's options model when the catalog is built.
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a submission, and where."""

    field: str
    message: str


@dataclass(frozen=True)
class Inspection:
    """What a file's content says, judged while it was uploaded (``Flow.inspectors``)."""

    # Indexed fields read from it (a PES: NomFic, IdColl, bordereaux...).
    facts: Mapping[str, Any] = field(default_factory=dict)
    problems: Sequence[Problem] = ()
    # What is let through but must be seen (journaled at intake): a signature accepted
    # although its chain is not trusted here...
    warnings: Sequence[str] = ()


# Reads one uploaded file's bytes from a blocking stream (in a thread, as they arrive) and
# judges them; gets the file's name and the platform's options (trust anchors...).
Inspector = Callable[[IO[bytes], str, Mapping[str, Any]], Inspection]


@dataclass(frozen=True)
class UploadedFile:
    """What a flow validator sees of an uploaded file."""

    role: str
    name: str
    size: int
    head: bytes  # first bytes, to recognise the type by content
    inspection: Inspection | None = None


@dataclass(frozen=True)
class Intake:
    """What the store knows that a flow's checks may need."""

    entity: str
    today: date
    # The entity's current classification for this flow (JSON as stored), if any.
    classification: Mapping[str, Any] | None = None
    classification_date: str | None = None


class FollowUpRefused(ValueError):
    """A follow-up request that cannot be taken, and every reason (nothing is changed)."""

    def __init__(self, message: str, problems: Sequence[Problem]) -> None:
        super().__init__(message)
        self.problems = list(problems)


@dataclass(frozen=True)
class FollowUp:
    """A request a step takes from the API (an invoice's next statuses), kept until it runs.

    ``accept`` gets the document's metadata and references, the request (``model``) and
    who asks; it returns what to merge into the metadata, or raises FollowUpRefused. The
    step does what was asked when it runs: at once if the document waits in it.
    """

    step: str
    model: type[BaseModel]
    accept: Callable[[Mapping[str, Any], Mapping[str, str], BaseModel, str], dict[str, Any]]
    description: str = ""
    # What a person asking should know now (the statuses possible next), from the
    # document's metadata and references; shown by the dashboard's form.
    hint: Callable[[Mapping[str, Any], Mapping[str, str]], str] | None = None
    # Rejections at these steps still let the request be taken at its step: a person
    # tells the peer what to do with what the broker refused (an invoice: REJETEE).
    after_rejection_at: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Flow:
    name: str
    description: str
    files: Mapping[str, FileRule]
    metadata_model: type[BaseModel]
    steps: Sequence[Step]
    max_upload: int | None = None
    # Actions a person may ask of a completed document: name -> (step, metadata key that
    # must be present), e.g. ACTES "annuler" -> ("cancel", "id_acte").
    actions: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    # The flow whose documents fetch the entity's current classification for this one
    # (ACTES: ``classification``); submissions are checked against the latest fetched.
    classification_by: str | None = None
    # Documents of this flow come from peers (ingested), never from a submission.
    incoming_only: bool = False
    # Steps of the plan that still run when an earlier step is rejected (HELIOS: tell the
    # finance software); the document ends ``rejected`` after them.
    on_rejected: frozenset[str] = frozenset()
    # Files of these roles are read by their inspector while they stream in.
    inspectors: Mapping[str, Inspector] = field(default_factory=dict)
    # Requests a step takes from the API, before or while it runs: name -> follow-up.
    follow_ups: Mapping[str, FollowUp] = field(default_factory=dict)

    def step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(f"flow {self.name} has no step {name!r}")

    def plan(self, metadata: Mapping[str, Any]) -> list[str]:
        """The steps this document goes through, in order (all of them by default)."""
        return [step.name for step in self.steps]

    def unique_key(self, metadata: BaseModel,
                   files: Sequence[UploadedFile] = ()) -> tuple[str, str] | None:
        """(field, value) no other live document of the entity may share; None: no such key."""
        return None

    def derived(self, files: Sequence[UploadedFile]) -> dict[str, Any]:
        """Metadata read from the files (their inspections' facts), stored with the rest."""
        return {}

    def check(self, metadata: BaseModel, files: Sequence[UploadedFile],
              intake: Intake) -> list[Problem]:
        """Checks beyond the metadata model: file counts by role, then flow rules."""
        problems: list[Problem] = []
        for role in sorted({f.role for f in files} - set(self.files)):
            allowed = ", ".join(sorted(self.files))
            problems.append(Problem(f"files.{role}",
                                    f"unknown file part {role!r} for flow {self.name} "
                                    f"(expected: {allowed})"))
        for role, rule in self.files.items():
            count = sum(1 for f in files if f.role == role)
            if count < rule.min:
                problems.append(Problem(f"files.{role}", f"flow {self.name} needs at least "
                                        f"{rule.min} file part(s) named {role!r}, got {count}"))
            if rule.max is not None and count > rule.max:
                problems.append(Problem(f"files.{role}", f"flow {self.name} takes at most "
                                        f"{rule.max} file part(s) named {role!r}, got {count}"))
        for f in files:
            if f.size == 0:
                problems.append(Problem(f"files.{f.role}", f"file {f.name!r} is empty"))
        return problems + self.check_content(metadata, files, intake)

    def check_content(self, metadata: BaseModel, files: Sequence[UploadedFile],
                      intake: Intake) -> list[Problem]:
        """Flow-specific rules; flows override this."""
        return []
