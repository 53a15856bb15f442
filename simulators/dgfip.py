"""The DGFiP behind the TdT simulator: what Hélios answers about a PES, as a PES_ACQUIT.

``acquit_for`` writes the acquit the DGFiP would send for a PES it read (its header echoed,
one ``ElementACQUIT`` per bordereau and per PJ), accepting everything or refusing with real
``NumAnoAck`` codes and texts. The acquits it writes validate against the official
PES_Acquit schema (tests/conformance/test_pes_conformance.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date

from lxml import etree

from connectors.helios.acquit import ACQUIT_NS
from connectors.helios.pes import PesSummary

# Domains of an ElementACQUIT (CommunAck.xsd): 4 pièce justificative, 5 dépense, 6 recette.
_DOMAIN = {"depense": "5", "recette": "6"}


@dataclass(frozen=True)
class Refusal:
    """One error of the DGFiP's: a real ``NumAnoAck`` code and its text."""

    code: str
    text: str


# The refusals the DGFiP sends most, as the reference product's users see them.
DUPLICATE_BORDEREAU = Refusal("ERREUR_DOUBLON_BORDEREAU", "Bordereau déjà intégré dans HELIOS")
UNKNOWN_CODIQUE = Refusal("ERREUR_CODIQUE", "Le codique du poste comptable est inconnu")
UNKNOWN_SIRET = Refusal("ERREUR_SIRET", "Le SIRET de la collectivité est inconnu")
BAD_SIGNATURE = Refusal("ERREUR_SIGNATURE_BORDEREAU_INVALIDE",
                        "La signature du bordereau est invalide")
DUPLICATE_PJ = Refusal("ERREUR_DOUBLON_PJ",
                       "1984 - L'identifiant unique de la PJ a déjà été intégré dans HELIOS")


def _v(parent: etree._Element, name: str, value: str) -> etree._Element:
    return etree.SubElement(parent, name, V=value)


def acquit_for(summary: PesSummary, *, refusals: Mapping[str, Sequence[Refusal]] | None = None,
               pj_ids: Sequence[str] = (), day: date | None = None) -> bytes:
    """The PES_ACQUIT for the PES ``summary`` describes; ``refusals`` by bordereau number
    (``"*"``: every bordereau), each refused bordereau's element with those errors."""
    refused = refusals or {}
    root = etree.Element(f"{{{ACQUIT_NS}}}PES_ACQUIT", nsmap={"n": ACQUIT_NS})
    envelope = etree.SubElement(root, "Enveloppe")
    params = etree.SubElement(envelope, "Parametres")
    _v(params, "Version", "2")
    _v(params, "TypFic", "PESALR2")
    _v(params, "NomFic", summary.nom_fic or "")
    sender = etree.SubElement(envelope, "Emetteur")
    _v(sender, "Sigle", "HELIOS")
    _v(sender, "Adresse", "DGFIP")
    header = etree.SubElement(root, "EnTetePES")
    _v(header, "DteStr", (day or date.today()).isoformat())
    for name, value in (("IdPost", summary.id_post), ("IdColl", summary.id_coll),
                        ("CodCol", summary.cod_col), ("CodBud", summary.cod_bud)):
        _v(header, name, value or "")
    acquit = etree.SubElement(root, "ACQUIT")
    _v(etree.SubElement(acquit, "EnTeteAcquit"), "IdVer", "2")
    for bordereau in summary.bordereaux:
        errors = list(refused.get(bordereau.number or "", ())) + list(refused.get("*", ()))
        element = etree.SubElement(acquit, "ElementACQUIT")
        _v(element, "DomaineAck", _DOMAIN.get(bordereau.domain, "5"))
        _v(element, "EtatAck", "0" if errors else "1")
        _v(element, "NumBord", bordereau.number or "1")
        _v(element, "ExerciceBord", bordereau.exercice or str((day or date.today()).year))
        for error in errors:
            said = etree.SubElement(element, "Erreur")
            _v(said, "NumAnoAck", error.code)
            _v(said, "LibelleAnoAck", error.text)
    for ident in pj_ids:
        element = etree.SubElement(acquit, "ElementACQUIT")
        _v(element, "DomaineAck", "4")
        _v(element, "EtatAck", "1")
        _v(element, "IdUnique", ident)
    data = etree.tostring(root, xml_declaration=True, encoding="ISO-8859-1")
    assert isinstance(data, bytes)  # an encoding is given: bytes, never str
    return data
