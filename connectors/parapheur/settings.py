"""``connectors.parapheur``: an entity's i-Parapheur (SOAP endpoint, circuit, account)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from broker.entity_settings import ConnectorSettings, HttpUrl

DEFAULT_DEADLINE_DAYS = 30
DEFAULT_POLL_INTERVAL = 600.0  # Pastell checks every 10 minutes


class Circuit(BaseModel):
    """A TypeTechnique and SousType of the parapheur: the circuit a dossier goes through."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str = Field(min_length=1)
    sous_type: str = Field(min_length=1)


class ParapheurSettings(ConnectorSettings):
    """``type`` and ``sous_type`` pick the circuit (TypeTechnique/SousType); ``circuits``
    gives a flow its own (HELIOS: a PES_V2 type such as ``PES``/``Bordereau``)."""

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
    # Flow name -> its circuit, where it is not ``type``/``sous_type``.
    circuits: dict[str, Circuit] = Field(default_factory=dict)

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

    def circuit(self, flow: str) -> Circuit:
        return self.circuits.get(flow) or Circuit(type=self.type, sous_type=self.sous_type)

    def all_circuits(self) -> list[Circuit]:
        return [self.circuit(""), *self.circuits.values()]


class SignOptions(BaseModel):
    """What a flow's signature step sends and what it keeps (``Step.options``).

    ACTES: the act (``acte``) with its annexes, the signed PDF kept as ``acte_signe``
    (PAdES). HELIOS: the PES (``pes``) under protocol HELIOS, signed XAdES enveloped per
    bordereau, the signed PES kept as ``pes_signe``.
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
    # The parapheur type's protocol: HELIOS sends XPathPourSignatureXML and a VisuelPDF,
    # and takes the signed PES from FichierPES.
    protocol: Literal["NONE", "HELIOS"] = "NONE"

    @field_validator("sign")
    @classmethod
    def _some(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("name at least one file role to sign")
        return value
