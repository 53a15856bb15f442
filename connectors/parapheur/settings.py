"""``connectors.parapheur``: an entity's i-Parapheur (SOAP endpoint, circuit, account)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, SecretStr, field_validator

from broker.entity_settings import ConnectorSettings, HttpUrl

DEFAULT_DEADLINE_DAYS = 30
DEFAULT_POLL_INTERVAL = 600.0  # Pastell checks every 10 minutes


class ParapheurSettings(ConnectorSettings):
    """``type`` and ``sous_type`` pick the circuit (TypeTechnique/SousType)."""

    SECRETS: ClassVar[tuple[str, ...]] = ("password",)

    url: HttpUrl
    type: str = Field(min_length=1)
    sous_type: str = Field(min_length=1)
    login: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    password_env: str | None = None
    deadline_days: int = Field(default=DEFAULT_DEADLINE_DAYS, gt=0)
    poll_interval: float = Field(default=DEFAULT_POLL_INTERVAL, gt=0)
    visibilite: Literal["PUBLIC", "SERVICE", "CONFIDENTIEL"] = "SERVICE"
    timeout: float = Field(default=120.0, gt=0)
    email_emetteur: str | None = None
    # i-Parapheur metadata name -> key of the document's metadata.
    metadata: dict[str, str] | None = None

    @field_validator("type", "sous_type")
    @classmethod
    def _stripped(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value.strip()

    @field_validator("visibilite", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @property
    def type_technique(self) -> str:
        return self.type
