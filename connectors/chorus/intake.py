"""Which invoices an entity has to process: a search by status change since the cursor.

The cursor is the end of the last window searched; the next window starts an hour before
it (the host's clock may run ahead of Chorus Pro's, Chorus Pro may commit a change late),
and the broker's keys, kept a week, make the overlap harmless. One invoice needs work when
it is newly available to the recipient (MISE_A_DISPOSITION) or completed by its supplier
after a suspension (COMPLETEE); its key is the invoice and that status change, so each
change makes at most one document.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import aiohttp

from connectors.base import Fetched, Found
from connectors.chorus.client import ChorusClient
from connectors.chorus.models import InvoiceSummary
from connectors.chorus.settings import ChorusSettings
from connectors.chorus.statuses import LABELS, TO_PROCESS

FLOW = "facture"
OVERLAP = timedelta(hours=1)
KINDS: tuple[Literal["FACTURE", "FACTURE_TRAVAUX"], ...] = ("FACTURE", "FACTURE_TRAVAUX")


def key_of(summary: InvoiceSummary, history_mark: int | None = None) -> str:
    """The invoice and its status change: the change's time, or, where the search does
    not give it, the newest history entry's id (so a second suspension and completion
    is a new case, not one already seen)."""
    mark = summary.dateHeureEtatCourant or (f"h{history_mark}" if history_mark else "")
    return f"{summary.idFacture}:{summary.statut}:{mark}"


def metadata_of(summary: InvoiceSummary, settings: ChorusSettings) -> dict[str, Any]:
    def amount(value: Any) -> str | None:
        return None if value is None else str(value)

    title = f"Facture {summary.numeroFacture} de {summary.designationFournisseur}"[:255]

    return {
        "id_facture": summary.idFacture, "numero_facture": summary.numeroFacture,
        "statut": summary.statut, "statut_depuis": summary.dateHeureEtatCourant,
        "destinataire": {"id": summary.idDestinataire, "siret": summary.codeDestinataire},
        "service": {"id": summary.idServiceExecutant, "code": summary.codeServiceExecutant},
        "fournisseur": {"code": summary.codeFournisseur,
                        "designation": summary.designationFournisseur,
                        "type_identifiant": summary.typeIdentifiantFournisseur},
        "montants": {"ht": amount(summary.montantHT), "ttc": amount(summary.montantTTC),
                     "a_payer": amount(summary.montantAPayer), "devise": summary.devise},
        "date_facture": summary.dateFacture, "date_depot": summary.dateDepot,
        "type_facture": summary.typeFacture,
        "type_demande_paiement": summary.typeDemandePaiement or "FACTURE",
        "numero_bon_commande": summary.numeroBonCommande,
        "numero_marche": summary.numeroMarche,
        "visa": settings.visa, "archive": settings.archive,
        # The parapheur's dossier title.
        "objet": title,
        # How the SAE describes it.
        "sae": {"title": title, "keywords": [k for k in ("facture", summary.numeroFacture,
                                                          summary.designationFournisseur) if k],
                "description": f"Facture Chorus Pro {summary.idFacture}, "
                               f"{amount(summary.montantTTC)} {summary.devise or 'EUR'} TTC",
                **({"start_date": summary.dateFacture} if summary.dateFacture else {})},
    }


async def _received(client: ChorusClient, structure: int, since: datetime, until: datetime,
                    page_size: int) -> AsyncIterator[InvoiceSummary]:
    """Invoices, then works invoices (listed apart by Chorus Pro), changed in the window."""
    for kind in KINDS:
        async for summary in client.search_received(structure, since, until, kind=kind,
                                                    page_size=page_size):
            yield summary


async def fetch(config: Mapping[str, Any], entity: str, http: aiohttp.ClientSession,
                cursor: Mapping[str, Any] | None) -> Fetched:
    client = ChorusClient.of(http, config, entity)
    settings = client.settings
    # Chorus Pro takes whole seconds: the window ends after this one.
    until = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
    structure = (cursor or {}).get("structure")
    if not isinstance(structure, int) or (cursor or {}).get("siret") != settings.siret:
        # Asked again when the entity's SIRET changes: the old structure is not its own.
        structure = (await client.structure(settings.siret)).idStructureCPP
    last = (cursor or {}).get("until")
    since = (datetime.fromisoformat(last) - OVERLAP if isinstance(last, str)
             else until - timedelta(days=settings.first_window_days))
    found = []
    async for summary in _received(client, structure, since, until, settings.page_size):
        skip = None
        if summary.statut not in TO_PROCESS:
            skip = f"statut {summary.statut}"
        elif settings.services and summary.codeServiceExecutant not in settings.services:
            skip = f"service {summary.codeServiceExecutant} not followed"
        mark = None
        if skip is None and not summary.dateHeureEtatCourant:
            mark = max((e.histoStatutId for e in (await client.history(
                summary.idFacture)).entries), default=None)
        found.append(Found(
            key=key_of(summary, mark), flow=FLOW, metadata=metadata_of(summary, settings),
            summary=f"facture {summary.numeroFacture} de {summary.designationFournisseur}, "
                    f"{LABELS.get(summary.statut, summary.statut)}", skip=skip))
    return Fetched(found, {"structure": structure, "siret": settings.siret,
                           "until": until.isoformat()})
