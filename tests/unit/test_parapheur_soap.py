"""Building and reading i-Parapheur SOAP messages, checked against the real WSDL's schema."""

from __future__ import annotations

import base64
import copy
import io
from datetime import date
from pathlib import Path

import pytest
from lxml import etree

from broker.xmlsafe import load_schema, parse_bytes, schema_problems
from connectors.base import FileView
from connectors.parapheur import soap
from connectors.parapheur.connector import dossier_id_for
from connectors.parapheur.soap import (
    NS,
    SOAP_ENV,
    XMIME,
    XSI,
    Attachment,
    DossierExists,
    DossierUnknown,
    MessageRetour,
    NewDossier,
    ParapheurError,
    RetourKO,
    SoapFault,
)
from simulators.parapheur import PARAPHEUR, build_app, simple_pdf

ROOT = Path(__file__).resolve().parents[2]
WSDL = ROOT.parent / "shared" / "reference" / "parapheur" / "v4-soap" / "iparapheur.wsdl"
XS = "http://www.w3.org/2001/XMLSchema"

# The W3C xmlmime schema is not shipped with the WSDL; this declares what the WSDL uses of it.
XMLMIME_XSD = f"""<xs:schema xmlns:xs="{XS}" xmlns:xmime="{XMIME}" targetNamespace="{XMIME}">
  <xs:attribute name="contentType">
    <xs:simpleType><xs:restriction base="xs:string"><xs:minLength value="3"/></xs:restriction>
    </xs:simpleType>
  </xs:attribute>
  <xs:attribute name="expectedContentTypes" type="xs:string"/>
  <xs:complexType name="base64Binary">
    <xs:simpleContent>
      <xs:extension base="xs:base64Binary"><xs:attribute ref="xmime:contentType"/></xs:extension>
    </xs:simpleContent>
  </xs:complexType>
</xs:schema>"""


@pytest.fixture(scope="module")
def schema(tmp_path_factory: pytest.TempPathFactory) -> etree.XMLSchema:
    """The message schema embedded in the real WSDL, its xmlmime import resolved locally."""
    if not WSDL.is_file():
        pytest.skip(f"SKIPPED, not passed: the reference WSDL is not at {WSDL}")
    wsdl = parse_bytes(WSDL.read_bytes())
    found = wsdl.find(f"{{http://schemas.xmlsoap.org/wsdl/}}types/{{{XS}}}schema")
    assert found is not None, "no xsd:schema under wsdl:types"
    embedded = copy.deepcopy(found)
    for imported in embedded.findall(f"{{{XS}}}import"):
        imported.set("schemaLocation", "xmlmime.xsd")
    folder = tmp_path_factory.mktemp("xsd")
    (folder / "xmlmime.xsd").write_text(XMLMIME_XSD, encoding="utf-8")
    (folder / "iparapheur.xsd").write_bytes(etree.tostring(embedded))
    return load_schema(folder / "iparapheur.xsd")


def payload(envelope: bytes) -> etree._Element:
    root = parse_bytes(envelope)
    assert root.tag == f"{{{SOAP_ENV}}}Envelope"
    body = root.find(f"{{{SOAP_ENV}}}Body")
    assert body is not None and len(body) == 1
    return body[0]


@pytest.fixture
def new_dossier(tmp_path: Path) -> NewDossier:
    main = tmp_path / "deliberation.pdf"
    main.write_bytes(simple_pdf(["Deliberation"]))
    annexe = tmp_path / "annexe.pdf"
    annexe.write_bytes(b"%PDF-1.4 annexe" * 100_000)  # several base64 pieces
    return NewDossier(
        dossier_id="01J9ZQ4T6W_deliberation",
        type_technique="ACTES",
        sous_type="Deliberation",
        document=Attachment(main, "application/pdf", "délibération 12.pdf"),
        visibilite="CONFIDENTIEL",
        date_limite=date(2025, 3, 31),
        annexes=(Attachment(annexe, "application/pdf", "annexe_1.pdf"),),
        metadata={"numeroActe": "2025-012"},
        email_emetteur="emetteur@mairie.test",
        annotation_publique="Budget primitif",
    )


