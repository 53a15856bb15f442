"""The ``transmit`` and ``cancel`` steps of an ACTES act through an S²LOW-style TdT.

Nothing is sent twice. The transaction id is saved (``tdt_transaction``) the moment
the TdT returns it; for the window between the TdT creating it and that save (a
crash, a lost answer), an intent mark (``tdt_create_started``, the day) is saved
before the create call, and any run that finds the mark, or any in-call retry,
first looks the act up at the TdT (``api/list_actes.php``, by its number and
decision date) and adopts the transaction found. S²LOW itself refuses a second act
with the same number; that answer also leads to the look-up. Cancellation works the
same way (``tdt_cancel``, ``tdt_cancel_started``).

Entity configuration (``connectors.tdt``): ``url`` (https), ``cert``, ``key`` (PEM
paths of the TLS client certificate), ``ca`` (the TdT's CA, PEM; system CAs without
it), optional ``login``/``password`` (HTTP Basic), ``timeout`` (s), ``poll_after``
(s, default 30), ``en_attente`` (post in waiting mode, status 17).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
from pydantic import ValidationError

from broker.xmlsafe import XmlError
from connectors.actes import courriers
from connectors.actes.classification import read_classification
from connectors.actes.messages import AnomalieActe, AnomalieEnveloppe, ARActe, read_message
from connectors.actes.messages import ARAnnulation as ARAnnulationMessage
from connectors.actes.problems import MessageError, problems_from
from connectors.actes.rules import ActeMetadata
from connectors.actes.tdt_client import (
    DUPLICATE_NUMBER_KO,
    PENDING_CANCEL_KO,
    ActeSubmission,
    TdtClient,
    TransactionStatus,
    TransactionSummary,
)
from connectors.actes.xmlbind import ActesModel
from connectors.base import (
    Done,
    FileView,
    Incoming,
    NewFile,
    Outcome,
    Pending,
    PermanentError,
    Rejected,
    StepContext,
    settings_of,
)
from connectors.once import create_once, keep_file, save_ref
from connectors.s2low.client import Attachment, tdt_file_name, tdt_settings, wire_settings
from connectors.s2low.settings import TdtAccount

TRANSACTION_REF = "tdt_transaction"
CREATE_MARK = "tdt_create_started"
CANCEL_REF = "tdt_cancel"
CANCEL_MARK = "tdt_cancel_started"

# TdT statuses of a transaction still on its way (posted, checked, sent, waiting).
IN_PROGRESS = frozenset({1, 2, 3, 17, 18})
# Acknowledged by the préfecture, then possibly validated or archived.
ACKNOWLEDGED = frozenset({4, 5, 12, 13, 14, 15, 19, 20, 22})
# Error (an anomaly from the préfecture, or the TdT's), refused, refused to send.
REFUSED = frozenset({-1, 6, 10})
DEFAULT_POLL = 30.0


def submission(ctx: StepContext, en_attente: bool = False) -> ActeSubmission:
    """The create call's fields and files; PermanentError naming what is missing or wrong."""
    known = {k: v for k, v in ctx.metadata.items() if k in ActeMetadata.model_fields}
    try:
        meta = ActeMetadata.model_validate(known)
    except ValidationError as exc:
        listed = "; ".join(f"{p.field}: {p.message}" for p in problems_from(exc))
        raise PermanentError(
            f"document {ctx.document_id}: metadata not fit for ACTES: {listed}"
        ) from exc
    # The signed version, when there is one, is the act that goes to the préfecture.
    acts = ctx.files_with_role("acte_signe") or ctx.files_with_role("acte")
    if len(acts) != 1:
        raise PermanentError(
            f"document {ctx.document_id}: expected one file with role 'acte' (or 'acte_signe'), "
            f"found {len(acts)}"
        )
    annexes = ctx.files_with_role("annexe")

    def attach(view: FileView) -> Attachment:
        return Attachment(view.path, tdt_file_name(view.name), view.content_type)

    return ActeSubmission(
        nature_code=meta.nature,
        number=meta.numero,
        subject=meta.objet,
        decision_date=meta.date,
        classification=tuple(meta.classification.split(".")),
        type_acte=meta.piece_type,
        acte=attach(acts[0]),
        annexes=tuple(attach(a) for a in annexes),
        type_pj=tuple(meta.annex_types(len(annexes))),
        en_attente=en_attente,
    )


