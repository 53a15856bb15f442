"""The words the dashboard shows, in French and in the domain's terms."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

STATES = {
    "queued": "en file", "running": "en cours", "waiting": "en attente du pair",
    "retrying": "nouvel essai prévu", "completed": "terminé", "rejected": "refusé",
    "failed": "en erreur (parqué)", "cancelled": "annulé",
}
FLOWS = {
    "actes": "Actes", "helios": "Hélios (PES)", "depot": "Dépôt", "courrier": "Courrier "
    "de la préfecture", "classification": "Classification", "pes_retour": "PES retour",
    "facture": "Facture Chorus Pro",
}
STEPS = {
    "sign": "signature (parapheur)", "transmit": "télétransmission (TdT)",
    "archive": "archivage (SAE)", "cancel": "annulation (préfecture)",
    "notify": "avis au logiciel financier", "deliver": "dépôt au logiciel",
    "fetch": "récupération", "receive": "réception et contrôle (Chorus Pro)",
    "visa": "visa (parapheur)", "status": "statuts vers Chorus Pro",
}
KINDS = {
    "intake": "dépôt", "transition": "changement d'état", "attempt": "essai",
    "poll": "interrogation du pair", "error": "erreur", "operator": "action d'opérateur",
    "recovery": "reprise après panne", "session": "connexion",
    "fetch": "interrogation de Chorus Pro",
}
ACTIONS = {"retry": "Relancer maintenant", "cancel": "Annuler", "replay": "Rejouer",
           "annuler": "Annuler l'acte (préfecture)",
           "statuts": "Statuts de la facture (Chorus Pro)"}
ROLES = {
    "acte": "acte", "acte_signe": "acte signé", "annexe": "annexe", "pes": "PES",
    "pes_signe": "PES signé",
    "acquit": "PES_Acquit", "aracte": "ARActe", "anomalie": "anomalie de la préfecture",
    "arannulation": "AR d'annulation", "classification": "classification",
    "bordereau_signature": "bordereau de signature", "rapport_signature":
    "rapport de signature", "atr": "attestation de transfert (ATR)",
    "pes_retour": "PES retour", "archive": "archive",
    "facture": "facture", "facture_visee": "facture visée", "piece_jointe": "pièce jointe",
    "pivot": "facture au format PIVOT", "donnees": "données de la facture (JSON)",
    "historique": "historique des statuts", "bordereau_visa": "bordereau de visa",
}
PARIS = ZoneInfo("Europe/Paris")


def label(table: dict[str, str], key: str | None) -> str:
    return table.get(key or "", key or "—")


def when(ts: float | None) -> str:
    """A time as the operator's team reads it (Paris time)."""
    if ts is None:
        return "—"
    return datetime.fromtimestamp(ts, PARIS).strftime("%d/%m/%Y %H:%M:%S")


def iso(ts: float | None) -> str:
    return "" if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


def duration(seconds: float | None) -> str:
    """``3 j 4 h``, ``2 h 5 min``, ``40 s``."""
    if seconds is None or not math.isfinite(seconds):
        return "—"
    s = max(0, int(seconds))
    days, rest = divmod(s, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} j {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{secs} s"


def size(n: int) -> str:
    for unit in ("o", "Kio", "Mio", "Gio"):
        if n < 1024 or unit == "Gio":
            return f"{n} {unit}" if unit == "o" else f"{n:.1f} {unit}".replace(".", ",")
        n /= 1024  # type: ignore[assignment]
    return f"{n}"
