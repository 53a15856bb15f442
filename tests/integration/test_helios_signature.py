"""HELIOS signature in the parapheur: a PES sent to the i-Parapheur simulator under a PES_V2
type (protocol HELIOS), each bordereau signed XAdES enveloped there, the signed PES kept, and
checked again before it may go to the TdT.

The simulator signs with xmlsec (libxmlsec1); every signature it makes is verified here by
signxml on its own and by the broker's check (signxml for the XML-DSig core, its own XAdES
and Helios rules, the chain to the simulator's CA).
"""

from __future__ import annotations

import base64
import dataclasses
import io
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import xmlsec
from cryptography import x509
from lxml import etree
from pyhanko.pdf_utils.reader import PdfFileReader
from signxml.verifier import SignatureConfiguration, XMLVerifier

from broker.flows.helios import HELIOS
from connectors.base import Done, PermanentError, Rejected
from connectors.helios.before_sending import check_before_sending
from connectors.helios.connector import pes_to_send
from connectors.helios.pes import check_pes
from connectors.helios.signing import PER_BORDEREAU, WHOLE_FLOW, signature_xpath
from connectors.helios.xades import DS, Judged, verify_bordereau
from connectors.parapheur import ParapheurConnector
from simulators.common import serving
from simulators.parapheur import build_app
from simulators.pes_samples import bordereau, pes, piece, sample_pes
from simulators.pki import TestCA
from simulators.xades import sign_pes
from tests.integration.test_parapheur import Sim, Step

HELIOS_CIRCUIT = {"helios": {"type": "PES", "sous_type": "Bordereau"}}
TEXT = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=True)


def with_root_id(data: bytes, ident: str = "PES1") -> bytes:
    return data.replace(b"<n:PES_Aller ", f'<n:PES_Aller Id="{ident}" '.encode(), 1)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def sim(http: aiohttp.ClientSession) -> AsyncIterator[Sim]:
    served = Sim(build_app(auto_sign_after=60.0), http)
    async with serving(served.app) as served.url:
        yield served


def helios_step(tmp_path: Path, http_session: aiohttp.ClientSession, data: bytes,
                metadata: Mapping[str, Any] | None = None) -> Step:
    made = Step(tmp_path, http_session, options=HELIOS.step("sign").options, flow="helios",
                metadata=metadata or {"nom_fic": "mandats_2026_12", "bordereaux": []})
    made.add_file("pes", "mandats_2026_12.xml", data, "application/xml")
    return made


async def signed_through_the_parapheur(step: Step, sim: Sim) -> bytes:
    config = sim.config(circuits=HELIOS_CIRCUIT)
    connector = ParapheurConnector()
    await connector.run(step.context(config))
    sim.now += 3600  # past the simulator's auto-sign delay
    done = await connector.run(step.context(config))
    assert isinstance(done, Done), done
    (signed,) = step.role("pes_signe")
    return signed.path.read_bytes()


def anchors_of(sim: Sim) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(sim.ca_path.read_bytes())


def carried_cert(signature: etree._Element) -> x509.Certificate:
    text = signature.findtext(f".//{{{DS}}}X509Certificate") or ""
    return x509.load_der_x509_certificate(base64.b64decode("".join(text.split())))


def signxml_alone(signed_element: etree._Element) -> None:
    """signxml, with none of the broker's code: both references' digests and the value."""
    signature = signed_element.find(f"{{{DS}}}Signature")
    assert signature is not None
    XMLVerifier().verify(signed_element, x509_cert=carried_cert(signature),
                         expect_config=SignatureConfiguration(expect_references=2))


async def test_each_bordereau_is_signed_and_verifies_with_signxml_and_the_broker(
        tmp_path: Path, http: aiohttp.ClientSession, sim: Sim) -> None:
    data = sample_pes("mandats_2026_12", bordereaux=3, pjs=1, demat="1")
    summary, _ = check_pes(io.BytesIO(data), "p.xml")
    step = helios_step(tmp_path, http, data, {**summary.metadata(), "signed": False})
    signed = await signed_through_the_parapheur(step, sim)

    assert [c["operation"] for c in sim.parapheur.calls].count("CreerDossier") == 1
    root = etree.fromstring(signed, TEXT)
    bordereaux = list(root.iter("Bordereau"))
    assert len(bordereaux) == 3
    for element in bordereaux:
        assert element[-1].tag == f"{{{DS}}}Signature"  # the last child, as the DGFiP reads it
        signxml_alone(etree.fromstring(etree.tostring(element), TEXT))
        verdict = verify_bordereau(element, anchors_of(sim))
        assert verdict.judged is Judged.VALID, verdict
        assert verdict.signer is not None and "Marie Martin" in verdict.signer
    assert signed.startswith(b"<?xml version='1.0' encoding='ISO-8859-1'?>")
    assert check_pes(io.BytesIO(signed), "signe.xml", trust=anchors_of(sim))[1] == []


