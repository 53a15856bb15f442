"""The ``archive`` step: transfer a document to the entity's SAE (As@lae) and
follow it to the SAE's verdict.

* First run: build the SEDA 2.1 bordereau and the tar.gz, record the transfer id
  (``refs["sae_transfer"]``) before sending, send, record ``sae_sent`` → Pending.
  A run that finds the transfer id but not ``sae_sent`` may have sent it before
  a crash or a lost answer: it asks the SAE first and sends only if the SAE does
  not know the transfer, so a document is never transferred twice.
* Polls: the Acknowledgement (``sae_ack`` once seen), then the
  ArchiveTransferReply: ``000`` → Done with the archive id, any other code →
  Rejected with the SAE's reason; the reply is kept as a file (role ``atr``).

The document may describe itself for the SAE in ``metadata["sae"]``: ``title``,
``description``, ``level``, ``start_date``, ``end_date``, ``keywords``,
``language`` and ``roles`` (the file roles to archive; default: all files).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Self

import aiohttp
from pydantic import Field, SecretStr, ValidationError, model_validator

from broker.entity_settings import HttpUrl, problems_of
from connectors.base import (
    ConnectorSettings,
    Done,
    NewFile,
    Outcome,
    Pending,
    PermanentError,
    Rejected,
    StepContext,
    TransientError,
    secret_of,
    settings_of,
)
from connectors.sae.client import AsalaeClient, ChunkSession
from connectors.sae.seda import (
    Agencies,
    ArchiveDescription,
    ArchiveFile,
    SedaError,
    Transfer,
    build_transfer,
    message_identifier,
    read_acknowledgement,
    read_transfer_reply,
    write_archive,
)

REF_TRANSFER = "sae_transfer"
REF_SENT = "sae_sent"
REF_ACK = "sae_ack"
ATR_ROLE = "atr"


class SaeConfig(ConnectorSettings):
    """An entity's ``connectors.sae`` configuration (its As@lae account and agencies)."""

    SECRETS: ClassVar[tuple[str, ...]] = ("password",)

    url: HttpUrl
    login: str = Field(min_length=1, pattern=r"^[^:]+$")  # Basic auth cannot carry a colon
    password: SecretStr | None = Field(default=None, min_length=1)
    password_file: Path | None = None
    password_env: str | None = None
    archival_agency: str = Field(min_length=1)
    transferring_agency: str = Field(min_length=1)
    originating_agency: str = Field(min_length=1)
    archival_agreement: str | None = None
    archival_profile: str | None = None
    submission_agency: str | None = None
    # Archives larger than this go in chunks (As@lae before v2 refuses 2 GB attachments).
    chunk_threshold: int = Field(default=100 * 1024 * 1024, gt=0)
    chunk_size: int | None = Field(default=None, gt=0)  # default: chunk_threshold
    timeout: float = Field(default=120.0, gt=0)  # seconds, per HTTP request
    poll_after: float = Field(default=3600.0, gt=0)  # the longest wait between polls

    @model_validator(mode="after")
    def _a_password(self) -> Self:
        if all(getattr(self, f) is None for f in ("password", "password_file", "password_env")):
            raise ValueError("a password is needed (password, password_file or password_env)")
        return self

    @property
    def agencies(self) -> Agencies:
        return Agencies(
            archival_agency=self.archival_agency,
            transferring_agency=self.transferring_agency,
            originating_agency=self.originating_agency,
            submission_agency=self.submission_agency,
            archival_agreement=self.archival_agreement,
            archival_profile=self.archival_profile,
        )


def sae_config(config: Mapping[str, Any], entity: str) -> SaeConfig:
    """The entity's SAE settings, or a PermanentError naming what to fix."""
    return settings_of(SaeConfig, config, entity, "sae")


def _title(ctx: StepContext) -> str:
    for key in ("title", "objet", "subject", "nom_fic"):
        value = ctx.metadata.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return f"{ctx.flow} {ctx.document_id}"


