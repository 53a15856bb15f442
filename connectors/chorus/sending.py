"""Step ``status``: the recipient's statuses sent to Chorus Pro, each once, in order.

The finance software (or an operator) asks through the API for the next statuses; each
request is checked against the transitions when it is made (``statuses.plan``) and kept
in the document's metadata (``statuts_demandes``). This step sends the changes not sent
yet, one at a time: before each an intent mark is saved; a run that finds a mark without
its outcome asks Chorus Pro's history first and adopts a change already made there, so a
crash never sends a status twice. A change Chorus Pro refuses is kept as refused and the
rest of its chain is not sent. The step waits (polling the history) until the invoice is
closed for the recipient — rejected, suspended, to recycle, paid — and then ends.

A visa refused in the parapheur comes here as the flow's rejection: the invoice is sent
REJETEE with the signer's annotation as motif. An invoice the broker itself refused (or
the finance software would not take) is sent nothing on its own: the step waits, its
reason in view, for a person to say what to tell the supplier (REJETEE or A_RECYCLER with
a motif, through the API or the invoice's page), sends that, and ends.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

from connectors.base import (
    REJECTION,
    Done,
    NewFile,
    Outcome,
    Pending,
    PermanentError,
    StepContext,
)
from connectors.chorus.client import ChorusClient, Refused
from connectors.chorus.models import History
from connectors.chorus.statuses import CLOSED, MAX_MOTIF, Change, change_to

REQUESTS = "statuts_demandes"
CURRENT = "chorus.statut"
# Polls of an invoice waiting for its next status: at most hourly.
WAIT = 3600.0
SENT = "sent"
REFUSED = "refused"


def current_status(metadata: Mapping[str, Any], refs: Mapping[str, str]) -> str:
    """The invoice's status as the broker last knew it."""
    return refs.get(CURRENT) or str(metadata.get("statut") or "")


def pending_changes(metadata: Mapping[str, Any], refs: Mapping[str, str]
                    ) -> list[tuple[str, Change]]:
    """(ref, change) of every requested change with no outcome yet, in order; the rest of a
    chain after a refused change is dropped."""
    out = []
    for n, request in enumerate(metadata.get(REQUESTS) or (), 1):
        for m, status in enumerate(request.get("statuts") or (), 1):
            ref = f"statut.{n}.{m}"
            outcome = refs.get(ref, "")
            if outcome.startswith(REFUSED):
                break
            if outcome.startswith(SENT):
                continue
            out.append((ref, change_to(status, request.get("motif"),
                                       request.get("numero_dp_mandat"))))
    return out


async def _save(ctx: StepContext, key: str, value: str) -> None:
    if ctx.save_ref is not None:
        await ctx.save_ref(key, value)


def _made_since(history: History, status: str, previous: str) -> bool:
    """Whether the history shows ``status`` reached after the newest ``previous`` (the
    status the broker knew before sending): Chorus Pro, or Hélios, may have moved on."""
    entries = history.oldest_first()
    since = max((n for n, e in enumerate(entries) if e.histoStatutCode == previous),
                default=-1)
    return history.statutCourantCode == status or any(
        e.histoStatutCode == status for e in entries[since + 1:])


async def _send_once(ctx: StepContext, client: ChorusClient, invoice: int, ref: str,
                     change: Change, previous: str) -> str | None:
    """Send ``change`` unless an earlier run did; the refusal's reason, or None when sent.

    The intent is saved first. A run that finds it (a crash, or an answer lost after the
    call went out) looks at the invoice's history before sending: a change is never made
    twice, and never said refused because it was already made."""
    if ctx.refs.get(ref, "").startswith(SENT):
        return None  # an earlier run sent it, then stopped before its end
    intent = ctx.refs.get(ref) == "sending" or ctx.save_ref is None
    if intent:
        history = await ctx.call(lambda: client.history(invoice))
        if _made_since(history, change.status, previous):
            await _save(ctx, ref, f"{SENT} (found at Chorus Pro)")
            await _save(ctx, CURRENT, change.status)
            return None
    await _save(ctx, ref, "sending")
    try:
        # A change lost on its way back (MaybeApplied) is not sent again within the call:
        # the step's next run finds the intent and looks at the history first.
        answer = await ctx.call(lambda: client.process(invoice, change))
    except Refused as exc:
        await _save(ctx, ref, f"{REFUSED}: {exc.message}")
        return exc.message
    await _save(ctx, ref, f"{SENT} {answer.dateTraitement or ''}".rstrip())
    await _save(ctx, CURRENT, change.status)
    return None


