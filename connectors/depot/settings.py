"""``connectors.depot``: where an entity's finance software or GED takes its documents."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator

from broker.entity_settings import ConnectorSettings, HttpUrl


class DepotSettings(ConnectorSettings):
    """``mode = "http"``: multipart POST to ``url`` (bearer ``token``); ``"folder"``: a drop
    into ``path``. Without ``mode``, ``path`` alone means a folder."""

    SECRETS: ClassVar[tuple[str, ...]] = ("token",)

    mode: Literal["http", "folder"] | None = None
    url: HttpUrl | None = None
    token: SecretStr | None = None
    token_file: Path | None = None
    token_env: str | None = None
    timeout: float = Field(default=30.0, gt=0, description="seconds per request")
    path: Path | None = None

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_absolute():
            raise ValueError("must be an absolute directory path")
        return value

    @model_validator(mode="after")
    def _endpoint(self) -> Self:
        if self.way == "http" and self.url is None:
            raise ValueError("no depot endpoint: set url (http) or path (folder)")
        if self.way == "folder" and self.path is None:
            raise ValueError("mode folder needs path")
        return self

    @property
    def way(self) -> Literal["http", "folder"]:
        if self.mode is not None:
            return self.mode
        return "folder" if self.path is not None and self.url is None else "http"