def describe(ctx: StepContext) -> ArchiveDescription:
    """The generic description of the document, from its metadata and files."""
    spec = ctx.metadata.get("sae") or {}
    if not isinstance(spec, Mapping):
        raise PermanentError(f"document {ctx.document_id}: metadata 'sae' must be an object")
    fields = dict(spec)
    roles = fields.pop("roles", None)
    files = [
        f
        for f in ctx.files
        if (f.role in roles if isinstance(roles, list | tuple) else f.role != ATR_ROLE)
    ]
    if not files:
        raise PermanentError(f"document {ctx.document_id} has no file to archive")
    fields.setdefault("title", _title(ctx))
    try:
        return ArchiveDescription.model_validate(
            {
                **fields,
                "document_id": ctx.document_id,
                "files": [
                    ArchiveFile(
                        role=f.role,
                        name=f.name,
                        path=f.path,
                        sha256=f.sha256,
                        size=f.size,
                        mime=f.content_type,
                    )
                    for f in files
                ],
            }
        )
    except ValidationError as exc:
        raise PermanentError(
            f"document {ctx.document_id}: cannot describe it for the SAE: "
            + "; ".join(f"{field or 'value'}: {what}" for field, what in problems_of(exc))
        ) from exc


async def _save_ref(ctx: StepContext, key: str, value: str) -> None:
    if ctx.save_ref is not None:
        await ctx.save_ref(key, value)


def _package(transfer: Transfer, folder: Path) -> tuple[Path, Path, int]:
    """Write the bordereau and the archive (blocking); return their paths and the size."""
    folder.mkdir(parents=True, exist_ok=True)
    bordereau = folder / "bordereau.xml"
    bordereau.write_bytes(transfer.bordereau)
    archive = folder / "archive.tar.gz"
    return bordereau, archive, write_archive(transfer.objects, archive)


