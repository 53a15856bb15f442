"""PES_Retour: what the DGFiP tells an authority of how its mandats and titres were processed.

The official PES_Retour schema is not available whole, so it is read leniently: the header
(whose ``IdColl`` says which authority it is for), and per block (``PES_DepenseRetour``,
``PES_RecetteRetour``…) its bordereaux with their pièces and their states.
"""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from broker.xmlsafe import XmlError, parse_bytes
from connectors.helios.acquit import value_of as _v

RETOUR_NS = "http://www.minefi.gouv.fr/cp/helios/pes_v2/Rev0/retour"
ENCODINGS = ("ISO-8859-1", "UTF-8")
MAX_RETOUR_BYTES = 64 * 1024 * 1024


class RetourError(ValueError):
    """Not a PES_Retour the broker can read."""


@dataclass(frozen=True)
class RetourPiece:
    exercice: str | None
    bordereau: str | None
    piece: str | None
    state: str | None  # EtatPce


@dataclass(frozen=True)
class Retour:
    typ_fic: str | None
    nom_fic: str | None
    id_coll: str | None
    cod_col: str | None
    cod_bud: str | None
    id_post: str | None
    dte_str: str | None
    blocks: tuple[str, ...]  # PES_DepenseRetour, PES_RecetteRetour…
    pieces: tuple[RetourPiece, ...]

    def metadata(self) -> dict[str, object]:
        return {"typ_fic": self.typ_fic, "nom_fic": self.nom_fic, "id_coll": self.id_coll,
                "cod_col": self.cod_col, "cod_bud": self.cod_bud, "id_post": self.id_post,
                "dte_str": self.dte_str, "blocks": list(self.blocks),
                "pieces": len(self.pieces)}


def read_retour(data: bytes) -> Retour:
    """The PES_Retour in ``data``; ``RetourError`` naming the line when it is not one."""
    try:
        root = parse_bytes(data, max_bytes=MAX_RETOUR_BYTES, encodings=ENCODINGS)
    except XmlError as exc:
        raise RetourError(f"the PES_Retour cannot be read: {exc}") from exc
    if etree.QName(root).localname != "PES_Retour":
        raise RetourError(f"line {root.sourceline}: {etree.QName(root).localname} is no "
                          "PES_Retour")
    header, params = root.find("EnTetePES"), root.find("Enveloppe/Parametres")
    blocks = [child for child in root if isinstance(child.tag, str)
              and etree.QName(child).localname.endswith("Retour")]
    pieces = []
    for block in blocks:
        for bordereau in block.iterfind("Bordereau"):
            exercice, number = _v(bordereau, "BlocBordereau/Exer"), _v(bordereau,
                                                                          "BlocBordereau/IdBord")
            pieces += [RetourPiece(exercice, number, _v(piece, "InfoPiece/IdPce"),
                                   _v(piece, "InfoPiece/EtatPce"))
                       for piece in bordereau.iterfind("Piece")]
    return Retour(
        typ_fic=_v(params, "TypFic"), nom_fic=_v(params, "NomFic"),
        id_coll=_v(header, "IdColl"),
        # Written CodColl in PES_Retour, CodCol elsewhere: read either.
        cod_col=_v(header, "CodColl") or _v(header, "CodCol"), cod_bud=_v(header, "CodBud"),
        id_post=_v(header, "IdPost"), dte_str=_v(header, "DteStr"),
        blocks=tuple(etree.QName(b).localname for b in blocks), pieces=tuple(pieces))