async def send_statuses(ctx: StepContext) -> Outcome:
    client = ChorusClient.of(ctx.http, ctx.config, ctx.entity)
    invoice = int(ctx.metadata["id_facture"])
    rejection = ctx.metadata.get(REJECTION)
    if isinstance(rejection, Mapping) and rejection.get("step") == "visa":
        return await _after_rejection(ctx, client, invoice, rejection)
    current = current_status(ctx.metadata, ctx.refs)
    refused = []
    stopped: set[str] = set()  # chains with a refused change: the rest of each is dropped
    for ref, change in pending_changes(ctx.metadata, ctx.refs):
        chain = ref.rsplit(".", 1)[0]
        if chain in stopped:
            continue
        said = await _send_once(ctx, client, invoice, ref, change, current)
        if said is None:
            current = change.status
        else:
            refused.append(f"{change.status}: {said}")
            stopped.add(chain)
    history: History | None = None
    if current not in CLOSED:
        # Chorus Pro may move on without the broker (Hélios pays a mandated invoice).
        history = await ctx.call(lambda: client.history(invoice))
        if history.statutCourantCode != current:
            current = history.statutCourantCode
            await _save(ctx, CURRENT, current)
    if current in CLOSED:
        if history is None:
            history = await ctx.call(lambda: client.history(invoice))
        return Done(metadata={"statut": current}, note=f"invoice {current}",
                    files=await _history_file(ctx, history, invoice))
    note = f"invoice {current}; waiting for its next status"
    if isinstance(rejection, Mapping) and current not in CLOSED:
        # Refused by the broker, or by the finance software: a person tells the supplier.
        note = (f"invoice {current}, refused at step {rejection.get('step')}: waiting for a "
                f"person to send Chorus Pro its status (REJETEE or A_RECYCLER with a motif)")
    if refused:
        note += " (refused by Chorus Pro: " + "; ".join(refused) + ")"
    return Pending(WAIT, note=note)


async def _after_rejection(ctx: StepContext, client: ChorusClient, invoice: int,
                           rejection: Mapping[str, Any]) -> Outcome:
    # Statuses asked while the invoice was still being received or signed are not sent:
    # each is said refused, so that the asker sees why.
    for ref, _change in pending_changes(ctx.metadata, ctx.refs):
        await _save(ctx, ref, f"{REFUSED}: not sent, the invoice was rejected at step "
                              f"{rejection.get('step')}")
    motif = str(rejection.get("reason") or "").strip() or "Visa refusé"
    change = Change("REJETEE", motif=motif[:MAX_MOTIF])
    said = await _send_once(ctx, client, invoice, "statut.visa", change,
                            current_status(ctx.metadata, ctx.refs))
    if said is not None:
        raise PermanentError(f"Chorus Pro refused REJETEE after the refused visa: {said}")
    history = await ctx.call(lambda: client.history(invoice))
    return Done(metadata={"statut": "REJETEE", "motif": change.motif},
                note=f"sent REJETEE: {change.motif}",
                files=await _history_file(ctx, history, invoice))


async def _history_file(ctx: StepContext, history: History, invoice: int
                        ) -> tuple[NewFile, ...]:
    """The invoice's status history at Chorus Pro, oldest first (kept, and archived)."""
    path = ctx.scratch(f"historique-{invoice}.json")
    body = {"id_facture": invoice, "statut_courant": history.statutCourantCode,
            "historique": [e.model_dump(mode="json") for e in history.oldest_first()]}
    await asyncio.to_thread(path.write_text, json.dumps(body, ensure_ascii=False, indent=2),
                            "utf-8")
    return (NewFile("historique", path.name, path, "application/json"),)