class SaeConnector:
    """Archives a document in the entity's SAE, once, and waits for its verdict."""

    name = "sae"
    steps = frozenset({"archive"})
    settings_key = "sae"
    settings = SaeConfig
    serves = frozenset({("actes", "archive"), ("helios", "archive"), ("facture", "archive")})

    async def check(self, config: Mapping[str, Any], entity: str,
                    http: aiohttp.ClientSession) -> str:
        cfg = sae_config(config, entity)
        password = secret_of(cfg, "password", entity, "sae") or ""
        client = AsalaeClient(http, cfg.url.rstrip("/"), cfg.login, password, cfg.timeout)
        answer = await client.ping()
        return f"{client.what} answered the ping with the account {cfg.login!r}: {answer}"

    async def run(self, ctx: StepContext) -> Outcome:
        if ctx.step not in self.steps:
            raise PermanentError(f"the sae connector has no step {ctx.step!r}")
        cfg = sae_config(ctx.config, ctx.entity)
        password = secret_of(cfg, "password", ctx.entity, "sae") or ""
        client = AsalaeClient(ctx.http, cfg.url.rstrip("/"), cfg.login, password, cfg.timeout)
        transfer_id = ctx.refs.get(REF_TRANSFER)
        if transfer_id is None or REF_SENT not in ctx.refs:
            return await self._transfer(ctx, cfg, client, transfer_id)
        return await self._follow(ctx, cfg, client, transfer_id)

    # -- sending ----------------------------------------------------------------------------

    async def _build(
        self, ctx: StepContext, cfg: SaeConfig, transfer_id: str
    ) -> tuple[Path, Path, int]:
        desc = describe(ctx)
        try:
            transfer = await asyncio.to_thread(
                build_transfer, desc, cfg.agencies, datetime.now(UTC), transfer_id
            )
            return await asyncio.to_thread(_package, transfer, ctx.scratch("sae"))
        except SedaError as exc:
            raise PermanentError(f"document {ctx.document_id}: {exc}") from exc
        except OSError as exc:  # the blob store or the work dir, maybe back later
            raise TransientError(f"document {ctx.document_id}: cannot package it: {exc}") from exc

    async def _transfer(
        self, ctx: StepContext, cfg: SaeConfig, client: AsalaeClient, saved: str | None
    ) -> Pending:
        transfer_id = saved or message_identifier(ctx.document_id)

        async def known() -> bool:
            answer = await client.message("Acknowledgement", cfg.transferring_agency, transfer_id)
            return answer.state != "unknown"

        # A transfer id without "sent": an earlier run may have sent it; ask before building.
        if saved is not None and await ctx.call(known):
            await _save_ref(ctx, REF_SENT, "found at the SAE")
            return Pending(
                cfg.poll_after, remote_ref=transfer_id, note="the SAE already had this transfer"
            )
        bordereau, archive, size = await self._build(ctx, cfg, transfer_id)
        if saved is None:
            await _save_ref(ctx, REF_TRANSFER, transfer_id)
        # Once a POST may have reached the SAE, every later try asks it first.
        maybe_sent = False

        async def send_whole() -> bool:
            nonlocal maybe_sent
            if maybe_sent and await known():
                return False
            maybe_sent = True
            await client.send(bordereau, archive)
            return True

        if size <= cfg.chunk_threshold:
            sent = await ctx.call(send_whole)
        else:
            # Only the last chunk completes a transfer, and chunks replace themselves.
            session = await ctx.call(lambda: client.open_chunks(bordereau))
            await self._send_chunks(ctx, cfg, client, session, archive, size)
            sent = True
        await _save_ref(ctx, REF_SENT, "sent" if sent else "found at the SAE")
        note = "transferred to the SAE" if sent else "the SAE already had this transfer"
        return Pending(cfg.poll_after, remote_ref=transfer_id, note=note)

    async def _send_chunks(
        self,
        ctx: StepContext,
        cfg: SaeConfig,
        client: AsalaeClient,
        session: ChunkSession,
        archive: Path,
        size: int,
    ) -> None:
        chunk = cfg.chunk_size or cfg.chunk_threshold
        count = math.ceil(size / chunk)
        for index in range(1, count + 1):
            # Each chunk is retried on its own: one sent again replaces itself.
            await ctx.call(partial(client.send_chunk, session, archive, index, count, chunk))

    # -- following --------------------------------------------------------------------------

    async def _follow(
        self, ctx: StepContext, cfg: SaeConfig, client: AsalaeClient, transfer_id: str
    ) -> Outcome:
        agency = cfg.transferring_agency
        if REF_ACK not in ctx.refs:
            answer = await ctx.call(lambda: client.message("Acknowledgement", agency, transfer_id))
            if answer.state != "ready":
                return Pending(
                    cfg.poll_after,
                    remote_ref=transfer_id,
                    note=f"waiting for the SAE's acknowledgement ({answer.state})",
                )
            try:
                ack = read_acknowledgement(answer.body)
            except SedaError as exc:
                raise PermanentError(f"SAE acknowledgement of {transfer_id}: {exc}") from exc
            if ack.received_identifier not in (None, transfer_id):
                raise PermanentError(
                    f"the SAE acknowledged {ack.received_identifier!r}, not {transfer_id!r}"
                )
            await _save_ref(ctx, REF_ACK, ack.message_identifier or "received")
        answer = await ctx.call(lambda: client.message("ArchiveTransferReply", agency, transfer_id))
        if answer.state != "ready":
            return Pending(
                cfg.poll_after,
                remote_ref=transfer_id,
                note=f"acknowledged; waiting for the SAE's reply ({answer.state})",
            )
        return await self._verdict(ctx, transfer_id, answer.body)

    async def _verdict(self, ctx: StepContext, transfer_id: str, body: bytes) -> Outcome:
        try:
            reply = read_transfer_reply(body)
        except SedaError as exc:
            raise PermanentError(f"SAE reply to {transfer_id}: {exc}") from exc
        if reply.transfer_id not in (None, transfer_id):
            raise PermanentError(
                f"the SAE's reply is for {reply.transfer_id!r}, not {transfer_id!r}"
            )
        path = ctx.scratch("sae-atr.xml")
        await asyncio.to_thread(path.write_bytes, body)
        atr = NewFile(ATR_ROLE, f"{transfer_id}-ATR.xml", path, "application/xml")
        if reply.accepted:
            archive = {
                "transfer_id": transfer_id,
                "archive_id": reply.archive_id,
                "reply_code": reply.reply_code,
            }
            return Done(metadata={"archive": archive}, files=(atr,), note="archived")
        code = reply.reply_code or "no code"
        return Rejected(
            reason=f"SAE refused the transfer: {code} {reply.reason}",
            metadata={"archive": {"transfer_id": transfer_id, "reply_code": reply.reply_code}},
            files=(atr,),
        )
