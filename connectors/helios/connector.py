"""The HELIOS ``transmit`` step: a PES deposited at the TdT, then its DGFiP acquit.

A signed PES (by the parapheur: ``pes_signe``) is checked again before it goes
(``connectors.helios.before_sending``: the rules, each signature against the platform's
trust anchors, a signature report kept); one that does not hold is ``Rejected`` with every
problem, and nothing is deposited.

Nothing is deposited twice: the transaction id is saved (``tdt_helios_transaction``) the
moment the TdT gives it, and an intent mark saved before the deposit makes any later run
look the PES up by its SHA-1 first (``connectors.once``). Polls follow the TdT's HELIOS
statuses until the DGFiP has answered; the acquit is kept, read element by element: all
accepted is ``Done``, any refusal is ``Rejected`` with every error (element, bordereau,
code, text) in the reason and in the metadata's ``errors``.

The entity's PES_Retour are ingested from the same account (``incoming``) as
``helios-retour`` documents, and marked as read once stored.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp

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
from connectors.helios.acquit import Acquit, AcquitError, read_acquit
from connectors.helios.before_sending import SIGNED_PES, Checked, check_before_sending
from connectors.helios.retour import RetourError, read_retour
from connectors.helios.tdt_client import (
    ANSWERED,
    DUPLICATE_KO,
    IN_PROGRESS,
    Deposit,
    HeliosClient,
    HeliosStatus,
    sha1_of,
)
from connectors.once import create_once, keep_file, save_ref
from connectors.s2low.client import Attachment, tdt_file_name, tdt_settings, wire_settings
from connectors.s2low.settings import TdtAccount

TRANSACTION_REF = "tdt_helios_transaction"
DEPOSIT_MARK = "tdt_helios_deposit_started"
RETOUR_FLOW = "helios-retour"


def pes_to_send(ctx: StepContext) -> FileView:
    """The signed PES when the parapheur signed it, else the PES as received."""
    found = ctx.files_with_role(SIGNED_PES) or ctx.files_with_role("pes")
    if len(found) != 1:
        raise PermanentError(f"document {ctx.document_id}: expected one file with role 'pes' "
                             f"(or 'pes_signe'), found {len(found)}")
    return found[0]


def acquit_errors(acquit: Acquit) -> list[dict[str, Any]]:
    """Every DGFiP refusal as data: the element, its bordereau or PJ, code and text."""
    errors: list[dict[str, Any]] = []
    for element in acquit.elements:
        for error in element.errors or ():
            errors.append({"element": element.subject, "domain": element.domain,
                           "bordereau": element.bordereau, "exercice": element.exercice,
                           "id_unique": element.id_unique, "piece": error.piece,
                           "ligne": error.ligne, "code": error.code, "text": error.text})
        if not element.accepted and not element.errors:
            errors.append({"element": element.subject, "domain": element.domain,
                           "bordereau": element.bordereau, "code": None,
                           "text": "refused without a reason"})
    if acquit.negative and not errors:
        errors.append({"element": "PES", "code": None,
                       "text": "the DGFiP refused the whole flow (PES_NONACQUIT)"})
    return errors


class TdtHeliosConnector:
    """Sends PES to the DGFiP through the entity's TdT and brings their acquits back."""

    name = "tdt-helios"
    steps = frozenset({"transmit"})
    settings_key = "tdt"
    settings = TdtAccount
    serves = frozenset({("helios", "transmit")})

    async def run(self, ctx: StepContext) -> Outcome:
        if ctx.step not in self.steps:
            raise PermanentError(f"the tdt-helios connector has no step {ctx.step!r}")
        account = settings_of(TdtAccount, ctx.config, ctx.entity, "tdt")
        client = HeliosClient(ctx.http, wire_settings(account, ctx.entity))
        transaction = ctx.refs.get(TRANSACTION_REF)
        if transaction is None:
            # Once a deposit may have started, the PES may be at the TdT: no verdict now
            # (trust changed since?) may end it refused; the deposit is reconciled instead.
            checked = Checked() if DEPOSIT_MARK in ctx.refs else \
                await check_before_sending(ctx, pes_to_send(ctx))
            if checked.refusal is not None:
                return checked.refusal
            transaction = await self._deposit(ctx, client)
            # Journaled with the step: what was let through must be seen.
            return Pending(account.poll_after, remote_ref=transaction,
                           note="; ".join([f"TdT PES transaction {transaction}",
                                           *checked.warnings]))
        tid = transaction
        status = await ctx.call(lambda: client.get_status(tid))
        if status.code in IN_PROGRESS:
            return Pending(account.poll_after, remote_ref=tid,
                           note=f"TdT status {status.code} ({status.label})")
        if status.code in ANSWERED:
            return await self._answered(ctx, client, status)
        if status.code == -1:
            reason = f"TdT status -1 (Erreur): {status.message or 'no message'}"
            return Rejected(reason=reason, metadata={
                "tdt": {"transaction": tid, "status": -1, "message": status.message},
                "errors": [{"element": "PES", "code": None, "text": status.message}]})
        raise PermanentError(f"{client.what}: PES transaction {tid} has status {status.code} "
                             f"({status.label}), not one of a PES on its way to the DGFiP")

    async def _deposit(self, ctx: StepContext, client: HeliosClient) -> str:
        pes = pes_to_send(ctx)
        sha1 = await asyncio.to_thread(sha1_of, pes.path)
        name = tdt_file_name(pes.name)

        async def look_up(since: dt.date | None) -> Deposit | None:
            return await client.find_deposit(sha1, min_date=since)

        transaction = await create_once(
            ctx, DEPOSIT_MARK, look_up,
            lambda: client.deposit(Attachment(pes.path, name, "application/xml")),
            DUPLICATE_KO)
        await save_ref(ctx, TRANSACTION_REF, transaction)
        return transaction

    async def _answered(self, ctx: StepContext, client: HeliosClient,
                        status: HeliosStatus) -> Outcome:
        tid = status.transaction
        data = await ctx.call(lambda: client.get_acquit(tid))
        try:
            acquit = read_acquit(data)
        except AcquitError as exc:
            raise PermanentError(f"{client.what}: the acquit of PES transaction {tid} cannot "
                                 f"be read: {exc}") from exc
        base = tdt_file_name(str(ctx.metadata.get("nom_fic") or ctx.document_id))
        kind = "PES_NONACQUIT" if acquit.negative else "PES_ACQUIT"
        files = await keep_file(ctx, "acquit", f"{kind}_{base}.xml", data)
        summary = {"transaction": tid, "status": status.code, "accepted": acquit.accepted,
                   "elements": len(acquit.elements)}
        if acquit.accepted:
            return Done(metadata={"acquit": summary}, files=files,
                        note=f"acquitted by the DGFiP ({len(acquit.elements)} element(s))")
        errors = acquit_errors(acquit)
        reason = "refused by the DGFiP: " + "; ".join(acquit.problems())
        return Rejected(reason=reason, metadata={"acquit": summary, "errors": errors},
                        files=files)

    # -- PES_Retour -------------------------------------------------------------------------

    async def incoming(self, config: Mapping[str, Any], entity: str,
                       http: aiohttp.ClientSession, workdir: Path) -> list[Incoming]:
        client = HeliosClient(http, tdt_settings(config, entity))
        found = []
        for listed in await client.list_retours():
            path = workdir / f"retour-{listed.id}.xml"
            await client.get_retour(listed.id, path)
            data = await asyncio.to_thread(path.read_bytes)
            try:
                retour = read_retour(data)
            except RetourError as exc:
                raise PermanentError(f"{client.what}: PES_Retour {listed.id} ({listed.name}): "
                                     f"{exc}") from exc
            name = listed.name if listed.name.endswith(".xml") else f"{listed.name}.xml"
            found.append(Incoming(
                key=f"pes-retour:{listed.id}", flow=RETOUR_FLOW,
                metadata={**retour.metadata(), "tdt": {"retour": listed.id,
                                                       "received": listed.date}},
                files=(NewFile("pes_retour", name, path, "application/xml"),),
                link=("id_coll", retour.id_coll) if retour.id_coll else None,
                summary=f"PES_Retour {name}"))
        return found

    async def acknowledge(self, config: Mapping[str, Any], http: aiohttp.ClientSession,
                          key: str) -> None:
        client = HeliosClient(http, tdt_settings(config, None))
        await client.mark_retour_read(key.removeprefix("pes-retour:"))
