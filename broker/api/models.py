"""API request and response models; the OpenAPI document is generated from them."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue


class ProblemOut(BaseModel):
    field: str
    message: str


class ErrorOut(BaseModel):
    error: str
    problems: list[ProblemOut] = []


class FileOut(BaseModel):
    id: str
    role: str
    name: str
    content_type: str
    size: int
    sha256: str
    step: str | None = Field(None, description="step that produced it; null when uploaded")


class DocumentOut(BaseModel):
    id: str
    flow: str
    entity: str
    state: str = Field(description="queued, running, waiting, retrying, then one of "
                       "completed, rejected, failed, cancelled")
    step: str | None
    attempt: int = Field(description="scheduled run of the current step (1-based)")
    next_due_at: str | None
    last_error: str | None
    metadata: dict[str, Any]
    refs: dict[str, Any]
    created_at: str
    updated_at: str
    files: list[FileOut] | None = None
    connector: str | None = None


class DocumentPage(BaseModel):
    items: list[DocumentOut]
    next_cursor: str | None


class JournalEntryOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    seq: int | None = Field(description="place in the hash chain; null until sealed (< 1 s)")
    at: str
    kind: str
    actor: str


# A replay names at least one of these (not null), or says all=true.
_ONE_GIVEN: list[JsonValue] = [
    {"required": [key], "properties": {key: {"not": {"type": "null"}}}}
    for key in ("id", "ids", "entity", "flow", "step", "error")]


class ReplayIn(BaseModel):
    """What to replay: one id, ids, a filter or ``all``; at least one of them."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={
        "anyOf": [*_ONE_GIVEN, {"required": ["all"], "properties": {"all": {"const": True}}}]})
    id: str | None = Field(None, min_length=1)
    ids: list[Annotated[str, Field(min_length=1)]] = Field([], min_length=1)
    entity: str | None = Field(None, pattern=r"^[0-9]{9}$")
    flow: str | None = Field(None, min_length=1)
    step: str | None = Field(None, min_length=1)
    error: str | None = Field(None, min_length=1,
                              description="replay those whose last error contains this")
    all: bool = False
    limit: int = Field(100, ge=1, le=1000)


class ReplayOut(BaseModel):
    replayed: list[str]
    count: int
    remaining: int


class SubmitForm(BaseModel):
    """multipart/form-data: these fields, plus one file part per file, named by its role."""

    flow: str
    entity: str = Field(pattern=r"^[0-9]{9}$",
                        description="SIREN of the authority (optional with an entity token)")
    metadata: str = Field("{}", description="a JSON object")


class EntityIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    siren: str = Field(pattern=r"^[0-9]{9}$", description="9 digits, with a valid check digit")
    name: str = Field(min_length=1, max_length=255)
    connectors: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="settings by settings key (depot, parapheur, tdt, "
        "sae…); secrets may be given as <name>_file or <name>_env")


class EntityPatch(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str | None = Field(None, min_length=1, max_length=255)
    connectors: dict[str, dict[str, Any] | None] | None = Field(
        None, description="merged into the stored settings: a table field by field (a secret "
        "left out is kept), null removes a connector's settings or one field")


class EntityOut(BaseModel):
    siren: str
    name: str
    created_at: str
    connectors: dict[str, dict[str, Any]] = Field(
        description="every setting with its value or default; secrets masked as ********")


class EntityPage(BaseModel):
    items: list[EntityOut]
    next_cursor: str | None


class CheckOut(BaseModel):
    connector: str
    entity: str
    ok: bool = Field(description="whether the peer answered as expected")
    detail: str = Field(description="what the peer answered, or why the check failed")
