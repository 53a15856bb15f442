"""``connectors.chorus``: an entity's Chorus Pro account (PISTE application, technical
account, the structure it receives for, the services it follows)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, SecretStr, field_validator

from broker.entity_settings import ConnectorSettings, HttpUrl
from broker.ids import siret_problem

ENDPOINTS: dict[str, tuple[str, str]] = {
    # environment -> (PISTE OAuth2 token URL, API base)
    "sandbox": ("https://sandbox-oauth.piste.gouv.fr/api/oauth/token",
                "https://sandbox-api.piste.gouv.fr"),
    "production": ("https://oauth.piste.gouv.fr/api/oauth/token", "https://api.piste.gouv.fr"),
}
DEFAULT_POLL_EVERY = 300.0  # the reference product polls every 30 minutes; 5 here


class ChorusSettings(ConnectorSettings):
    """``client_id``/``client_secret``: the PISTE application; ``login``/``password``: the
    Chorus Pro technical account (the ``cpro-account`` header); ``siret``: the structure
    invoices are addressed to; ``services``: the service codes followed (empty: all)."""

    SECRETS: ClassVar[tuple[str, ...]] = ("client_secret", "password")

    environment: Literal["sandbox", "production"] = "sandbox"
    # Explicit endpoints (a proxy, a simulator) instead of the environment's.
    oauth_url: HttpUrl | None = None
    api_url: HttpUrl | None = None
    client_id: str = Field(min_length=1)
    client_secret: SecretStr | None = None
    client_secret_file: Path | None = None
    client_secret_env: str | None = None
    login: str = Field(min_length=1)
    password: SecretStr | None = None
    password_file: Path | None = None
    password_env: str | None = None
    siret: str
    services: tuple[str, ...] = ()
    poll_every: float = Field(default=DEFAULT_POLL_EVERY, ge=1.0,
                              description="seconds between two searches for new invoices")
    # How far back the first search looks for status changes.
    first_window_days: int = Field(default=30, ge=1, le=365)
    page_size: int = Field(default=1000, ge=1, le=1000)
    timeout: float = Field(default=60.0, gt=0)
    # Visa in the parapheur before delivery; archive at the end.
    visa: bool = False
    archive: bool = False

    @field_validator("siret")
    @classmethod
    def _siret(cls, value: str) -> str:
        if said := siret_problem(value.strip()):
            raise ValueError(said)
        return value.strip()

    @property
    def token_url(self) -> str:
        return self.oauth_url or ENDPOINTS[self.environment][0]

    @property
    def base_url(self) -> str:
        return (self.api_url or ENDPOINTS[self.environment][1]).rstrip("/")
