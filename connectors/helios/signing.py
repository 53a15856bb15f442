"""What the parapheur needs to sign a PES (i-Parapheur type PES_V2, protocol HELIOS).

* ``XPathPourSignatureXML``: ``//Bordereau`` (one XAdES signature per bordereau) when every
  bordereau has an Id, else ``.`` (one signature of the whole flow) when the root has one;
  else the PES cannot be signed, and the refusal says why.
* ``VisuelPDF``: what the signer reads, a summary of the bordereaux made from the fields
  indexed at intake (the signer signs what the summary shows).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from broker.xmlsafe import iter_elements
from connectors.helios.pes import ENCODINGS, MAX_PES_BYTES
from connectors.textpdf import simple_pdf

PER_BORDEREAU = "//Bordereau"
WHOLE_FLOW = "."
_KINDS = {"depense": "mandats (dépenses)", "recette": "titres (recettes)"}


class CannotSign(ValueError):
    """The PES offers nothing a signature could point at."""


def signature_xpath(path: Path) -> str:
    """The XPath the parapheur signs the PES at ``path`` by (streamed, memory flat)."""
    elements = iter_elements(path, tag=["Bordereau", "Piece", "PJ"], max_bytes=MAX_PES_BYTES,
                             encodings=ENCODINGS)
    without_id = total = 0
    for _event, element in elements:
        if element.tag == "Bordereau":
            total += 1
            without_id += not element.get("Id")
        # Each unit gone once read: memory holds one pièce or one PJ at a time.
        element.clear()
        parent = element.getparent()
        if parent is not None:
            parent.remove(element)
    if total and not without_id:
        return PER_BORDEREAU
    if elements.root.get("Id"):
        return WHOLE_FLOW
    if not total:
        raise CannotSign("the PES holds no bordereau and its root has no Id: there is "
                         "nothing a signature could point at")
    raise CannotSign(f"{without_id} of its {total} bordereaux have no Id and its root has "
                     "none: neither //Bordereau nor . can be signed")


def visuel_lines(metadata: Mapping[str, Any]) -> list[str]:
    """The summary a signer reads: who sends what to which accountant, bordereau by
    bordereau."""
    lines = [
        "Flux PES à signer (Hélios, DGFiP)",
        f"Fichier : {metadata.get('nom_fic') or '?'}",
        f"Collectivité : SIRET {metadata.get('id_coll') or '?'}, code {metadata.get('cod_col')}"
        f", budget {metadata.get('cod_bud')}",
        f"Poste comptable : {metadata.get('id_post') or '?'} — émis le "
        f"{metadata.get('dte_str') or '?'}",
        f"Exercice {metadata.get('exercice') or '?'} — {metadata.get('pieces', 0)} pièce(s), "
        f"{metadata.get('pj', 0)} pièce(s) justificative(s)",
        "",
    ]
    bordereaux = metadata.get("bordereaux") or []
    for b in bordereaux:
        kind = _KINDS.get(b.get("domain"), b.get("domain"))
        lines.append(f"Bordereau n° {b.get('number') or '?'} ({kind}, exercice "
                     f"{b.get('exercice') or '?'}) : {b.get('pieces', 0)} pièce(s), total HT "
                     f"{b.get('amount')} €")
    if not bordereaux:
        lines.append("Aucun bordereau")
    return lines


def visuel_pdf(metadata: Mapping[str, Any]) -> bytes:
    return simple_pdf(visuel_lines(metadata))
