"""``connectors.callback``: where an entity's finance software wants to hear of outcomes."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field, SecretStr

from broker.entity_settings import ConnectorSettings, HttpUrl


class CallbackSettings(ConnectorSettings):
    """A webhook: ``url`` gets a JSON POST signed with HMAC-SHA256 under ``signing_secret``.

    A submission may name its own ``callback_url``; it is used only when it starts with one
    of ``allowed`` (so a document cannot send the broker's requests anywhere).
    """

    SECRETS: ClassVar[tuple[str, ...]] = ("signing_secret",)

    url: HttpUrl
    signing_secret: SecretStr | None = None
    signing_secret_file: Path | None = None
    signing_secret_env: str | None = None
    allowed: list[HttpUrl] = Field(default_factory=list,
                                   description="URL prefixes a submission's callback_url may use")
    timeout: float = Field(default=30.0, gt=0, description="seconds per request")
