"""An invoice's processing statuses in Chorus Pro, and which the recipient may set next.

One place for the rule: the broker refuses a status the invoice cannot take before any
call is made, naming the ones it can, and the recipient's chain (``SERVICE_FAIT;MANDATEE``)
is checked step by step. Chorus Pro stays the authority (``transverses/v1/recuperer/etats/
traitement``; an inconsistent change is ``codeRetour`` 20002).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# Code, name, as in the PIVOT's CycleDeValidation and the API.
CODES: dict[str, int] = {
    "DEPOSEE": 1, "EN_COURS_ACHEMINEMENT": 2, "MISE_A_DISPOSITION": 3, "A_RECYCLER": 4,
    "REJETEE": 5, "SUSPENDUE": 6, "SERVICE_FAIT": 7, "MANDATEE": 8,
    "MISE_A_DISPOSITION_COMPTABLE": 9, "COMPTABILISEE": 10, "MISE_EN_PAIEMENT": 11,
    "COMPLETEE": 12,
}
LABELS: dict[str, str] = {
    "DEPOSEE": "déposée", "EN_COURS_ACHEMINEMENT": "en cours d'acheminement",
    "MISE_A_DISPOSITION": "mise à disposition", "A_RECYCLER": "à recycler",
    "REJETEE": "rejetée", "SUSPENDUE": "suspendue", "SERVICE_FAIT": "service fait",
    "MANDATEE": "mandatée", "MISE_A_DISPOSITION_COMPTABLE": "mise à disposition du comptable",
    "COMPTABILISEE": "comptabilisée", "MISE_EN_PAIEMENT": "mise en paiement",
    "COMPLETEE": "complétée",
}
_PROCESSING = ("A_RECYCLER", "REJETEE", "SUSPENDUE", "SERVICE_FAIT", "MANDATEE")
# What the recipient may set from each status.
NEXT: dict[str, tuple[str, ...]] = {
    "MISE_A_DISPOSITION": _PROCESSING,
    "COMPLETEE": _PROCESSING,
    "SERVICE_FAIT": ("REJETEE", "SUSPENDUE", "MANDATEE"),
    "MANDATEE": ("MISE_A_DISPOSITION_COMPTABLE", "COMPTABILISEE", "MISE_EN_PAIEMENT"),
    "MISE_A_DISPOSITION_COMPTABLE": ("COMPTABILISEE", "MISE_EN_PAIEMENT"),
    "COMPTABILISEE": ("MISE_EN_PAIEMENT",),
}
# Statuses after which the recipient has nothing more to do with this invoice (the
# supplier recycles or completes it: a later status opens a new case).
CLOSED = frozenset({"A_RECYCLER", "REJETEE", "SUSPENDUE", "MISE_EN_PAIEMENT"})
# An invoice the recipient has to process: new, or completed after a suspension.
TO_PROCESS = frozenset({"MISE_A_DISPOSITION", "COMPLETEE"})
NEEDS_MOTIF = frozenset({"REJETEE", "SUSPENDUE"})
NEEDS_MANDATE = frozenset({"MANDATEE"})
MAX_MOTIF = 255


@dataclass(frozen=True)
class Change:
    """One status to send, with what it must carry."""

    status: str
    motif: str | None = None
    numero_dp_mandat: str | None = None


class TransitionRefused(ValueError):
    """Why the chain cannot be applied; each reason names the status and what is allowed."""

    def __init__(self, problems: Sequence[tuple[str, str]]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(f"{where}: {what}" for where, what in self.problems))


def parse_chain(text: str) -> list[str]:
    """``"SERVICE_FAIT;MANDATEE"`` -> the statuses, in order."""
    return [part.strip().upper() for part in text.split(";") if part.strip()]


def change_to(status: str, motif: str | None = None,
              numero_dp_mandat: str | None = None) -> Change:
    """The change to ``status`` with only the fields that status takes: a request's motif
    goes with REJETEE or SUSPENDUE, its mandate number with MANDATEE, not with every step
    of the chain."""
    return Change(status, motif if status in NEEDS_MOTIF else None,
                  numero_dp_mandat if status in NEEDS_MANDATE else None)


def plan(current: str, statuses: Sequence[str], motif: str | None = None,
         numero_dp_mandat: str | None = None) -> list[Change]:
    """The changes that take the invoice from ``current`` through ``statuses``, or
    TransitionRefused naming every problem (nothing is sent then)."""
    problems: list[tuple[str, str]] = []
    if not statuses:
        problems.append(("statuts", "no status given"))
    changes: list[Change] = []
    at = current
    for rank, status in enumerate(statuses, 1):
        where = f"statuts[{rank}] {status}"
        if status not in CODES:
            problems.append((where, f"unknown Chorus Pro status (known: {', '.join(CODES)})"))
            break
        allowed = NEXT.get(at, ())
        if status not in allowed:
            told = ", ".join(allowed) if allowed else "none: the recipient has nothing to set"
            problems.append((where, f"an invoice {at} cannot become {status} (allowed from "
                                    f"{at}: {told})"))
            break
        if status in NEEDS_MOTIF:
            if not (motif and motif.strip()):
                problems.append((where, f"{status} needs a motif (the reason told to the "
                                        f"supplier)"))
            elif len(motif) > MAX_MOTIF:
                problems.append((where, f"motif of {len(motif)} characters; Chorus Pro takes "
                                        f"{MAX_MOTIF}"))
        if status in NEEDS_MANDATE and not (numero_dp_mandat and numero_dp_mandat.strip()):
            problems.append((where, "MANDATEE needs numeroDPMandat (the mandate's number)"))
        changes.append(change_to(status, motif, numero_dp_mandat))
        at = status
    if problems:
        raise TransitionRefused(problems)
    return changes
