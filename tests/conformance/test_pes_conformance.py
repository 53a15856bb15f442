"""PES V2 against the official DGFiP schemas and the real files in ../shared/reference/pes-v2/.

On every real PES_Aller and every PES the tests build (``tests/pes_corpus.py``), the
project's verdict (its own schemas, ``schemas/pes``, and the DGFiP's rules) agrees with the
official schema: what it refuses the project refuses; what it takes no project schema
problem refuses. The official closure misses three files of its package; ``SOURCE.md``
there says to read them from the next package version (v4.91), which :class:`StandIns` does.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from cryptography import x509
from lxml import etree

from broker.flows.base import Problem
from connectors.helios.acquit import read_acquit
from connectors.helios.pes import SCHEMA, check_pes
from connectors.helios.retour import RetourPiece, read_retour
from connectors.helios.schema import acquit_schema, retour_schema
from connectors.helios.xades import DS, Judged, verify_bordereau
from tests.pes_corpus import BAD, VALID

REFERENCE = Path(__file__).resolve().parents[2] / ".." / "shared" / "reference" / "pes-v2"
SAMPLES = REFERENCE / "samples"
V471 = REFERENCE / "xsd" / "Schemas_PES_v471_072015"

pytestmark = pytest.mark.skipif(
    not REFERENCE.is_dir(),
    reason=f"SKIPPED, not passed: the PES reference folder {REFERENCE} is absent",
)

# Each real acquit and the outcome SOURCE.md gives it (the "pes-ack-ko" ones are refusals).
ACQUITS = {
    "pastell/connecteur/fakeTdt/fixtures/pes_acquit.xml": (True, 5),
    "pastell/test/PHPUnit/connecteur/glaneur-local/fixtures/pes_depot_vrac/"
    "ACQUIT_PESALR2_49101169800000_171227_2045.xml": (True, 5),
    "stela/data/pes-ack-ko/006111_190130123456-ACK-A3020100_A0000IDL_KO.xml": (False, 2),
    "stela/data/pes-ack-ko/006111_190130123456-ACK-A3020100_A0000MIX_KO.xml": (False, 4),
    "stela/data/pes-ack-ko/006111_190130123456-ACK-A3020100_A0000SDP_KO.xml": (False, 5),
}


@pytest.fixture(scope="module")
def official_acquit() -> etree.XMLSchema:
    parser = etree.XMLParser(no_network=True, resolve_entities=False)
    main = V471 / "PES_V2" / "Rev0" / "PES_V2_Acquit_Autonome_V2.xsd"
    return etree.XMLSchema(etree.parse(str(main), parser))


@pytest.mark.parametrize("name", sorted(ACQUITS), ids=lambda n: Path(n).name)
def test_every_real_acquit_is_read_with_its_outcome(name: str) -> None:
    accepted, elements = ACQUITS[name]
    read = read_acquit((SAMPLES / name).read_bytes())
    assert (read.accepted, len(read.elements)) == (accepted, elements)
    if not accepted:
        assert read.problems() and all(": ERREUR_" in p for p in read.problems())


@pytest.mark.parametrize("name", sorted(ACQUITS), ids=lambda n: Path(n).name)
def test_the_official_schema_agrees_on_what_is_an_acquit(
        name: str, official_acquit: etree.XMLSchema) -> None:
    doc = etree.parse(str(SAMPLES / name), etree.XMLParser(no_network=True,
                                                           resolve_entities=False))
    valid = official_acquit.validate(doc)
    # SOURCE.md: the KO samples break the schema only by their all-zero CodCol, which the
    # reader takes as the platforms write it.
    assert valid == ("pes-ack-ko" not in name), [e.message for e in official_acquit.error_log]
    if not valid:
        assert all("CodCol" in e.message or "'000'" in e.message
                   for e in official_acquit.error_log), [e.message for e in
                                                         official_acquit.error_log]


class StandIns(etree.Resolver):
    """A file missing from the v4.71 tree is read from the same path in v4.91 (SOURCE.md)."""

    def resolve(self, url: str, pubid: str, context: object) -> object:  # type: ignore[override]
        path = Path(url.removeprefix("file://")).resolve()
        v471, v491 = V471.resolve(), (REFERENCE / "xsd" / "Schemas_PES_v491_18042016").resolve()
        if path.is_relative_to(v471) and not path.exists():
            alternative = v491 / path.relative_to(v471)
            if alternative.exists():
                return self.resolve_string(alternative.read_bytes(), context,
                                           base_url=str(path))
        return None


@pytest.fixture(scope="module")
def official_aller() -> etree.XMLSchema:
    parser = etree.XMLParser(no_network=True, resolve_entities=False)
    parser.resolvers.add(StandIns())
    return etree.XMLSchema(etree.parse(str(V471 / "PES_V2" / "Rev0" / "PES_Aller.xsd"), parser))


# Every real PES_Aller and the project's rules it breaks (beyond the official schema's).
ALLER = {
    "pastell/documentation/data-exemple/PES_ex.xml": [],
    "stela/data/test-perime-04-04-2016.xml": [],
    "pastell/connecteur/creation-document/fixtures/pes.xml": [
        "IdColl '12345678912345' is not a valid SIRET", "a bordereau needs an Id",
        "MtBordHT: says 75724.75"],
    "pastell/test/PHPUnit/module/helios-generique/fixtures/"
    "HELIOS_SIMU_ALR2_1496987735_826268894.xml": [
        "IdColl '12345678912345' is not a valid SIRET", "MtBordHT: says 75724.75"],
    "pastell/test/PHPUnit/module/helios-generique/fixtures/"
    "HELIOS_SIMU_ALR2_LibelleColBud_avec_accent.xml": [
        "IdColl '12345678912345' is not a valid SIRET", "MtBordHT: says 75724.75"],
    "pastell/test/PHPUnit/connecteur/glaneur-local/fixtures/"
    "HELIOS_SIMU_ALR2_1514362287_770650402.xml": [
        "IdColl '12345678912345' is not a valid SIRET", "MtBordHT: says 75724.75"],
    "pastell/test/PHPUnit/connecteur/libersign/fixtures/"
    "HELIOS_SIMU_ALR2_1529593767_1834011863.xml": [
        "IdColl '12345678912345' is not a valid SIRET", "MtBordHT: says 75724.75"],
    "pastell/test/PHPUnit/connecteur/glaneur-local/fixtures/pes_depot_vrac/"
    "PESALR2_49101169800000_171227_2045.xml": [
        "IdColl '12345678912345' is not a valid SIRET", "MtBordHT: says 75724.75",
        "not gzip once base64-decoded", "a signed flow must say 1"],
}
TEXT = etree.XMLParser(no_network=True, resolve_entities=False, huge_tree=True)


def official_errors(schema: etree.XMLSchema, data: bytes) -> list[tuple[int, str]] | None:
    """What the official schema refuses in ``data`` ([] when it takes it); None when the
    bytes are no XML it can read at all (a refusal too)."""
    try:
        doc = etree.fromstring(data, TEXT)
    except etree.XMLSyntaxError:
        return None
    if schema.validate(doc):
        return []
    return [(e.line, e.message) for e in schema.error_log]  # type: ignore[attr-defined]


def agree(official: list[tuple[int, str]] | None, found: list[Problem]) -> None:
    """The official verdict and the project's on one file: what the official schema refuses,
    the project refuses (by its schema or a rule); what it takes, no schema problem of the
    project refuses (a rule may, with its reason)."""
    said = [f"{p.field}: {p.message}" for p in found]
    if official is None or official:
        assert found, official
    else:
        assert not [m for m in said if f": {SCHEMA}" in m], said


def test_every_real_pes_aller_is_in_the_list() -> None:
    real = {str(path.relative_to(SAMPLES)) for path in SAMPLES.rglob("*.xml")
            if b"PES_Aller" in path.read_bytes()[:512]}
    assert real == set(ALLER)


@pytest.mark.parametrize("name", sorted(ALLER), ids=lambda n: Path(n).name)
def test_real_flows_get_the_verdict_of_the_official_schema_or_a_rule_with_its_reason(
        name: str, official_aller: etree.XMLSchema) -> None:
    path = SAMPLES / name
    official = official_errors(official_aller, path.read_bytes())
    _summary, found = check_pes(path)
    agree(official, found)
    rules = [p.message for p in found if not p.message.startswith(SCHEMA)]
    for expected in ALLER[name]:
        assert any(expected in m for m in rules), (expected, rules)
    assert len(rules) == len(ALLER[name]), rules
    # The project's schema refuses on the very lines the official one does.
    schema_lines = sorted(int(p.field.rsplit(":", 1)[1]) for p in found
                          if p.message.startswith(SCHEMA))
    assert schema_lines == sorted(line for line, _message in official or []), (
        official, [p for p in found if p.message.startswith(SCHEMA)])


@pytest.mark.parametrize("case", sorted(VALID))
def test_every_flow_the_tests_build_well_is_officially_valid_and_without_problem(
        case: str, official_aller: etree.XMLSchema) -> None:
    data = VALID[case]()
    assert official_errors(official_aller, data) == []
    assert check_pes(io.BytesIO(data), "p.xml")[1] == []


@pytest.mark.parametrize(("case", "data"), [(b[0], b[1]) for b in BAD], ids=[b[0] for b in BAD])
def test_every_refused_flow_the_tests_build_gets_the_official_verdict_or_a_rule(
        case: str, data: bytes, official_aller: etree.XMLSchema) -> None:
    agree(official_errors(official_aller, data), check_pes(io.BytesIO(data), "p.xml")[1])


# The signed real flows and the verdict on their bordereaux' signatures (each certificate
# taken as its own trust anchor: the chain is not what these samples test).
SIGNED = {
    "stela/data/test-perime-04-04-2016.xml": (
        Judged.EXPIRED, "the certificate was not valid at SigningTime 2018-03-08"),
    "pastell/test/PHPUnit/connecteur/glaneur-local/fixtures/pes_depot_vrac/"
    "PESALR2_49101169800000_171227_2045.xml": (
        Judged.POLICY, "Signature method RSA_SHA1 forbidden by configuration"),
}


@pytest.mark.parametrize("name", sorted(SIGNED), ids=lambda n: Path(n).name)
def test_real_signed_bordereaux_get_their_verdict(name: str) -> None:
    judged, reason = SIGNED[name]
    root = etree.parse(str(SAMPLES / name), etree.XMLParser(
        huge_tree=True, no_network=True, resolve_entities=False)).getroot()
    signed = [b for b in root.iter("Bordereau") if b.find(f"{{{DS}}}Signature") is not None]
    assert signed
    for bordereau in signed:
        carried = bordereau.find(f".//{{{DS}}}X509Certificate")
        assert carried is not None and carried.text
        cert = x509.load_der_x509_certificate(base64.b64decode("".join(carried.text.split())))
        verdict = verify_bordereau(bordereau, [cert])
        assert verdict.judged is judged and verdict.reason.startswith(reason), verdict


def test_the_real_pes_retour_is_read_with_its_authority_and_pieces() -> None:
    name = ("pastell/test/PHPUnit/connecteur/s2low/fixtures/"
            "HELIOS_SIMU_RETOUR_1565181244_184723364.xml")
    retour = read_retour((SAMPLES / name).read_bytes())
    assert (retour.typ_fic, retour.id_coll, retour.cod_col, retour.cod_bud, retour.id_post) == (
        "PESRETOUR_DEP", "12345678900012", "221", "00", "082008")
    assert retour.blocks == ("PES_DepenseRetour",)
    assert retour.pieces == (RetourPiece("2009", "1234567", "832", "01"),)


@pytest.mark.parametrize("refused", [False, True], ids=["acquitted", "refused"])
def test_the_acquits_the_dgfip_simulator_writes_pass_the_official_schema(
        refused: bool, official_acquit: etree.XMLSchema) -> None:
    from simulators.dgfip import DUPLICATE_BORDEREAU, UNKNOWN_SIRET, acquit_for
    from tests.unit.helios.test_pes import bordereau, pes, piece

    flow = pes(bordereau(piece("55.22")), bordereau(piece("10"), ident="B2", total="10"))
    summary, problems = check_pes(io.BytesIO(flow), "p.xml")
    assert problems == []
    refusals = {"12": [DUPLICATE_BORDEREAU, UNKNOWN_SIRET]} if refused else None
    data = acquit_for(summary, refusals=refusals, pj_ids=["21400015000018DEPENSE20260001"])
    doc = etree.fromstring(data)
    assert official_acquit.validate(doc), [e.message for e in official_acquit.error_log]
    read = read_acquit(data)
    assert read.nom_fic == "mandats_2026_12" and len(read.elements) == 3
    assert read.accepted is not refused
    if refused:  # the built flow's two bordereaux both carry number 12
        assert read.problems() == [
            "bordereau 12 (2026): ERREUR_DOUBLON_BORDEREAU: Bordereau déjà intégré dans HELIOS",
            "bordereau 12 (2026): ERREUR_SIRET: Le SIRET de la collectivité est inconnu",
            "bordereau 12 (2026): ERREUR_DOUBLON_BORDEREAU: Bordereau déjà intégré dans HELIOS",
            "bordereau 12 (2026): ERREUR_SIRET: Le SIRET de la collectivité est inconnu"]


# ===== the project's acquit and retour schemas =====

def _tree(data: bytes) -> etree._Element:
    return etree.fromstring(data, TEXT)


@pytest.mark.parametrize("name", sorted(ACQUITS), ids=lambda n: Path(n).name)
def test_the_projects_acquit_schema_takes_every_real_acquit(name: str) -> None:
    # The KO samples' all-zero CodCol included: the broker reads acquits as platforms write
    # them (the official schema refuses those three for that value alone, see above).
    schema = acquit_schema()
    assert schema.validate(_tree((SAMPLES / name).read_bytes())), [
        e.message for e in schema.error_log]  # type: ignore[attr-defined]


@pytest.mark.parametrize("case", sorted(VALID))
@pytest.mark.parametrize("refused", [False, True], ids=["acquitted", "refused"])
def test_every_acquit_the_dgfip_simulator_writes_passes_both_acquit_schemas(
        case: str, refused: bool, official_acquit: etree.XMLSchema) -> None:
    from simulators.dgfip import DUPLICATE_BORDEREAU, UNKNOWN_SIRET, acquit_for

    summary, problems = check_pes(io.BytesIO(VALID[case]()), "p.xml")
    assert problems == []
    refusals = {"*": [DUPLICATE_BORDEREAU, UNKNOWN_SIRET]} if refused else None
    data = acquit_for(summary, refusals=refusals, pj_ids=summary.pj_ids)
    for schema in (official_acquit, acquit_schema()):
        assert schema.validate(_tree(data)), [e.message for e in schema.error_log]  # type: ignore[attr-defined]


def test_the_projects_acquit_schema_is_as_lenient_as_the_acquit_reader(
        official_acquit: etree.XMLSchema) -> None:
    from tests.unit.helios.test_acquit import BORDEREAU_KO, BORDEREAU_OK, PJ_OK, acquit

    taken = {"ok": acquit(BORDEREAU_OK, PJ_OK), "ko": acquit(BORDEREAU_OK, BORDEREAU_KO)}
    # What the reader takes and the official schema does not: an all-zero CodCol, a
    # PES_NONACQUIT (no such root in the official package), an ACQUIT without elements.
    lenient = {"codcol-000": acquit(BORDEREAU_OK, cod_col="000"),
               "nonacquit": acquit(root="PES_NONACQUIT"), "no-element": acquit()}
    for name, data in {**taken, **lenient}.items():
        read_acquit(data)  # the reader takes each
        assert acquit_schema().validate(_tree(data)), (name, [
            e.message for e in acquit_schema().error_log])  # type: ignore[attr-defined]
        assert official_acquit.validate(_tree(data)) is (name in taken), name


def test_the_projects_retour_schema_takes_the_real_retour() -> None:
    name = ("pastell/test/PHPUnit/connecteur/s2low/fixtures/"
            "HELIOS_SIMU_RETOUR_1565181244_184723364.xml")
    schema = retour_schema()
    assert schema.validate(_tree((SAMPLES / name).read_bytes())), [
        e.message for e in schema.error_log]  # type: ignore[attr-defined]