async def test_the_dossier_asks_for_bordereau_signatures_and_shows_a_summary(
        tmp_path: Path, http: aiohttp.ClientSession, sim: Sim) -> None:
    data = sample_pes("mandats_2026_12", bordereaux=2, first_number=41, demat="1")
    summary, _ = check_pes(io.BytesIO(data), "p.xml")
    step = helios_step(tmp_path, http, data, summary.metadata())
    await ParapheurConnector().run(step.context(sim.config(circuits=HELIOS_CIRCUIT)))
    (dossier,) = sim.parapheur.dossiers.values()
    assert (dossier.type_technique, dossier.sous_type, dossier.xpath) == (
        "PES", "Bordereau", PER_BORDEREAU)
    assert dossier.visuel is not None
    page = PdfFileReader(io.BytesIO(dossier.visuel)).root["/Pages"]["/Kids"][0]
    text = page.get_object()["/Contents"].get_object().data.decode("cp1252")
    assert "mandats_2026_12" in text and "Bordereau n° 41" in text and "Bordereau n° 42" in text


async def test_a_pes_whose_root_alone_has_an_id_is_signed_whole(
        tmp_path: Path, http: aiohttp.ClientSession, sim: Sim) -> None:
    data = with_root_id(pes(bordereau(piece("55.22"), ident=None), demat="1"))
    path = tmp_path / "p.xml"
    path.write_bytes(data)
    assert signature_xpath(path) == WHOLE_FLOW
    signed = await signed_through_the_parapheur(helios_step(tmp_path, http, data), sim)
    root = etree.fromstring(signed, TEXT)
    assert root[-1].tag == f"{{{DS}}}Signature"
    signxml_alone(root)
    assert sim.parapheur.ever_created


async def test_a_pes_with_nothing_to_point_a_signature_at_is_refused_before_the_parapheur(
        tmp_path: Path, http: aiohttp.ClientSession, sim: Sim) -> None:
    data = pes(bordereau(piece("55.22"), ident=None), bordereau(piece("55.22"), ident="B2"),
               demat="1")
    step = helios_step(tmp_path, http, data)
    with pytest.raises(PermanentError, match="1 of its 2 bordereaux have no Id and its root "
                                             "has none"):
        await ParapheurConnector().run(step.context(sim.config(circuits=HELIOS_CIRCUIT)))
    assert sim.stats["created"] == 0


async def test_the_parapheur_refuses_a_pes_v2_dossier_without_a_usable_xpath(
        tmp_path: Path, http: aiohttp.ClientSession, sim: Sim) -> None:
    data = sample_pes("mandats_2026_12", demat="1")
    # The ACTES options (no protocol HELIOS) on the PES circuit: no XPath is sent.
    step = Step(tmp_path, http, flow="helios")
    step.add_file("acte", "mandats.xml", data, "application/xml")
    with pytest.raises(PermanentError, match="XPathPourSignatureXML None non pris en charge"):
        await ParapheurConnector().run(step.context(sim.config(circuits=HELIOS_CIRCUIT)))


def _tampered(signed: bytes) -> bytes:
    root = etree.fromstring(signed, TEXT)
    amount = root.find(".//Bordereau/BlocBordereau/MtBordHT")
    assert amount is not None
    # Changed after signing, consistently with its pièces, so only the signature says so.
    for line in root.find(".//Bordereau").iter("MtHT"):  # type: ignore[union-attr]
        line.set("V", "0.00")
    amount.set("V", "0.00")
    return etree.tostring(root, xml_declaration=True, encoding="ISO-8859-1")