def test_creer_dossier_request_carries_every_field(new_dossier: NewDossier) -> None:
    body = soap.creer_dossier_request(new_dossier)
    # Files are streamed in place, never inlined in the XML part.
    assert [isinstance(p, Path) for p in body.parts] == [False, True, False, True, False]
    raw = body.materialize()
    assert body.size() == len(raw)

    el = payload(raw)
    assert el.tag == f"{{{NS}}}CreerDossierRequest"
    text = {etree.QName(c).localname: c.text for c in el}
    assert text["TypeTechnique"] == "ACTES" and text["SousType"] == "Deliberation"
    assert text["DossierID"] == "01J9ZQ4T6W_deliberation"
    assert text["NomDocPrincipal"] == "délibération 12.pdf"
    assert text["Visibilite"] == "CONFIDENTIEL" and text["DateLimite"] == "2025-03-31"
    assert text["EmailEmetteur"] == "emetteur@mairie.test"
    assert text["AnnotationPublique"] == "Budget primitif"
    main = el.find(soap.q("DocumentPrincipal"))
    assert main is not None and main.get(f"{{{XMIME}}}contentType") == "application/pdf"
    assert base64.b64decode(main.text or "") == new_dossier.document.path.read_bytes()
    fichier = el.find(f"{soap.q('DocumentsAnnexes')}/{soap.q('DocAnnexe')}/{soap.q('fichier')}")
    assert fichier is not None
    assert base64.b64decode(fichier.text or "") == new_dossier.annexes[0].path.read_bytes()
    nils = sorted(etree.QName(c).localname for c in el if c.get(f"{{{XSI}}}nil") == "true")
    assert nils == ["AnnotationPrivee", "MetaDataTdtACTES", "VisuelPDF", "XPathPourSignatureXML"]
    meta = el.find(f"{soap.q('MetaData')}/{soap.q('MetaDonnee')}")
    assert meta is not None and [c.text for c in meta] == ["numeroActe", "2025-012"]


def test_requests_validate_against_the_wsdl_schema(
    schema: etree.XMLSchema, new_dossier: NewDossier
) -> None:
    minimal = NewDossier("d1", "ACTES", "Arrete", new_dossier.document)
    requests = {
        "CreerDossier (full)": soap.creer_dossier_request(new_dossier).materialize(),
        "CreerDossier (minimal)": soap.creer_dossier_request(minimal).materialize(),
        "GetListeTypes": soap.simple_request("GetListeTypes"),
        "GetListeSousTypes": soap.simple_request("GetListeSousTypes", "ACTES"),
        "GetHistoDossier": soap.simple_request("GetHistoDossier", "d1"),
        "GetDossier": soap.simple_request("GetDossier", "d1"),
        "EffacerDossierRejete": soap.simple_request("EffacerDossierRejete", "d1"),
        "ArchiverDossier": soap.archiver_request("d1", "EFFACER"),
    }
    problems = {name: schema_problems(schema, payload(raw)) for name, raw in requests.items()}
    assert problems == {name: [] for name in requests}


def test_the_schema_check_does_catch_a_bad_request(
    schema: etree.XMLSchema, new_dossier: NewDossier
) -> None:
    bad = NewDossier("an id with spaces", "ACTES", "Arrete", new_dossier.document)
    problems = schema_problems(schema, payload(soap.creer_dossier_request(bad).materialize()))
    assert len(problems) == 1 and "DossierID" in problems[0]


async def test_simulator_answers_validate_against_the_wsdl_schema(
    schema: etree.XMLSchema, new_dossier: NewDossier, tmp_path: Path
) -> None:
    parapheur = build_app(auto_sign_after=0, state_dir=tmp_path / "pki")[PARAPHEUR]
    parapheur.clock = lambda: 0.0
    create = payload(soap.creer_dossier_request(new_dossier).materialize())
    answers = {"CreerDossier": await parapheur.op_CreerDossier(create)}
    dossier_id = soap.simple_request("GetHistoDossier", new_dossier.dossier_id)
    answers["GetHistoDossier"] = await parapheur.op_GetHistoDossier(payload(dossier_id))
    answers["GetDossier"] = await parapheur.op_GetDossier(payload(dossier_id))
    archive = payload(soap.archiver_request(new_dossier.dossier_id))
    answers["ArchiverDossier"] = await parapheur.op_ArchiverDossier(archive)
    problems = {}
    for operation, children in answers.items():
        el = etree.Element(soap.q(f"{operation}Response"))
        el.extend(children)
        problems[operation] = schema_problems(schema, el)
    # The product puts who acted in LogDossier/nom ("Service Web", "Lukas Vermillon" in the
    # v5 bridge's own tests) though the WSDL types it as a DossierID: the one known deviation.
    names = [c.findtext(soap.q("nom")) for c in answers["GetHistoDossier"][:-1]]
    assert names == ["Service Web"] * 2 + ["Marie Martin"] * 3
    deviations = problems.pop("GetHistoDossier")
    assert len(deviations) == len(names)
    assert all("nom': [facet 'pattern']" in p for p in deviations)
    assert problems == {operation: [] for operation in problems}
    statuses = [c.findtext(soap.q("status")) for c in answers["GetHistoDossier"][:-1]]
    assert statuses == ["NonLu", "NonLu", "Lu", "Signe", "Archive"]


