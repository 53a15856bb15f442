"""XAdES verification of bordereaux: each way a signature can fail, judged apart."""

from __future__ import annotations

import datetime as dt
import io
from collections import Counter
from pathlib import Path

import pytest
import xmlsec
from cryptography import x509
from lxml import etree

from connectors.helios.pes import PES_NS, check_pes
from connectors.helios.xades import DS, Judged, _qualifying, verify_bordereau
from simulators.pki import Issued, TestCA
from simulators.xades import sign_element as sign_bordereau

FLOW = f"""<n:PES_Aller xmlns:n="{PES_NS}"><PES_DepenseAller>
<Bordereau Id="B1"><BlocBordereau><Exer V="2026"/><IdBord V="12"/><MtBordHT V="55.22"/>
</BlocBordereau><Piece><BlocPiece><InfoPce><IdPce V="1"/></InfoPce></BlocPiece></Piece>
</Bordereau>
<Bordereau Id="B2"><BlocBordereau><Exer V="2026"/><IdBord V="13"/><MtBordHT V="10"/>
</BlocBordereau></Bordereau></PES_DepenseAller></n:PES_Aller>"""


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA.create("Test CA Helios", key_type="rsa")


@pytest.fixture(scope="module")
def signer(ca: TestCA) -> Issued:
    return ca.issue_signing("Marie Martin, ordonnatrice")


def flow() -> etree._Element:
    return etree.fromstring(FLOW.encode())


def bordereaux(root: etree._Element) -> list[etree._Element]:
    return list(root.iter("Bordereau"))


def signed(signer: Issued, **options: object) -> etree._Element:
    root = flow()
    sign_bordereau(bordereaux(root)[0], signer.key_pem, signer.cert_pem, **options)  # type: ignore[arg-type]
    # Written out and read back, as a flow arrives.
    return etree.fromstring(etree.tostring(root))


def judge(root: etree._Element, ca: TestCA, **kw: object) -> Judged:
    return verify_bordereau(bordereaux(root)[0], [ca.cert], **kw).judged  # type: ignore[arg-type]


def test_a_good_signature_is_valid_and_says_who_signed_when(ca: TestCA, signer: Issued) -> None:
    verdict = verify_bordereau(bordereaux(signed(signer))[0], [ca.cert])
    assert verdict.ok, verdict.reason
    assert verdict.signer is not None and "Marie Martin" in verdict.signer
    assert verdict.signing_time is not None
    assert abs(verdict.signing_time - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=5)


def test_a_changed_amount_is_a_digest_that_no_longer_holds(ca: TestCA, signer: Issued) -> None:
    root = signed(signer)
    root.find(".//MtBordHT").set("V", "5522.00")  # type: ignore[union-attr]
    verdict = verify_bordereau(bordereaux(root)[0], [ca.cert])
    assert verdict.judged is Judged.TAMPERED and "digest" in verdict.reason


def test_a_changed_signature_value_does_not_hold(ca: TestCA, signer: Issued) -> None:
    root = signed(signer)
    value = root.find(f".//{{{DS}}}SignatureValue")
    assert value is not None and value.text
    value.text = ("A" if value.text[0] != "A" else "B") + value.text[1:]
    verdict = verify_bordereau(bordereaux(root)[0], [ca.cert])
    assert verdict.judged is Judged.TAMPERED and "signature value" in verdict.reason


def test_a_certificate_not_valid_at_signing_time_is_refused(ca: TestCA, signer: Issued) -> None:
    verdict = verify_bordereau(bordereaux(signed(signer, signing_time="2010-01-04T09:00:00Z"))[0],
                               [ca.cert])
    assert verdict.judged is Judged.EXPIRED
    assert "not valid at SigningTime 2010-01-04T09:00:00+00:00" in verdict.reason


def test_a_chain_this_platform_does_not_trust_is_refused(signer: Issued) -> None:
    other = TestCA.create("Another CA", key_type="rsa")
    assert judge(signed(signer), other) is Judged.UNTRUSTED


def test_a_signature_that_covers_another_bordereau_is_refused(ca: TestCA, signer: Issued) -> None:
    verdict = verify_bordereau(bordereaux(signed(signer, covers="B2"))[0], [ca.cert])
    assert verdict.judged is Judged.INCOMPLETE
    assert verdict.reason == "the signature covers #B2, not this bordereau (#B1)"


def test_signed_properties_left_unsigned_are_refused(ca: TestCA, signer: Issued) -> None:
    verdict = verify_bordereau(bordereaux(signed(signer, sign_properties=False))[0], [ca.cert])
    assert verdict.judged is Judged.INCOMPLETE
    assert verdict.reason.startswith("no reference covers the XAdES SignedProperties")


