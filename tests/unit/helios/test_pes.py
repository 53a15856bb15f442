"""The DGFiP's rules and the project's PES schema on a PES_Aller, one test each, on flows
written here."""

from __future__ import annotations

import base64
import gzip
import io
import os
from decimal import Decimal
from pathlib import Path

import pytest

from broker.flows.base import Problem
from connectors.helios.pes import MAX_SCHEMA_PROBLEMS, SCHEMA, check_pes
from simulators.pes_samples import SIRET, bordereau, pes, piece, pj


def problems(data: bytes) -> list[Problem]:
    return check_pes(io.BytesIO(data), "mandats.xml")[1]


def messages(data: bytes) -> list[str]:
    return [p.message for p in problems(data)]


def rules(data: bytes) -> list[str]:
    """The problems the DGFiP's rules find (the schema's aside)."""
    return [m for m in messages(data) if not m.startswith(SCHEMA)]


def test_a_well_made_flow_has_no_problem_and_says_what_it_holds() -> None:
    data = pes(bordereau(piece("55.22", ref="PJ1")), bordereau(piece("10", "5"), ident="B2",
                                                                total="15"),
               pjs=(pj("PJ1"),))
    summary, found = check_pes(io.BytesIO(data), "mandats.xml")
    assert found == []
    meta = summary.metadata()
    assert (meta["nom_fic"], meta["id_coll"], meta["cod_col"], meta["cod_bud"],
            meta["id_post"], meta["exercice"], meta["pieces"], meta["pj"]) == (
        "mandats_2026_12", SIRET, "400", "01", "086016", "2026", 2, 1)
    assert [(b["id"], b["number"], b["amount"]) for b in meta["bordereaux"]] == [  # type: ignore[index, union-attr]
        ("B1", "12", "55.22"), ("B2", "12", "15")]


def test_the_declaration_must_say_iso_8859_1_at_once() -> None:
    first, then = messages(pes(bordereau(piece("55.22")),
                               declaration='<?xml version="1.0" encoding="UTF-8"?>'))
    assert first.startswith('the XML declaration must say encoding="ISO-8859-1" within the '
                            "first 50 bytes")
    assert then == "encoding UTF-8 (its declaration) is not accepted here: expected ISO-8859-1"
    padded = pes(bordereau(piece("55.22")), declaration='<?xml version="1.0"               '
                 '                     encoding="ISO-8859-1"?>')
    assert messages(padded)[0].startswith("the XML declaration must say encoding=\"ISO-8859-1\"")


def test_the_bytes_really_are_iso_8859_1() -> None:
    utf8 = pes(bordereau(piece("55.22"))).replace("démo".encode("iso8859-1"),
                                                   "démo".encode())
    (found,) = problems(utf8)
    assert found == Problem("mandats.xml:4", "bytes C3 A9 are UTF-8 ('é') written into an "
                            "ISO-8859-1 file")
    cp1252 = pes(bordereau(piece("55.22"))).replace(b"d\xe9mo", b"d\x92mo")
    assert messages(cp1252) == ["byte 0x92 is no ISO-8859-1 character (Windows-1252 puts € "
                                "or ’ there)"]


def test_nomfic_is_present_and_without_accents() -> None:
    assert messages(pes(bordereau(piece("55.22")), nom_fic="mandats_décembre")) == [
        "Enveloppe/Parametres/NomFic: NomFic 'mandats_décembre' holds accents or other "
        "non-ASCII characters: the DGFiP refuses them"]
    missing = pes(bordereau(piece("55.22"))).replace(b'<NomFic V="mandats_2026_12"/>', b"")
    assert problems(missing) == [Problem("mandats.xml:3", "schema: Enveloppe/Parametres: "
                                         "Missing child element(s). Expected is ( NomFic ).")]


def test_a_pes_holds_a_bordereau_or_a_pj() -> None:
    assert messages(pes()) == ["an empty PES: it holds no bordereau and no PJ"]


def test_idcoll_is_a_valid_siret() -> None:
    assert messages(pes(bordereau(piece("55.22")), id_coll="21400015000011")) == [
        "EnTetePES/IdColl: IdColl '21400015000011' is not a valid SIRET (14 digits whose "
        "checksum, Luhn, holds)"]


@pytest.mark.parametrize(("field", "value", "message"), [
    ("cod_col", "40", "CodCol '40': expected 3 letters or digits"),
    ("cod_bud", "1", "CodBud '1': expected 2 letters or digits"),
    ("id_post", "86016", "IdPost '86016': expected the 6-digit code of the public "
                         "accountant's post"),
])
def test_header_codes_have_their_forms(field: str, value: str, message: str) -> None:
    (found,) = messages(pes(bordereau(piece("55.22")), **{field: value}))
    assert found.endswith(message)


def test_an_all_zero_codcol_is_refused_by_the_schema() -> None:
    (found,) = problems(pes(bordereau(piece("55.22")), cod_col="000"))
    assert found == Problem("mandats.xml:4", "schema: EnTetePES/CodCol/@V: [facet 'pattern'] "
                            "The value '000' is not accepted by the pattern '.*[^0]+.*'.")