def _read(xml: bytes, what: str) -> ActesModel:
    try:
        return read_message(xml)
    except (XmlError, MessageError) as exc:
        raise PermanentError(f"the TdT's {what} cannot be read: {exc}") from exc


class TdtActesConnector:
    """Sends acts to the contrôle de légalité through the entity's TdT, and cancels them."""

    name = "tdt"
    steps = frozenset({"transmit", "cancel", "fetch"})
    settings_key = "tdt"
    settings = TdtAccount
    serves = frozenset({("actes", "transmit"), ("actes", "cancel"), ("classification", "fetch")})

    async def run(self, ctx: StepContext) -> Outcome:
        if ctx.step not in self.steps:
            raise PermanentError(f"the tdt connector has no step {ctx.step!r}")
        # The account is read once a run: endpoint, certificate, cadence, waiting mode.
        account = settings_of(TdtAccount, ctx.config, ctx.entity, "tdt")
        client = TdtClient(ctx.http, wire_settings(account, ctx.entity))
        if ctx.step == "transmit":
            return await self._transmit(ctx, client, account)
        if ctx.step == "fetch":
            return await self._fetch_classification(ctx, client)
        return await self._cancel(ctx, client, account.poll_after)

    async def incoming(
        self, config: Mapping[str, Any], entity: str, http: aiohttp.ClientSession, workdir: Path
    ) -> list[Incoming]:
        """The préfecture's unread letters about the entity's acts."""
        return await courriers.incoming(config, entity, http, workdir)

    async def acknowledge(
        self, config: Mapping[str, Any], http: aiohttp.ClientSession, key: str
    ) -> None:
        await courriers.acknowledge(config, http, key)

    async def check(self, config: Mapping[str, Any], entity: str,
                    http: aiohttp.ClientSession) -> str:
        """The TdT takes the certificate and answers a listing of the authority's acts."""
        client = TdtClient(http, tdt_settings(config, entity))
        listed = await client.list_transactions(4, limit=1)
        return f"{client.what} answered the listing of acknowledged acts ({len(listed)} shown)"

    async def _fetch_classification(self, ctx: StepContext, client: TdtClient) -> Outcome:
        """The entity's current classification (7-2): the TdT's answer kept as a file, its
        content as JSON in the document's metadata, where intake reads it."""
        xml = await ctx.call(client.fetch_classification)
        try:
            classification = read_classification(xml)
        except (XmlError, ValueError) as exc:
            raise PermanentError(f"{client.what}: unreadable classification: {exc}") from exc
        version = classification.date.isoformat()
        files = await keep_file(ctx, "classification", f"classification-{version}.xml", xml)
        return Done(metadata={"version_date": version,
                              "classification": json.loads(classification.to_json())},
                    files=files, note=f"classification of {version}")

    # -- transmit ------------------------------------------------------------------------

    async def _transmit(self, ctx: StepContext, client: TdtClient,
                        account: TdtAccount) -> Outcome:
        poll = account.poll_after
        transaction = ctx.refs.get(TRANSACTION_REF)
        if transaction is None:
            act = submission(ctx, account.en_attente)

            async def look_up(since: dt.date | None) -> TransactionSummary | None:
                return await client.find_transaction(
                    act.number, decision_date=act.decision_date, min_date=since
                )

            transaction = await create_once(
                ctx,
                CREATE_MARK,
                look_up,
                lambda: client.create_transaction(act),
                DUPLICATE_NUMBER_KO,
            )
            await save_ref(ctx, TRANSACTION_REF, transaction)
            return Pending(poll, remote_ref=transaction, note=f"TdT transaction {transaction}")
        tid = transaction
        status = await ctx.call(lambda: client.get_status(tid))
        if status.code in IN_PROGRESS:
            return Pending(poll, remote_ref=tid, note=f"TdT status {status.code} ({status.label})")
        if status.code in ACKNOWLEDGED or status.code == 0:
            return await self._acknowledged(ctx, client, status)
        if status.code in REFUSED:
            return await self._refused(ctx, status)
        raise PermanentError(
            f"{client.what}: transaction {tid} has status {status.code} ({status.label}), "
            "not one of an act transmission"
        )

    async def _acknowledged(
        self, ctx: StepContext, client: TdtClient, status: TransactionStatus
    ) -> Done:
        tid = status.transaction
        xml = status.xml if status.code == 4 else None
        if xml is None:
            xml = await ctx.call(lambda: client.get_aracte(tid))
        message = _read(xml, "ARActe")
        if not isinstance(message, ARActe):
            raise PermanentError(f"{client.what}: expected an ARActe, got {message.ROOT}")
        files = await keep_file(ctx, "aracte", f"{tdt_file_name(message.id_acte)}-1-2.xml", xml)
        date_ar = message.date_reception.isoformat()
        return Done(
            metadata={
                "id_acte": message.id_acte,
                "tdt": {"transaction": tid, "status": status.code, "date_ar": date_ar},
            },
            files=files,
            note=f"acknowledged on {date_ar} as {message.id_acte}",
        )

    async def _refused(self, ctx: StepContext, status: TransactionStatus) -> Rejected:
        details: dict[str, Any] = {"transaction": status.transaction, "status": status.code}
        if status.message:
            details["message"] = status.message
        files: tuple[NewFile, ...] = ()
        reason = f"TdT status {status.code} ({status.label})"
        if status.message:
            reason = f"{reason}: {status.message}"
        if status.xml is not None:
            message = _read(status.xml, "anomaly")
            if isinstance(message, AnomalieActe | AnomalieEnveloppe):
                # The préfecture's own words: its nature code and detail.
                reason = f"{message.ROOT} {message.nature} : {message.detail or '(no detail)'}"
                details["anomalie"] = {
                    "type": message.ROOT,
                    "nature": message.nature,
                    "detail": message.detail,
                }
                number = tdt_file_name(str(ctx.metadata.get("numero", ctx.document_id)))
                files = await keep_file(ctx, "anomalie", f"{message.ROOT}-{number}.xml", status.xml)
        return Rejected(reason=reason, metadata={"tdt": details}, files=files)

    # -- cancel --------------------------------------------------------------------------

    async def _cancel(self, ctx: StepContext, client: TdtClient, poll: float) -> Outcome:
        act = ctx.refs.get(TRANSACTION_REF)
        id_acte = ctx.metadata.get("id_acte")
        if not act or not isinstance(id_acte, str):
            raise PermanentError(
                f"document {ctx.document_id}: cancelling needs an acknowledged act "
                "(metadata id_acte and the TdT transaction)"
            )
        cancellation = ctx.refs.get(CANCEL_REF)
        if cancellation is None:
            number = str(ctx.metadata.get("numero") or id_acte.split("-")[3])

            async def look_up(since: dt.date | None) -> TransactionSummary | None:
                return await client.find_transaction(
                    number, kind="6", min_date=since, statuses=(1, 2, 3, 17, 4, -1)
                )

            cancellation = await create_once(
                ctx, CANCEL_MARK, look_up, lambda: client.cancel(act), PENDING_CANCEL_KO
            )
            await save_ref(ctx, CANCEL_REF, cancellation)
            return Pending(poll, remote_ref=cancellation, note=f"cancellation {cancellation}")
        cid = cancellation
        status = await ctx.call(lambda: client.get_status(cid))
        if status.code in IN_PROGRESS:
            return Pending(poll, remote_ref=cid, note=f"TdT status {status.code} ({status.label})")
        if status.code == 4 and status.xml is not None:
            message = _read(status.xml, "ARAnnulation")
            if not isinstance(message, ARAnnulationMessage):
                raise PermanentError(f"{client.what}: expected an ARAnnulation, got {message.ROOT}")
            name = f"{tdt_file_name(message.id_acte)}-6-2.xml"
            files = await keep_file(ctx, "arannulation", name, status.xml)
            received = message.date_reception.isoformat()
            return Done(
                metadata={
                    "annulation": {
                        "id_acte": message.id_acte,
                        "date_reception": received,
                        "transaction": cid,
                    }
                },
                files=files,
                note=f"cancellation acknowledged on {received}",
            )
        if status.code in REFUSED:
            return await self._refused(ctx, status)
        raise PermanentError(
            f"{client.what}: cancellation {cid} has status {status.code} ({status.label})"
        )
