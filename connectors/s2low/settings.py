"""``connectors.tdt``: an entity's account at its S²LOW-style TdT, shared by its flows.

The TdT authenticates the authority by a TLS client certificate (``cert``, ``key``,
PEM files), optionally with HTTP Basic (``login``, ``password``) on top.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Self

from pydantic import Field, SecretStr, field_validator, model_validator

from broker.entity_settings import ConnectorSettings, HttpsUrl


class TdtAccount(ConnectorSettings):
    SECRETS: ClassVar[tuple[str, ...]] = ("password",)

    url: HttpsUrl
    cert: Path = Field(description="PEM file of the authority's client certificate")
    key: Path = Field(description="PEM file of its private key")
    ca: Path | None = Field(default=None, description="the TdT's CA (PEM); system CAs without")
    login: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    password_env: str | None = None
    timeout: float = Field(default=60.0, gt=0, description="seconds per request")
    # ACTES: how long to wait before asking the TdT again, and posting in waiting mode.
    poll_after: float = Field(default=30.0, gt=0)
    en_attente: bool = False

    @field_validator("cert", "key", "ca")
    @classmethod
    def _pem_file(cls, value: Path | None) -> Path | None:
        if value is not None and not (value.is_absolute() and value.is_file()):
            raise ValueError("must be an existing PEM file's absolute path")
        return value

    @model_validator(mode="after")
    def _password_with_login(self) -> Self:
        has_password = any(getattr(self, f) is not None
                           for f in ("password", "password_file", "password_env"))
        if self.login and not has_password:
            raise ValueError("login needs a password (password, password_file or password_env)")
        return self
