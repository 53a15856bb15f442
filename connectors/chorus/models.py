"""Chorus Pro's JSON answers, read exactly.

The API speaks camelCase (``idDestinataire``); the AIFE's older examples PascalCase
(``IdDestinataire``): both are read, keys being taken with their first letter lowered.
Unknown fields are kept (``extra``), so what Chorus Pro adds is not lost. Those old
examples also write integers with leading zeros (``000115552``), which JSON forbids;
:func:`loads` reads them as the numbers they mean.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

_LEADING_ZEROS = re.compile(r'("(?:[^"\\]|\\.)*")|(?<![\w.])(-?)0+(\d)')


def loads(text: str) -> Any:
    """JSON, amounts as exact decimals, also when integers have leading zeros (outside
    strings)."""
    try:
        return json.loads(text, parse_float=Decimal)
    except json.JSONDecodeError:
        fixed = _LEADING_ZEROS.sub(lambda m: m.group(1) or f"{m.group(2)}{m.group(3)}", text)
        if fixed == text:
            raise
        return json.loads(fixed, parse_float=Decimal)


class _Answer(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _camel(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {(k[:1].lower() + k[1:]) if isinstance(k, str) else k: v
                    for k, v in value.items()}
        return value


class Structure(_Answer):
    idStructureCPP: int
    identifiantStructure: str | None = None
    designationStructure: str | None = None
    typeIdentifiantStructure: str | None = None
    statut: str | None = None


class InvoiceSummary(_Answer):
    """One row of ``factures/v1/rechercher/recipiendaire``."""

    idFacture: int
    numeroFacture: str
    statut: str
    dateDepot: str | None = None
    dateFacture: str | None = None
    dateHeureEtatCourant: str | None = None
    idDestinataire: int | None = None
    codeDestinataire: str | None = None
    designationDestinataire: str | None = None
    idServiceExecutant: int | None = None
    codeServiceExecutant: str | None = None
    nomServiceExecutant: str | None = None
    codeFournisseur: str | None = None
    designationFournisseur: str | None = None
    typeIdentifiantFournisseur: str | None = None
    codeServiceFournisseur: str | None = None
    nomServiceFournisseur: str | None = None
    montantHT: Decimal | None = None
    montantTTC: Decimal | None = None
    montantAPayer: Decimal | None = None
    devise: str | None = None
    typeDemandePaiement: str | None = None
    typeFacture: str | None = None
    typeFactureTravaux: str | None = None
    numeroBonCommande: str | None = None
    numeroMarche: str | None = None
    factureTelechargeeParDestinataire: bool | None = None


class SearchPage(_Answer):
    codeRetour: int = 0
    libelle: str | None = None
    pageCourante: int | None = None
    pages: int | None = None
    nbResultatsParPage: int | None = None
    total: int | None = None
    listeFactures: list[InvoiceSummary] = Field(default_factory=list)


class HistoryEntry(_Answer):
    histoStatutId: int
    histoStatutCode: str
    histoStatutDatePassage: str | None = None
    histoStatutCommentaire: str | None = None
    histoStatutUtilisateurNom: str | None = None
    histoStatutUtilisateurPrenom: str | None = None


class _Entries(_Answer):
    histoStatut: list[HistoryEntry] = Field(default_factory=list)


class History(_Answer):
    """``factures/v1/consulter/historique``: newest first, as Chorus Pro lists it."""

    codeRetour: int = 0
    statutCourantCode: str
    historiquesDesStatuts: _Entries = Field(default_factory=_Entries)

    @property
    def entries(self) -> list[HistoryEntry]:
        return self.historiquesDesStatuts.histoStatut

    def oldest_first(self) -> list[HistoryEntry]:
        return sorted(self.entries, key=lambda e: e.histoStatutId)


class ProcessAnswer(_Answer):
    """``factures/v1/traiter/recue``."""

    codeRetour: int = 0
    libelle: str | None = None
    idFacture: int
    numeroFacture: str | None = None
    dateTraitement: str | None = None
    nouveauStatut: str


class ProcessRequest(_Answer):
    """What ``traiter/recue`` is asked (read back from logs and samples)."""

    idFacture: int
    nouveauStatut: str
    motif: str | None = None
    numeroDPMandat: str | None = None
    idUtilisateurCourant: int | None = None


class SearchRequest(_Answer):
    """What ``rechercher/recipiendaire`` is asked, in either spelling."""

    idDestinataire: int | None = None
    idServiceExecutant: int | None = None
    numeroFacture: str | None = None
    statutCourant: list[str] | str | None = None
    periodeDateDepotDu: str | None = None
    periodeDateDepotAu: str | None = None
    periodeDateHeureEtatCourantDu: str | None = None
    periodeDateHeureEtatCourantAu: str | None = None
    idFournisseur: int | None = None
    nbResultatsMaximum: int | None = None
    pageResultatDemandee: int | None = None
    nbResultatsParPage: int | None = None
    triSens: str | None = None
    triColonne: str | None = None

    @property
    def statuses(self) -> list[str]:
        """``statutCourant`` is an array in one client, a single string in AIFE's example."""
        value = self.statutCourant
        if value is None:
            return []
        return [value] if isinstance(value, str) else list(value)
