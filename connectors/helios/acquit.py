"""PES_ACQUIT and PES_NONACQUIT: what the DGFiP answered about a PES, element by element.

Read leniently, as the real platforms emit them (an all-zero ``CodCol``, a code outside
the list): the verdict comes from each ``ElementACQUIT``'s ``EtatAck``, and every error
is kept with the bordereau, pièce and ligne it concerns and its code and text.
"""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from broker.xmlsafe import XmlError, parse_bytes

ACQUIT_NS = "http://www.minefi.gouv.fr/cp/helios/pes_v2/Rev0/retour/v2"
# The DGFiP writes ISO-8859-1; a TdT's own acquits may come in UTF-8.
ENCODINGS = ("ISO-8859-1", "UTF-8")
MAX_ACQUIT_BYTES = 32 * 1024 * 1024
# DomaineAck: what an element is about (the labels the reference product shows).
DOMAINS = {"0": "technique", "1": "technique", "2": "technique",
           "3": "validité du certificat", "4": "pièce justificative", "5": "dépense",
           "6": "recette", "7": "budget"}


class AcquitError(ValueError):
    """Not an acquit the broker can read."""


@dataclass(frozen=True)
class AckError:
    """One ``Erreur``: its ``NumAnoAck`` code and ``LibelleAnoAck`` text, and where."""

    code: str
    text: str
    piece: str | None = None
    ligne: str | None = None

    def describe(self) -> str:
        where = "".join((f" pièce {self.piece}" if self.piece else "",
                         f" ligne {self.ligne}" if self.ligne else ""))
        return f"{where.strip() + ': ' if where else ''}{self.code}: {self.text}".strip()


@dataclass(frozen=True)
class AckElement:
    """One ``ElementACQUIT``: a bordereau (number, exercice) or a PJ (IdUnique)."""

    domain: str
    accepted: bool
    bordereau: str | None
    exercice: str | None
    id_unique: str | None
    errors: tuple[AckError, ...]

    @property
    def subject(self) -> str:
        if self.bordereau is not None:
            return f"bordereau {self.bordereau}" + (f" ({self.exercice})" if self.exercice
                                                    else "")
        if self.id_unique is not None:
            return f"PJ {self.id_unique}"
        return f"domaine {self.domain}"


@dataclass(frozen=True)
class Acquit:
    nom_fic: str | None
    id_coll: str | None
    cod_col: str | None
    cod_bud: str | None
    id_post: str | None
    elements: tuple[AckElement, ...]
    # PES_NONACQUIT: the whole flow was refused.
    negative: bool = False

    @property
    def accepted(self) -> bool:
        """Acquitted iff not a PES_NONACQUIT and every element's ``EtatAck`` is 1."""
        return not self.negative and bool(self.elements) and all(
            e.accepted for e in self.elements)

    def problems(self) -> list[str]:
        """Every refusal, readable: ``bordereau 5 (2019): pièce 20 ligne 1: ERREUR_AUTRE: …``."""
        found = []
        for element in self.elements:
            if element.accepted and not element.errors:
                continue
            said = [e.describe() for e in element.errors] or ["refused without a reason"]
            found += [f"{element.subject}: {text}" for text in said]
        if self.negative and not found:
            found.append("the DGFiP refused the whole flow (PES_NONACQUIT)")
        return found


def value_of(element: etree._Element | None, path: str) -> str | None:
    """The ``V`` attribute of the child at ``path`` (namespace-free, as the format writes):
    every PES value is written that way."""
    if element is None:
        return None
    found = element.find(path)
    if found is None:
        return None
    value = found.get("V")
    return value.strip() if value is not None else None


_v = value_of


def _errors(element: etree._Element, piece: str | None = None,
            ligne: str | None = None) -> list[AckError]:
    return [AckError(_v(e, "NumAnoAck") or "(no code)", _v(e, "LibelleAnoAck") or "",
                     piece, ligne) for e in element.findall("Erreur")]


def _element(node: etree._Element) -> AckElement:
    errors = _errors(node)
    for piece in node.findall("DetailPiece"):
        number = _v(piece, "NumPiece")
        errors += _errors(piece, number)
        for line in piece.findall("DetailLigne"):
            errors += _errors(line, number, _v(line, "NumLigne"))
    return AckElement(domain=_v(node, "DomaineAck") or "", accepted=_v(node, "EtatAck") == "1",
                      bordereau=_v(node, "NumBord"), exercice=_v(node, "ExerciceBord"),
                      id_unique=_v(node, "IdUnique"), errors=tuple(errors))


def read_acquit(data: bytes) -> Acquit:
    """The acquit in ``data``; ``AcquitError`` naming the line when it is not one."""
    try:
        root = parse_bytes(data, max_bytes=MAX_ACQUIT_BYTES, encodings=ENCODINGS)
    except XmlError as exc:
        raise AcquitError(f"the acquit cannot be read: {exc}") from exc
    name = etree.QName(root).localname
    if name not in ("PES_ACQUIT", "PES_NONACQUIT"):
        raise AcquitError(f"line {root.sourceline}: {name} is no acquit "
                          "(PES_ACQUIT or PES_NONACQUIT expected)")
    header = root.find("EnTetePES")
    params = root.find("Enveloppe/Parametres")
    return Acquit(
        nom_fic=_v(params, "NomFic"), id_coll=_v(header, "IdColl"),
        cod_col=_v(header, "CodCol"), cod_bud=_v(header, "CodBud"),
        id_post=_v(header, "IdPost"),
        elements=tuple(_element(n) for n in root.iterfind(".//ElementACQUIT")),
        negative=name == "PES_NONACQUIT")