def test_the_main_budget_code_00_is_fine() -> None:
    assert messages(pes(bordereau(piece("55.22")), cod_bud="00")) == []


def test_every_bordereau_has_an_id_of_its_own() -> None:
    assert messages(pes(bordereau(piece("55.22"), ident=None))) == [
        "PES_DepenseAller/Bordereau: a bordereau needs an Id (the signature points at it)"]
    twice = problems(pes(bordereau(piece("55.22")), bordereau(piece("55.22"))))
    assert [p.message for p in twice] == [
        "PES_DepenseAller/Bordereau[2]: Id 'B1' is already the Id of the bordereau at line 6: "
        "an Id is carried once in a PES (signatures point at it)"]
    assert twice[0].field == "mandats.xml:7"


def test_an_id_is_carried_once_in_the_whole_flow() -> None:
    # Streaming, libxml2 checks each xs:ID's form but not that it is unique: a rule does.
    signed = pes(bordereau(piece("55.22"), signed=True), demat="1")
    clash = signed.replace(b"<ds:Signature ", b'<ds:Signature Id="B1" ', 1)
    assert messages(clash) == [
        "PES_DepenseAller/Bordereau: Id 'B1' is already the Id of the ds:Signature at line 6: "
        "an Id is carried once in a PES (signatures point at it)"]
    root = signed.replace(b"<n:PES_Aller ", b'<n:PES_Aller Id="B1" ', 1)
    assert messages(root) == [
        "PES_Aller: Id 'B1' is already the Id of the bordereau at line 6: an Id is carried once "
        "in a PES (signatures point at it)"]


def test_the_bordereau_totals_are_the_sums_of_its_pieces() -> None:
    assert messages(pes(bordereau(piece("10", "20"), total="31"))) == [
        "PES_DepenseAller/Bordereau/BlocBordereau/MtBordHT: says 31, the lines of its pièces "
        "add up to 30"]
    assert messages(pes(bordereau(piece("55.22"), count=2))) == [
        "PES_DepenseAller/Bordereau/BlocBordereau/NbrPce: says 2 pièce(s), the bordereau holds 1"]


def test_a_titres_bordereau_totals_its_lines_too() -> None:
    from tests.pes_corpus import recette

    summary, found = check_pes(io.BytesIO(recette()), "titres.xml")
    assert found == []
    assert [(b.domain, b.amount) for b in summary.bordereaux] == [
        ("depense", Decimal("55.22")), ("recette", Decimal("120.50"))]
    assert messages(recette(total="100")) == [
        "PES_RecetteAller/Bordereau/BlocBordereau/MtBordHt: says 100, the lines of its pièces "
        "add up to 120.50"]


def test_an_amount_that_is_no_number_is_said_where_it_is() -> None:
    assert problems(pes(bordereau(piece("55,22"), total="0"))) == [Problem(
        "mandats.xml:6", "schema: PES_DepenseAller/Bordereau/Piece/LigneDePiece/BlocLignePiece/"
        "InfoLignePce/MtHT/@V: '55,22' is not a valid value of the atomic type "
        "'V_Montant_Light'.")]


def test_a_schema_problem_says_where_and_what_was_expected() -> None:
    untyped = bordereau(piece("10"), ident="B2", total="10").replace('<TypBord V="01"/>', "")
    assert problems(pes(bordereau(piece("55.22")), untyped)) == [Problem(
        "mandats.xml:7", "schema: PES_DepenseAller/Bordereau[2]/BlocBordereau/NbrPce: This "
        "element is not expected. Expected is ( TypBord ).")]


def test_a_schema_problem_far_into_a_large_flow_is_located_too() -> None:
    # Past lxml's first reads: the element is found on the tree as libxml2 tells the error.
    many = [bordereau(piece("10"), ident=f"B{n}", total="10", number=str(n))
            for n in range(1, 400)]
    late = bordereau(piece("10"), ident="LATE", total="10").replace('<IdBord V="12"/>',
                                                                   '<IdBord V="12345678"/>')
    data = pes(*many, late)
    assert len(data) > 150_000  # lxml reads 32 KiB at a time
    assert problems(data) == [Problem(
        "mandats.xml:405", "schema: PES_DepenseAller/Bordereau[400]/BlocBordereau/IdBord/@V: "
        "[facet 'totalDigits'] The value '12345678' has more digits than are allowed ('7').")]


def test_schema_problems_stop_being_listed_past_a_cap() -> None:
    untyped = [bordereau(piece("10"), ident=f"B{n}", total="10").replace('<TypBord V="01"/>', "")
               for n in range(MAX_SCHEMA_PROBLEMS + 5)]
    said = messages(pes(*untyped))
    assert len(said) == MAX_SCHEMA_PROBLEMS + 1
    assert said[-1] == "schema: 5 more schema problems not listed"


