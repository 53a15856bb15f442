"""An entity's connector settings: one pydantic model per connector, checked when saved.

Each connector declares the model of its settings (``Connector.settings``) under a
settings key (``Connector.settings_key``; connectors talking to one peer account share
it). Settings are validated when they are saved — the TOML file at start, ``demat entity
add``, the entities API — and a bad value is refused there, naming the entity, the
connector and the field, so nothing fails later at delivery time. What is stored is the
validated value (``--set depot.timeout=30`` is stored as the number 30).

Secrets are ``SecretStr`` fields. Each may be given in clear, or as a reference read
when used: ``<name>_file`` (a file holding it) or ``<name>_env`` (an environment
variable's name). Views for people (the API) never show them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Self
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    SecretStr,
    ValidationError,
    model_validator,
)

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MASK = "********"


def _url(schemes: tuple[str, ...], what: str) -> AfterValidator:
    def check(value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in schemes or not parts.hostname or " " in value:
            raise ValueError(f"must be {what}")
        return value

    return AfterValidator(check)


# Endpoints as the settings models declare them.
HttpUrl = Annotated[str, _url(("http", "https"), "an http(s) URL")]
HttpsUrl = Annotated[str, _url(("https",), "an https:// URL")]


class SettingsError(ValueError):
    """Settings refused when saved: every problem, each naming entity, connector and field."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        # (where, what): where is "entity E: connectors.C.F".
        self.problems = problems
        super().__init__("; ".join(f"{where}: {what}" for where, what in problems))


class ConnectorSettings(BaseModel):
    """Base of every connector's settings model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Names of the secret fields; each may also come as <name>_file or <name>_env.
    SECRETS: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="after")
    def _one_source_per_secret(self) -> Self:
        for name in self.SECRETS:
            given = [f for f in (name, f"{name}_file", f"{name}_env")
                     if getattr(self, f, None) is not None]
            if len(given) > 1:
                raise ValueError(f"give {name} one way only, not {' and '.join(given)}")
            file = getattr(self, f"{name}_file", None)
            if file is not None and not (Path(file).is_absolute() and Path(file).is_file()):
                raise ValueError(f"{name}_file must be an existing file's absolute path, "
                                 f"got {str(file)!r}")
            env = getattr(self, f"{name}_env", None)
            if env is not None and not ENV_NAME.match(env):
                raise ValueError(f"{name}_env must be an environment variable's name, "
                                 f"got {env!r}")
        return self

    def secret(self, name: str) -> str | None:
        """The secret ``name``, read from where it was given (None if not given).

        A reference that cannot be read raises ``LookupError`` saying which.
        """
        value = getattr(self, name, None)
        if isinstance(value, SecretStr):
            return value.get_secret_value()
        file = getattr(self, f"{name}_file", None)
        if file is not None:
            try:
                return Path(file).read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise LookupError(f"{name}_file {str(file)!r} cannot be read: {exc}") from exc
        env = getattr(self, f"{name}_env", None)
        if env is not None:
            found = os.environ.get(env)
            if found is None:
                raise LookupError(f"{name}_env names {env}, which is not set")
            return found
        return None


def _plain(value: Any, reveal: bool) -> Any:
    if isinstance(value, SecretStr):
        return value.get_secret_value() if reveal else MASK
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, BaseModel):
        return {k: _plain(v, reveal) for k, v in value}
    if isinstance(value, Mapping):
        return {str(k): _plain(v, reveal) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v, reveal) for v in value]
    return value


def stored(settings: ConnectorSettings) -> dict[str, Any]:
    """What the store keeps: the fields that were given, as JSON values, secrets included."""
    return {name: _plain(getattr(settings, name), reveal=True)
            for name in sorted(settings.model_fields_set)}


def shown(settings: ConnectorSettings) -> dict[str, Any]:
    """What a person sees: every field, secrets masked (and only said to be set)."""
    return {name: _plain(getattr(settings, name), reveal=False)
            for name in type(settings).model_fields}


def problems_of(exc: ValidationError) -> list[tuple[str, str]]:
    """(field, message) of each error pydantic found."""
    found = []
    for error in exc.errors():
        field = ".".join(str(p) for p in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if field and error["type"] not in ("missing", "extra_forbidden") and "input" in error:
            message = f"{message} (got {error['input']!r})"
        if error["type"] == "extra_forbidden":
            message = "unknown setting"
        elif error["type"] == "missing":
            message = "required"
        found.append((field, message))
    return found


class SettingsCatalog:
    """The settings model of each settings key, and validation against them."""

    def __init__(self, models: Mapping[str, type[ConnectorSettings]]) -> None:
        self.models = dict(models)

    @classmethod
    def of(cls, connectors: Iterable[Any]) -> SettingsCatalog:
        models: dict[str, type[ConnectorSettings]] = {}
        for connector in connectors:
            key, model = connector.settings_key, connector.settings
            if models.setdefault(key, model) is not model:
                raise ValueError(f"connectors sharing the settings key {key!r} must share one "
                                 f"settings model ({models[key].__name__}, {model.__name__})")
        return cls(models)

    def parse(self, entity: str, key: str, values: Mapping[str, Any]) -> ConnectorSettings:
        model = self.models.get(key)
        if model is None:
            known = ", ".join(sorted(self.models))
            raise SettingsError([(f"entity {entity}: connectors.{key}",
                                  f"no connector has settings {key!r} (known: {known})")])
        try:
            return model.model_validate(dict(values))
        except ValidationError as exc:
            raise SettingsError([
                (f"entity {entity}: connectors.{key}" + (f".{field}" if field else ""), what)
                for field, what in problems_of(exc)
            ]) from exc

    def validate(self, entity: str, connectors: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """The settings to store for ``entity``, or SettingsError listing every problem."""
        problems: list[tuple[str, str]] = []
        valid: dict[str, dict[str, Any]] = {}
        for key, values in connectors.items():
            if not isinstance(values, Mapping):
                problems.append((f"entity {entity}: connectors.{key}",
                                 "must be a table of settings"))
                continue
            try:
                valid[key] = stored(self.parse(entity, key, values))
            except SettingsError as exc:
                problems += exc.problems
        if problems:
            raise SettingsError(problems)
        return valid

    def show(self, entity: str, connectors: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """Stored settings as a person may see them (secrets masked)."""
        shown_settings: dict[str, dict[str, Any]] = {}
        for key, values in connectors.items():
            try:
                shown_settings[key] = shown(self.parse(entity, key, values))
            except SettingsError:
                # Saved before this check existed: show the keys, never the values.
                shown_settings[key] = {k: MASK for k in values}
        return shown_settings
