"""Flow ``facture``: a Chorus Pro invoice fetched for its recipient, received and judged,
[given a visa in the parapheur], delivered to the finance software, its processing
statuses sent back to Chorus Pro until the invoice is closed for the recipient, [and
archived (SEDA 2.1) with its status history].

Documents are made by the entity's fetch (``connectors.chorus.intake``), one per invoice
and status change that needs work (new, or completed after a suspension); never submitted.
The finance software asks for the next statuses through the API
(``POST /api/v1/documents/{id}/requests/statuts``), checked against what Chorus Pro allows from
the current status before anything is sent. A visa refused in the parapheur sends the
invoice REJETEE with the annotation as motif (``status`` runs after a rejection); an
invoice the broker refused waits there for a person to say what to tell the supplier.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from broker.flows.base import Flow, FollowUp, FollowUpRefused, Problem, Step
from broker.outcomes import REJECTION
from broker.retry import PollPolicy
from connectors.chorus.sending import REQUESTS, current_status, pending_changes
from connectors.chorus.statuses import (
    LABELS,
    NEEDS_MOTIF,
    NEXT,
    TransitionRefused,
    parse_chain,
    plan,
)

VISA_POLLS = PollPolicy(first=1.0, factor=1.5, max_interval=600.0, deadline=30 * 86400.0)
# An invoice waits weeks for its mandate and payment.
STATUS_POLLS = PollPolicy(first=1.0, factor=2.0, max_interval=3600.0, deadline=365 * 86400.0)
SAE_POLLS = PollPolicy(first=1.0, factor=1.5, max_interval=1800.0, deadline=30 * 86400.0)
# What the finance software receives.
DELIVERED = ("facture", "facture_visee", "piece_jointe", "pivot", "donnees")


class FactureMetadata(BaseModel):
    """What the search said of the invoice (``connectors.chorus.intake.metadata_of``)."""

    model_config = ConfigDict(extra="allow")


class StatusRequest(BaseModel):
    """The next statuses of an invoice, as the finance software asks for them."""

    model_config = ConfigDict(extra="forbid")

    statuts: str | list[str] = Field(title="Statuts", description=(
        "the status, or a chain applied one step at a time: \"SERVICE_FAIT;MANDATEE\" or "
        "[\"SERVICE_FAIT\", \"MANDATEE\"]"))
    motif: str | None = Field(default=None, max_length=2000, title="Motif", description=(
        "the reason told to the supplier: required for REJETEE and SUSPENDUE"))
    numero_dp_mandat: str | None = Field(default=None, max_length=64,
                                         title="Numéro de mandat", description=(
        "the mandate's number: required for MANDATEE"))

    @property
    def chain(self) -> list[str]:
        given = self.statuts if isinstance(self.statuts, list) else [self.statuts]
        return [status for part in given for status in parse_chain(part)]


def _will_be(metadata: Mapping[str, Any], refs: Mapping[str, str]) -> str:
    """The invoice's status once what was asked before is sent."""
    waiting = pending_changes(metadata, refs)
    return waiting[-1][1].status if waiting else current_status(metadata, refs)


def statuses_hint(metadata: Mapping[str, Any], refs: Mapping[str, str]) -> str:
    current = _will_be(metadata, refs)
    allowed = NEXT.get(current, ())
    known = f"La facture est (ou sera, une fois les demandes en cours envoyées) " \
            f"« {LABELS.get(current, current)} »."
    rejection = metadata.get(REJECTION)
    if isinstance(rejection, Mapping) and allowed:
        known = (f"Refusée à l'étape {rejection.get('step')} : {rejection.get('reason')}. "
                 f"Dites au fournisseur ce qu'il en est : REJETEE (à refaire) ou A_RECYCLER "
                 f"(mauvais destinataire), avec un motif. {known}")
    if not allowed:
        return f"{known} Aucun statut ne peut plus être envoyé."
    return (f"{known} Statuts possibles ensuite : {', '.join(allowed)} ; une chaîne "
            f"s'écrit SERVICE_FAIT;MANDATEE. Le motif est obligatoire pour "
            f"{' et '.join(sorted(NEEDS_MOTIF))}, le numéro de mandat pour MANDATEE.")


def accept_statuses(metadata: Mapping[str, Any], refs: Mapping[str, str], asked: BaseModel,
                    actor: str) -> dict[str, Any]:
    """The request kept for the ``status`` step, once the whole chain is possible from the
    status the invoice will have when what was asked before is sent."""
    assert isinstance(asked, StatusRequest)
    current = _will_be(metadata, refs)
    try:
        plan(current, asked.chain, asked.motif, asked.numero_dp_mandat)
    except TransitionRefused as exc:
        raise FollowUpRefused(f"status change refused before any call to Chorus Pro: {exc}",
                              [Problem(where, what) for where, what in exc.problems]) from exc
    kept = [*(metadata.get(REQUESTS) or ()), {
        "statuts": asked.chain, "motif": asked.motif, "numero_dp_mandat": asked.numero_dp_mandat,
        "par": actor, "le": datetime.now(UTC).isoformat(timespec="seconds")}]
    return {REQUESTS: kept}


class FactureFlow(Flow):
    def plan(self, metadata: Mapping[str, Any]) -> list[str]:
        steps = ["receive"]
        if metadata.get("visa"):
            steps.append("visa")
        steps += ["deliver", "status"]
        if metadata.get("archive"):
            steps.append("archive")
        return steps


FACTURE = FactureFlow(
    name="facture",
    description=("Chorus Pro invoice: fetched → checked → [visa in the parapheur] → finance "
                 "software → statuses back to Chorus Pro"),
    files={},
    metadata_model=FactureMetadata,
    steps=[
        Step("receive", connector="chorus"),
        Step("visa", connector="parapheur", poll=VISA_POLLS, options={
            "sign": ["facture"], "signed_as": "facture_visee",
            "bordereau_as": "bordereau_visa", "format": "PAdES"}),
        Step("deliver", connector="depot", options={"roles": list(DELIVERED)}),
        Step("status", connector="chorus", poll=STATUS_POLLS),
        Step("archive", connector="sae", poll=SAE_POLLS),
    ],
    incoming_only=True,
    on_rejected=frozenset({"status", "archive"}),
    follow_ups={"statuts": FollowUp(
        "status", StatusRequest, accept_statuses,
        "the invoice's next statuses, sent to Chorus Pro one at a time",
        hint=statuses_hint, after_rejection_at=frozenset({"receive", "deliver"}))},
)
