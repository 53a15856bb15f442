"""``connectors.parapheur``: an entity's i-Parapheur (SOAP endpoint, circuit, account)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

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


class SignOptions(BaseModel):
    """What a flow's signature step sends and what it keeps (``Step.options``).

    ACTES: the act (``acte``) with its annexes, the signed PDF kept as ``acte_signe``
    (PAdES). A PES would send its file for an XAdES signature of its bordereaux.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Roles tried in order for the file to sign; the first role present is signed.
    sign: tuple[str, ...] = ("document",)
    # Role of the files sent along as annexes (not signed), if any.
    annexes: str | None = None
    # Roles under which what comes back is stored on the document.
    signed_as: str = "signed"
    bordereau_as: str = "bordereau_signature"
    signature_as: str = "signature"  # a detached signature (CAdES, PKCS7 types)
    format: Literal["PAdES", "XAdES", "CAdES"] = "PAdES"

    @field_validator("sign")
    @classmethod
    def _some(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("name at least one file role to sign")
        return value