def answer(operation: str, inner: str) -> bytes:
    return (
        f'<S:Envelope xmlns:S="{SOAP_ENV}"><S:Header/><S:Body>'
        f'<{operation}Response xmlns="{NS}" xmlns:xmime="{XMIME}">{inner}'
        f"</{operation}Response></S:Body></S:Envelope>"
    ).encode()


def fault(string: str, code: str = "S:Server") -> bytes:
    return (
        f'<S:Envelope xmlns:S="{SOAP_ENV}"><S:Body><S:Fault><faultcode>{code}</faultcode>'
        f"<faultstring>{string}</faultstring></S:Fault></S:Body></S:Envelope>"
    ).encode()


def retour(code: str, message: str, severite: str = "ERROR") -> str:
    return (
        f"<MessageRetour><codeRetour>{code}</codeRetour><message>{message}</message>"
        f"<severite>{severite}</severite></MessageRetour>"
    )


def test_history_is_read_in_order_v5_style_without_accessible() -> None:
    logs = "".join(
        f"<LogDossier><timestamp>2025-01-0{i}T10:00:00.000+01:00</timestamp><nom>Jean Dupont</nom>"
        f"<status>{status}</status><annotation>{note}</annotation></LogDossier>"
        for i, (status, note) in enumerate([("NonLu", ""), ("RejetSignataire", "Non &amp; non")], 1)
    )
    el = soap.parse_response(
        answer("GetHistoDossier", logs + retour("OK", "", "INFO")), "GetHistoDossier"
    )
    history = soap.parse_histo(el)
    assert [(h.status, h.annotation, h.accessible) for h in history] == [
        ("NonLu", "", ""),
        ("RejetSignataire", "Non & non", ""),
    ]
    assert history[1].timestamp == "2025-01-02T10:00:00.000+01:00"
    assert soap.check_retour("GetHistoDossier", el) == MessageRetour("OK", "", "INFO")


def test_faults_and_refusals_become_permanent_errors_with_the_parapheurs_words() -> None:
    with pytest.raises(SoapFault) as plain:
        soap.parse_response(fault("NullPointerException"), "CreerDossier")
    assert str(plain.value) == "parapheur CreerDossier: SOAP fault S:Server: NullPointerException"
    assert plain.value.code == "S:Server" and plain.value.detail == "NullPointerException"

    with pytest.raises(DossierUnknown, match="Dossier abc inconnu"):
        soap.parse_response(fault("Dossier abc inconnu"), "GetHistoDossier")
    # "inconnu" about something else than the dossier is not a missing dossier.
    with pytest.raises(SoapFault) as other:
        soap.parse_response(fault("Type technique inconnu"), "CreerDossier")
    assert not isinstance(other.value, DossierUnknown)
    with pytest.raises(SoapFault) as vague:
        soap.parse_response(fault("Erreur inconnue"), "GetHistoDossier")
    assert not isinstance(vague.value, DossierUnknown)

    el = soap.parse_response(
        answer("CreerDossier", retour("KO", "Le dossier d1 existe déjà")), "CreerDossier"
    )
    with pytest.raises(DossierExists):
        soap.check_retour("CreerDossier", el)
    el = soap.parse_response(
        answer("ArchiverDossier", retour("KO", "Dossier non terminé")), "ArchiverDossier"
    )
    with pytest.raises(RetourKO) as ko:
        soap.check_retour("ArchiverDossier", el)
    assert str(ko.value) == "parapheur ArchiverDossier: KO: Dossier non terminé"
    el = soap.parse_response(
        answer("EffacerDossierRejete", retour("ERROR", "Erreur interne")), "EffacerDossierRejete"
    )
    with pytest.raises(RetourKO, match="ERROR: Erreur interne"):
        soap.check_retour("EffacerDossierRejete", el)


@pytest.mark.parametrize(
    ("code", "severite", "ok"),
    [
        ("OK", "INFO", True),
        ("", "INFO", True),
        ("", "ERROR", False),
        ("KO", "INFO", False),
        ("ERROR", "ERROR", False),
    ],
)
def test_message_retour_ok(code: str, severite: str, ok: bool) -> None:
    assert MessageRetour(code, "", severite).ok is ok


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"<html>502 Bad Gateway</html>", "not a SOAP 1.1 envelope"),
        (b"not xml at all", "not XML"),
        (answer("GetDossier", ""), "expected GetHistoDossierResponse"),
        (b'<!DOCTYPE x [<!ENTITY a "b">]><x/>', "DOCTYPE"),
        (f'<S:Envelope xmlns:S="{SOAP_ENV}"><S:Body/></S:Envelope>'.encode(), "Body is empty"),
    ],
)
def test_unexpected_answers_are_permanent(data: bytes, message: str) -> None:
    with pytest.raises(ParapheurError, match=message):
        soap.parse_response(data, "GetHistoDossier")


