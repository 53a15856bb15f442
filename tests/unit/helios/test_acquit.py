"""PES_ACQUIT and PES_NONACQUIT read element by element, on acquits written here."""

from __future__ import annotations

import pytest

from connectors.helios.acquit import ACQUIT_NS, AcquitError, read_acquit


def acquit(*elements: str, root: str = "PES_ACQUIT", cod_col: str = "400") -> bytes:
    return f"""<?xml version="1.0" encoding="ISO-8859-1"?>
<n:{root} xmlns:n="{ACQUIT_NS}">
 <Enveloppe><Parametres><Version V="2"/><TypFic V="PESALR2"/><NomFic V="mandats_2026_12.xml"/>
 </Parametres></Enveloppe>
 <EnTetePES><DteStr V="2026-12-01"/><IdPost V="086016"/><IdColl V="21400015000011"/>
  <CodCol V="{cod_col}"/><CodBud V="01"/><LibelleColBud V="Commune de démo"/></EnTetePES>
 <ACQUIT><EnTeteAcquit><IdVer V="2"/></EnTeteAcquit>{"".join(elements)}</ACQUIT>
</n:{root}>""".encode("iso8859-1")


BORDEREAU_OK = ('<ElementACQUIT><DomaineAck V="5"/><EtatAck V="1"/><NumBord V="12"/>'
                '<ExerciceBord V="2026"/></ElementACQUIT>')
PJ_OK = ('<ElementACQUIT><DomaineAck V="4"/><EtatAck V="1"/>'
         '<IdUnique V="214000150000112026DEPENSE0001"/></ElementACQUIT>')
BORDEREAU_KO = ('<ElementACQUIT><DomaineAck V="5"/><EtatAck V="0"/><NumBord V="13"/>'
                '<ExerciceBord V="2026"/><Erreur><NumAnoAck V="ERREUR_DOUBLON_BORDEREAU"/>'
                '<LibelleAnoAck V="Bordereau déjà intégré"/></Erreur>'
                '<DetailPiece><NumPiece V="7"/><DetailLigne><NumLigne V="2"/><Erreur>'
                '<NumAnoAck V="ERREUR_AUTRE"/><LibelleAnoAck V="1971 - Compte fonction présent '
                'à tort"/></Erreur></DetailLigne></DetailPiece></ElementACQUIT>')


def test_an_acquit_whose_every_element_is_accepted_is_acquitted() -> None:
    read = read_acquit(acquit(BORDEREAU_OK, PJ_OK))
    assert read.accepted and read.problems() == []
    assert (read.nom_fic, read.id_coll, read.cod_col, read.cod_bud, read.id_post) == (
        "mandats_2026_12.xml", "21400015000011", "400", "01", "086016")
    assert [e.subject for e in read.elements] == ["bordereau 12 (2026)",
                                                  "PJ 214000150000112026DEPENSE0001"]


def test_one_refused_element_rejects_the_flow_with_every_error_where_it_is() -> None:
    read = read_acquit(acquit(BORDEREAU_OK, BORDEREAU_KO))
    assert not read.accepted
    assert read.problems() == [
        "bordereau 13 (2026): ERREUR_DOUBLON_BORDEREAU: Bordereau déjà intégré",
        "bordereau 13 (2026): pièce 7 ligne 2: ERREUR_AUTRE: 1971 - Compte fonction présent à "
        "tort",
    ]


def test_off_schema_values_are_read_as_the_platforms_write_them() -> None:
    # An all-zero CodCol breaks the official schema; real acquits carry it anyway.
    read = read_acquit(acquit(BORDEREAU_OK, cod_col="000"))
    assert read.accepted and read.cod_col == "000"


def test_a_nonacquit_refuses_the_whole_flow() -> None:
    read = read_acquit(acquit(root="PES_NONACQUIT"))
    assert not read.accepted
    assert read.problems() == ["the DGFiP refused the whole flow (PES_NONACQUIT)"]


def test_an_acquit_without_elements_is_not_an_acknowledgement() -> None:
    assert not read_acquit(acquit()).accepted


@pytest.mark.parametrize(("data", "reason"), [
    (b"<PES_Aller/>", "line 1: PES_Aller is no acquit (PES_ACQUIT or PES_NONACQUIT expected)"),
    (b"", "the acquit cannot be read: empty file: no XML document in it"),
    ('<?xml version="1.0" encoding="UTF-16"?><n:PES_ACQUIT/>'.encode("utf-16"),
     "the acquit cannot be read: line 1: encoding UTF-16LE (its byte order mark) is not "
     "accepted here: expected ISO-8859-1 or UTF-8"),
])
def test_what_is_no_acquit_is_said(data: bytes, reason: str) -> None:
    with pytest.raises(AcquitError) as refused:
        read_acquit(data)
    assert str(refused.value) == reason
