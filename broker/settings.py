"""Settings from ``DEMAT_*`` environment variables, plus the entities TOML file."""

from __future__ import annotations

import tomllib
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from broker.retry import PollPolicy, RetryPolicy, parse_duration, parse_ladder


def parse_step_limits(text: str) -> dict[tuple[str, str], float]:
    """``"actes.sign=10d,helios.transmit=48h"`` -> {("actes", "sign"): 864000.0, ...}."""
    limits: dict[tuple[str, str], float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        where, sep, duration = part.partition("=")
        flow, dot, step = where.strip().partition(".")
        if not (sep and dot and flow and step):
            raise ValueError(f"expected flow.step=duration (e.g. actes.sign=10d), got {part!r}")
        limits[(flow, step.strip())] = parse_duration(duration.strip())
    return limits


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DEMAT_", extra="ignore")

    data_dir: Path = Path("./var")
    # Default: SQLite file in data_dir. PostgreSQL: postgresql+asyncpg://user@host/db
    database_url: str | None = None
    # Unset: embedded transport (no server needed). Else e.g. amqp://guest:guest@127.0.0.1/
    amqp_url: str | None = None
    # TOML file declaring entities and their connector endpoints.
    config: Path | None = None

    host: str = "127.0.0.1"
    port: int = 8080

    retry_ladder: str = "10s,1m,5m,30m,1h,3h"
    retry_in_call: int = 3
    retry_jitter: float = 0.2
    poll_first: str = "2s"
    poll_max: str = "10m"
    # A step whose worker disappeared (killed, hung) this many times is parked as poison.
    crash_limit: int = Field(default=3, ge=1)
    # The broker's own guard on a message delivered this often without being settled
    # (x-delivery-limit): far above the crash limit, since broker restarts and lost
    # channels count there. Fixed when a queue is first declared.
    delivery_limit: int = Field(default=50, ge=1)
    # How long a claimed job may run before another worker may take it.
    lease: str = "5m"
    step_timeout: str = "2m"
    # A stopping worker lets the steps it runs finish for this long, then releases them.
    stop_grace: str = "10s"
    # A worker whose heartbeat is older than this is presumed dead.
    worker_stale: str = "10s"
    # Jobs a worker runs at once per connector: steps mostly wait on peers.
    worker_prefetch: int = 64
    relay_interval: str = "250ms"
    relay_batch: int = 500
    # How often peers are asked for documents they send on their own (préfecture letters).
    ingest_interval: str = "1m"
    # How often the fetches from peers that keep a cursor (Chorus Pro invoices) are looked
    # at; each runs at its own cadence (an entity's setting), one process at a time.
    fetch_tick: str = "1s"
    # A fetch's lease, renewed while it runs: a process that died frees it after this.
    fetch_lease: str = "2m"
    # Uploads larger than this are refused (flows may set a lower cap).
    max_upload: int = 150 * 1024 * 1024
    # HELIOS: the CA bundle (PEM) a PES's XAdES signatures must chain to; unset, signatures
    # are checked by the TdT and the DGFiP only.
    xades_trust: Path | None = None
    # A signature whose certificate does not chain to those anchors is refused, unless this
    # is set: then it is accepted and the journal warns.
    xades_accept_untrusted: bool = False
    # Dashboard: how long a sign-in lasts, and whether the site is served over TLS (a
    # proxy in front): then its cookie is Secure even if the proxy talks plain HTTP to it.
    session_lifetime: str = "12h"
    # A session unused this long ends.
    session_idle: str = "2h"
    behind_tls: bool = False
    # The dashboard's address as browsers reach it (e.g. https://demat.example.fr) when a
    # proxy changes the Host header: forms must come from it.
    public_url: str | None = None
    # A document in one step longer than this is shown stuck: per "flow.step", then for
    # any other step.
    stuck_after: str = ("actes.sign=10d,helios.sign=10d,actes.transmit=2d,actes.cancel=2d,"
                        "helios.transmit=48h,actes.archive=7d,helios.archive=7d,facture.visa=10d,"
                        "facture.status=60d")
    stuck_default: str = "1h"
    log_format: str = Field(default="auto", pattern="^(auto|json|console)$")
    log_level: str = "info"

    @field_validator("retry_ladder")
    @classmethod
    def _ladder(cls, value: str) -> str:
        parse_ladder(value)
        return value

    @field_validator("stuck_after")
    @classmethod
    def _stuck(cls, value: str) -> str:
        parse_step_limits(value)
        return value

    @cached_property
    def stuck_limits(self) -> dict[tuple[str, str], float]:
        return parse_step_limits(self.stuck_after)

    @cached_property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'demat.db').resolve()}"

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def tmp_dir(self) -> Path:
        return self.data_dir / "tmp"

    @cached_property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            in_call_attempts=max(1, self.retry_in_call),
            ladder=parse_ladder(self.retry_ladder),
            jitter=self.retry_jitter,
        )

    @cached_property
    def poll_policy(self) -> PollPolicy:
        return PollPolicy(first=parse_duration(self.poll_first),
                          max_interval=parse_duration(self.poll_max))

    def seconds(self, name: str) -> float:
        """A duration setting in seconds, e.g. ``seconds("lease")``."""
        return parse_duration(str(getattr(self, name)))

    def platform_options(self) -> dict[str, Any]:
        """What flow inspectors and connectors may use of the platform's settings."""
        return {"xades_trust": self.xades_trust,
                "xades_accept_untrusted": self.xades_accept_untrusted}

    def entities_file(self) -> dict[str, Any]:
        """The ``[entities.<SIREN>]`` tables of the TOML config, or {}."""
        if not self.config:
            return {}
        with self.config.open("rb") as fh:
            data = tomllib.load(fh)
        entities = data.get("entities", {})
        if not isinstance(entities, dict):
            raise ValueError(f"{self.config}: [entities] must be a table")
        return entities