def _wrapped(content: bytes) -> str:
    """Base64 with CRLF every 76 characters, as some Java encoders write it."""
    text = base64.b64encode(content).decode()
    return "\r\n".join(text[i : i + 76] for i in range(0, len(text), 76))


def test_get_dossier_answer_is_decoded_to_files(tmp_path: Path) -> None:
    signed = simple_pdf(["signed"]) + bytes(range(256)) * 8000  # crosses decoding slices
    bordereau = simple_pdf(["bordereau"])
    annexe = b"annexe"
    inner = (
        "<TypeTechnique>ACTES</TypeTechnique><SousType>Deliberation</SousType>"
        "<DossierID>d1</DossierID><Visibilite>SERVICE</Visibilite>"
        f'<DateLimite xmlns:xsi="{XSI}" xsi:nil="true"/>'
        f'<DocPrincipal xmime:contentType="application/pdf">{_wrapped(signed)}</DocPrincipal>'
        "<NomDocPrincipal>deliberation.pdf</NomDocPrincipal><DocumentsAnnexes>"
        + "".join(
            f'<DocAnnexe><nom>"{name}"</nom><fichier xmime:contentType="application/pdf">'
            f"{_wrapped(content)}</fichier><mimetype>application/pdf</mimetype>"
            "<encoding>UTF-8</encoding></DocAnnexe>"
            for name, content in (("annexe.pdf", annexe), ("bordereau.pdf", bordereau))
        )
        + "</DocumentsAnnexes><MetaDonnees><MetaDonnee><nom>n</nom><valeur>v</valeur>"
        "</MetaDonnee></MetaDonnees>" + retour("OK", "", "INFO")
    )
    source = tmp_path / "answer.xml"
    source.write_bytes(answer("GetDossier", inner))

    dossier = soap.read_get_dossier(source, tmp_path)

    assert dossier.doc_principal is not None
    assert dossier.doc_principal.path.read_bytes() == signed
    assert dossier.doc_principal.content_type == "application/pdf"
    assert dossier.doc_principal.size == len(signed)
    assert dossier.bordereau is not None and dossier.bordereau.nom == "bordereau.pdf"
    assert dossier.bordereau.file.path.read_bytes() == bordereau
    assert [a.nom for a in dossier.annexes] == ["annexe.pdf", "bordereau.pdf"]
    assert dossier.date_limite is None and dossier.signature is None
    assert dossier.metadonnees == {"n": "v"}
    assert (dossier.dossier_id, dossier.nom_doc_principal) == ("d1", "deliberation.pdf")


def test_get_dossier_fault_and_ko_are_raised(tmp_path: Path) -> None:
    source = tmp_path / "answer.xml"
    source.write_bytes(fault("Dossier d9 inconnu", "S:Client"))
    with pytest.raises(DossierUnknown):
        soap.read_get_dossier(source, tmp_path)
    source.write_bytes(answer("GetDossier", "<DocPrincipal>!!!!</DocPrincipal>"))
    with pytest.raises(ParapheurError, match="not valid base64"):
        soap.read_get_dossier(source, tmp_path)


def test_decode_base64_text_across_slices() -> None:
    content = bytes(range(256)) * 5000
    out = io.BytesIO()
    assert soap.decode_base64_text(_wrapped(content), out) == len(content)
    assert out.getvalue() == content
    with pytest.raises(ValueError, match="stray"):
        soap.decode_base64_text("QUJD" + "RA", io.BytesIO())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("01J9ZQ_deliberation", "01J9ZQ_deliberation"),
        ("délib n°12 (v2).pdf", "délib_n_12_(v2).pdf"),
        ("_hidden", "d_hidden"),
        ("a/b\\c;d:e", "a_b_c_d_e"),
    ],
)
def test_sanitize_id(text: str, expected: str) -> None:
    assert soap.sanitize_id(text) == expected


def test_dossier_id_is_deterministic_and_bounded(tmp_path: Path) -> None:
    view = FileView(
        "f",
        "acte",
        "Délibération n°12 " + "x" * 200 + ".pdf",
        "application/pdf",
        1,
        "0" * 64,
        tmp_path / "x",
    )
    first = dossier_id_for("01J9ZQ4T6W8X2Y3Z4A5B6C7D8E", view)
    assert first == dossier_id_for("01J9ZQ4T6W8X2Y3Z4A5B6C7D8E", view)
    assert first.startswith("01J9ZQ4T6W8X2Y3Z4A5B6C7D8E_Délibération_n_12_xxx")
    assert len(first) == 100