async def test_the_signed_pes_is_checked_again_before_it_goes_to_the_tdt(
        tmp_path: Path, http: aiohttp.ClientSession, sim: Sim) -> None:
    data = sample_pes("mandats_2026_12", bordereaux=2, pjs=0, demat="1")
    signed = await signed_through_the_parapheur(helios_step(tmp_path, http, data), sim)
    trust, other = tmp_path / "trust.pem", tmp_path / "other.pem"
    trust.write_bytes(sim.ca_path.read_bytes())
    other.write_bytes(TestCA.create("Autre AC").cert_pem)

    reports: list[str] = []
    warned: list[list[str]] = []

    async def refusal(content: bytes, anchors: Path, **platform: Any) -> Rejected | None:
        folder = tmp_path / f"transmit-{len(list(tmp_path.glob('transmit-*')))}"
        folder.mkdir()
        step = helios_step(folder, http, data)
        kept = step.add_file("pes_signe", "mandats-signe.xml", content, "application/xml")
        ctx = dataclasses.replace(step.context({}), step="transmit",
                                  platform={"xades_trust": anchors, **platform})
        assert pes_to_send(ctx) == kept  # the signed PES is the one that goes
        checked = await check_before_sending(ctx, kept)
        (report,) = step.role("rapport_signature")  # kept either way, archived with the PES
        reports.append(report.path.read_text())
        assert all(w in reports[-1] for w in checked.warnings)
        warned.append(checked.warnings)
        return checked.refusal

    assert await refusal(signed, trust) is None
    assert "bordereau 1 (BORD1, exercice 2026, line" in reports[-1]
    assert reports[-1].count(": valid: signed by ") == 2, reports[-1]
    tampered = await refusal(_tampered(signed), trust)
    assert tampered is not None and "may not go to the DGFiP" in tampered.reason
    assert "ds:Signature: tampered" in tampered.reason, tampered.reason
    assert tampered.metadata["errors"][0]["element"] == "PES signé"
    assert ": tampered: " in reports[-1]
    untrusted = await refusal(signed, other)
    assert untrusted is not None and "untrusted" in untrusted.reason, untrusted.reason
    # A platform that accepts untrusted chains lets it go, and the report says so.
    assert await refusal(signed, other, xades_accept_untrusted=True) is None
    assert "(accepted: the platform accepts untrusted chains)" in reports[-1], reports[-1]
    assert len(warned[-1]) == 2, warned  # one per bordereau, journaled with the deposit
    unsigned = await refusal(data, trust)  # the parapheur gave the PES back unsigned
    assert unsigned is not None and "is not signed" in unsigned.reason, unsigned.reason

    # Signed whole (XPath "."): the one signature is verified on the whole file.
    whole_data = with_root_id(sample_pes("mandats_2026_12", pjs=0, demat="1"))
    whole = sign_pes(whole_data, WHOLE_FLOW, *signer_of(sim))
    assert await refusal(whole, trust) is None
    assert "whole flow (PES_Aller): valid: signed by" in reports[-1], reports[-1]
    whole_tampered = _tampered(whole)
    refused_whole = await refusal(whole_tampered, trust)
    assert refused_whole is not None and "PES_Aller/ds:Signature: tampered" in \
        refused_whole.reason, refused_whole.reason


def signer_of(sim: Sim) -> tuple[bytes, bytes]:
    """The simulator's signing key and certificate, as it signs with them."""
    issued = sim.parapheur.signer._issued
    return issued.key_pem, issued.cert_pem


def test_xmlsec_itself_finds_the_simulators_signature_and_a_tampered_one() -> None:
    """The signer's own library agrees: a third opinion on the same signatures."""
    ca = TestCA.create("AC")
    issued = ca.issue_signing("Jean Dupont")
    signed = sign_pes(sample_pes("m_1", bordereaux=1, pjs=0, demat="1"), PER_BORDEREAU,
                      issued.key_pem, issued.cert_pem)
    for content, holds in ((signed, True), (_tampered(signed), False)):
        root = etree.fromstring(content, TEXT)
        (element,) = root.iter("Bordereau")
        context = xmlsec.SignatureContext()
        context.key = xmlsec.Key.from_memory(issued.cert_pem, xmlsec.KeyFormat.CERT_PEM)
        context.register_id(element, "Id")
        for sp in root.iter("{http://uri.etsi.org/01903/v1.1.1#}SignedProperties"):
            context.register_id(sp, "Id")
        signature = element.find(f"{{{DS}}}Signature")
        if holds:
            context.verify(signature)
        else:
            with pytest.raises(xmlsec.VerificationError):
                context.verify(signature)