def test_a_fault_of_form_after_a_schema_problem_is_still_refused() -> None:
    untyped = bordereau(piece("10"), total="10").replace('<TypBord V="01"/>', "")
    said = messages(pes(untyped)[:-40])
    assert said[0].startswith("schema: PES_DepenseAller/Bordereau/BlocBordereau/NbrPce")
    assert said[-1] == ("the XML is not well-formed or is cut short: the PES_Aller element is "
                        "never closed")


def test_info_dematerialisee_goes_with_the_signature() -> None:
    assert messages(pes(bordereau(piece("55.22")), demat="1")) == [
        "InfoDematerialisee: 1 (dematerialised) needs a signed flow; this one has no signature"]
    assert messages(pes(bordereau(piece("55.22"), signed=True))) == [
        "InfoDematerialisee: a signed flow must say 1 (dematerialised); it says 0 or nothing"]
    assert messages(pes(bordereau(piece("55.22"), signed=True), demat="1")) == []


def test_every_pj_is_gzip_then_base64_within_its_cap() -> None:
    assert messages(pes(bordereau(piece("55.22")), pjs=(pj("PJ1", raw="pas du base64 !"),))) == [
        "schema: PES_PJ/PJ/Contenu/Fichier: 'pas du base64 !' is not a valid value of the "
        "atomic type 'xs:base64Binary'."]
    plain = base64.b64encode(b"%PDF-1.4 not gzipped").decode()
    (message,) = messages(pes(bordereau(piece("55.22")), pjs=(pj("PJ1", raw=plain),)))
    assert message.startswith("PES_PJ/PJ/Contenu/Fichier: not gzip once base64-decoded")
    whole = gzip.compress(bytes(range(256)) * 40)
    cut = base64.b64encode(whole[: len(whole) // 2]).decode()
    assert messages(pes(bordereau(piece("55.22")), pjs=(pj("PJ1", raw=cut),))) == [
        "PES_PJ/PJ/Contenu/Fichier: the gzip data is cut short"]


def test_a_pj_bomb_stops_at_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    from connectors.helios import pes as module

    monkeypatch.setattr(module, "MAX_PJ_BYTES", 1024 * 1024)
    bomb = base64.b64encode(gzip.compress(b"\0" * (8 * 1024 * 1024))).decode()  # 8 KiB packed
    assert messages(pes(bordereau(piece("55.22")), pjs=(pj("PJ1", raw=bomb),))) == [
        "PES_PJ/PJ/Contenu/Fichier: inflates past the 1048576 bytes a PJ may hold"]


def test_every_pj_reference_is_resolved() -> None:
    (found,) = problems(pes(bordereau(piece("55.22", ref="PJ9")), pjs=(pj("PJ1"),)))
    assert found.message == ("PES_DepenseAller/Bordereau/Piece/BlocPiece/InfoPce/PJRef: PJRef "
                             "'PJ9' points at no PJ of this flow's PES_PJ")


def test_hostile_xml_is_refused_before_any_rule() -> None:
    data = pes(bordereau(piece("55.22"))).replace(
        b"\n<n:PES_Aller", b'\n<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
                           b"\n<n:PES_Aller", 1)
    assert messages(data) == [
        "DOCTYPE declaration not accepted: a document here carries no DTD and no entities"]


def test_a_file_is_read_from_disk_too(tmp_path: Path) -> None:
    path = tmp_path / "flux.xml"
    path.write_bytes(pes(bordereau(piece("55.22"))))
    assert check_pes(path)[1] == []


def test_a_flow_cut_between_two_elements_is_refused() -> None:
    whole = pes(bordereau(piece("55.22")))
    assert messages(whole[:whole.index(b"</PES_DepenseAller>")]) == [
        "the XML is not well-formed or is cut short: the PES_Aller element is never closed"]


def test_another_document_is_refused_by_the_schema_at_its_root() -> None:
    from tests.unit.helios.test_acquit import BORDEREAU_OK, acquit

    found = problems(acquit(BORDEREAU_OK))
    assert found[0] == Problem("mandats.xml:2", "schema: PES_ACQUIT: No matching global "
                               "declaration available for the validation root.")
    assert not any("never closed" in p.message for p in found)


def test_schema_problems_and_rule_problems_are_told_apart() -> None:
    data = pes(bordereau(piece("55.22")), id_coll="2140001500001A")
    assert rules(data) == ["EnTetePES/IdColl: IdColl '2140001500001A' is not a valid SIRET (14 "
                           "digits whose checksum, Luhn, holds)"]
    assert [m for m in messages(data) if m.startswith(SCHEMA)] == [
        "schema: EnTetePES/IdColl/@V: [facet 'pattern'] The value '2140001500001A' is not "
        "accepted by the pattern '[0-9]*'."]


def test_a_pj_larger_than_libxml2s_default_text_limit_is_validated_and_read() -> None:
    data = pes(bordereau(piece("55.22")), pjs=(pj("PJ1", os.urandom(12 * 1024 * 1024)),))
    assert len(data) > 10_000_000
    summary, found = check_pes(io.BytesIO(data), "mandats.xml")
    assert found == [] and summary.pj == 1