def test_a_certificate_digest_that_is_not_base64_is_incomplete_not_a_crash(
        signer: Issued) -> None:
    """A signer may sign such properties itself: the XAdES layer must judge, not raise."""
    xad = "{http://uri.etsi.org/01903/v1.1.1#}"
    properties = signed(signer).find(f".//{xad}SignedSignatureProperties")
    assert properties is not None
    value = properties.find(f"{xad}SigningCertificate/{xad}Cert/{xad}CertDigest/"
                            f"{xad}DigestValue")
    assert value is not None
    value.text = "pas=du=base64"
    cert = x509.load_pem_x509_certificate(signer.cert_pem)
    verdict = _qualifying(properties, cert, "signer", dt.datetime.now(dt.UTC), [cert])
    assert (verdict.judged, verdict.reason) == (
        Judged.INCOMPLETE, "SigningCertificate's digest is not base64"), verdict


def test_an_id_carried_twice_makes_the_reference_ambiguous(ca: TestCA, signer: Issued) -> None:
    root = signed(signer)
    ids = Counter(e.get("Id") for e in root.iter() if e.get("Id"))
    ids["B1"] += 1  # a second element with Id="B1" elsewhere in the flow
    verdict = verify_bordereau(bordereaux(root)[0], [ca.cert], ids_in_document=dict(ids))
    assert verdict.judged is Judged.AMBIGUOUS


def test_another_policy_than_helios_is_refused(ca: TestCA, signer: Issued) -> None:
    assert judge(signed(signer, policy="urn:oid:1.2.3.4"), ca) is Judged.POLICY


def test_a_bordereau_without_signature_says_so(ca: TestCA) -> None:
    verdict = verify_bordereau(bordereaux(flow())[1], [ca.cert])
    assert verdict.judged is Judged.INCOMPLETE


def test_the_signatures_made_here_verify_with_xmlsec_too(ca: TestCA, signer: Issued) -> None:
    # Two libraries agree: signxml (the broker's verifier) and libxmlsec1 (the signer's).
    root = signed(signer)
    signature = root.find(f".//{{{DS}}}Signature")
    context = xmlsec.SignatureContext()
    context.key = xmlsec.Key.from_memory(signer.cert_pem, xmlsec.KeyFormat.CERT_PEM)
    for element in root.iter():
        if element.get("Id"):
            context.register_id(element, "Id")
    context.verify(signature)  # raises xmlsec.Error when it does not hold
    root.find(".//MtBordHT").set("V", "1.00")  # type: ignore[union-attr]
    with pytest.raises(xmlsec.Error):
        context.verify(signature)


def test_check_pes_verifies_each_signed_bordereau_while_it_streams(
        ca: TestCA, signer: Issued) -> None:
    from tests.unit.helios.test_pes import bordereau, pes, piece

    def flow(tamper: bool = False) -> bytes:
        root = etree.fromstring(pes(bordereau(piece("55.22")), demat="1"))
        (first,) = root.iter("Bordereau")
        sign_bordereau(first, signer.key_pem, signer.cert_pem)
        if tamper:
            first.find(".//MtHT").set("V", "55.23")  # type: ignore[union-attr]
            first.find(".//MtBordHT").set("V", "55.23")  # type: ignore[union-attr]
        return etree.tostring(root, xml_declaration=True, encoding="ISO-8859-1")

    assert check_pes(io.BytesIO(flow()), "p.xml", trust=[ca.cert])[1] == []
    (problem,) = check_pes(io.BytesIO(flow(tamper=True)), "p.xml", trust=[ca.cert])[1]
    assert problem.message.startswith("PES_DepenseAller/Bordereau/ds:Signature: tampered: a "
                                      "digest does not match")
    other = TestCA.create("Another CA", key_type="rsa")
    (untrusted,) = check_pes(io.BytesIO(flow()), "p.xml", trust=[other.cert])[1]
    assert "untrusted: the certificate of" in untrusted.message
    # Without trust anchors, signatures are not judged (only the rules are).
    assert check_pes(io.BytesIO(flow(tamper=True)), "p.xml")[1] == []


def test_demat_validate_pes_checks_rules_and_signatures(
        tmp_path: Path, ca: TestCA, signer: Issued) -> None:
    from click.testing import CliRunner

    from broker.cli import main
    from tests.unit.helios.test_pes import bordereau, pes, piece

    root = etree.fromstring(pes(bordereau(piece("55.22")), demat="1"))
    sign_bordereau(next(root.iter("Bordereau")), signer.key_pem, signer.cert_pem)
    good = tmp_path / "mandats.xml"
    good.write_bytes(etree.tostring(root, xml_declaration=True, encoding="ISO-8859-1"))
    anchors = tmp_path / "ca.pem"
    anchors.write_bytes(ca.cert_pem)
    said = CliRunner().invoke(main, ["validate", "pes", str(good), "--trust", str(anchors)])
    assert said.exit_code == 0, said.output
    assert said.output == ("mandats.xml: no problem found by the project's PES schema and the "
                           "DGFiP rules, signatures verified\n")
    bad = tmp_path / "bad.xml"
    bad.write_bytes(pes(bordereau(piece("55.22")), id_coll="21400015000011"))
    said = CliRunner().invoke(main, ["validate", "pes", str(bad)])
    assert said.exit_code == 1
    assert said.output.startswith("bad.xml:4: EnTetePES/IdColl: IdColl '21400015000011' is "
                                  "not a valid SIRET")
