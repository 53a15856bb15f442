"""PES_Retour read leniently, on files written here."""

from __future__ import annotations

import pytest

from connectors.helios.retour import RETOUR_NS, RetourError, RetourPiece, read_retour


def retour(blocks: str) -> bytes:
    return (f'<?xml version="1.0" encoding="ISO-8859-1"?><n:PES_Retour xmlns:n="{RETOUR_NS}">'
            '<Enveloppe><Parametres><TypFic V="PESRETOUR_REC"/><NomFic V="r.xml"/></Parametres>'
            '</Enveloppe><EnTetePES><DteStr V="2026-12-01"/><IdPost V="086016"/>'
            '<IdColl V="21400015000018"/><CodCol V="400"/><CodBud V="01"/></EnTetePES>'
            f"{blocks}</n:PES_Retour>").encode("iso8859-1")


def test_each_block_and_piece_is_read_with_its_state() -> None:
    read = read_retour(retour(
        '<PES_RecetteRetour><Bordereau><BlocBordereau><Exer V="2026"/><IdBord V="7"/>'
        '</BlocBordereau><Piece><InfoPiece><IdPce V="1"/><EtatPce V="02"/></InfoPiece></Piece>'
        '<Piece><InfoPiece><IdPce V="2"/></InfoPiece></Piece></Bordereau></PES_RecetteRetour>'))
    assert (read.typ_fic, read.id_coll, read.cod_col) == ("PESRETOUR_REC", "21400015000018",
                                                          "400")
    assert read.pieces == (RetourPiece("2026", "7", "1", "02"), RetourPiece("2026", "7", "2",
                                                                            None))
    assert read.metadata()["blocks"] == ["PES_RecetteRetour"]


def test_what_is_no_pes_retour_is_said() -> None:
    with pytest.raises(RetourError, match="PES_Aller is no PES_Retour"):
        read_retour(b"<PES_Aller/>")
