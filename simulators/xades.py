"""XAdES v1.1.1 enveloped signatures of a PES, in the shape of helios-pes.md §3, made with
xmlsec (libxmlsec1): the parapheur simulator signs with it, and the broker verifies with
signxml, a second library, so neither checks only what it made itself.

One signature per bordereau (``//Bordereau``) or one of the whole flow (``.``, the root
needs an Id), each the last child of what it signs.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib

import xmlsec
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, load_pem_private_key
from lxml import etree

from connectors.helios.xades import DS, XAD

POLICY = "urn:oid:1.2.250.1.131.1.5.18.21.1.4"
POLICY_DESCRIPTION = "Politique de signature Helios de la DGFiP"


def _sub(parent: etree._Element, ns: str, name: str, text: str | None = None,
         **attrs: str) -> etree._Element:
    element = etree.SubElement(parent, f"{{{ns}}}{name}", attrs)
    if text is not None:
        element.text = text
    return element


def _method(key_pem: bytes) -> object:
    key = load_pem_private_key(key_pem, password=None)
    return (xmlsec.Transform.ECDSA_SHA256 if isinstance(key, ec.EllipticCurvePrivateKey)
            else xmlsec.Transform.RSA_SHA256)


def sign_element(target: etree._Element, key_pem: bytes, cert_pem: bytes, *,
                 signing_time: str | None = None, policy: str = POLICY,
                 covers: str | None = None, sign_properties: bool = True,
                 role: str = "Ordonnateur", city: str | None = None) -> etree._Element:
    """Sign ``target`` (a bordereau, or the PES_Aller root) in place, its ds:Signature as
    last child, at ``signing_time`` (now by default). ``covers`` points the first reference
    at another Id; ``sign_properties=False`` leaves out the SignedProperties reference (both
    make the flawed signatures the verifier must refuse)."""
    target_id = target.get("Id")
    if not target_id:
        raise ValueError(f"element {etree.QName(target).localname} has no Id to sign")
    sig_id, sp_id = f"{target_id}_SIG", f"{target_id}_SIG_SP"
    signature = xmlsec.template.create(target, xmlsec.Transform.EXCL_C14N, _method(key_pem),
                                       ns="ds")
    signature.set("Id", sig_id)
    target.append(signature)
    ref = xmlsec.template.add_reference(signature, xmlsec.Transform.SHA256,
                                        uri=f"#{covers or target_id}")
    xmlsec.template.add_transform(ref, xmlsec.Transform.ENVELOPED)
    xmlsec.template.add_transform(ref, xmlsec.Transform.EXCL_C14N)
    if sign_properties:
        props = xmlsec.template.add_reference(signature, xmlsec.Transform.SHA256,
                                              uri=f"#{sp_id}", type=f"{XAD}SignedProperties")
        xmlsec.template.add_transform(props, xmlsec.Transform.EXCL_C14N)
    xmlsec.template.add_x509_data(xmlsec.template.ensure_key_info(signature))
    _qualifying(signature, sig_id, sp_id, x509.load_pem_x509_certificate(cert_pem),
                signing_time, policy, role, city)
    context = xmlsec.SignatureContext()
    key = xmlsec.Key.from_memory(key_pem, xmlsec.KeyFormat.PEM)
    key.load_cert_from_memory(cert_pem, xmlsec.KeyFormat.PEM)
    context.key = key
    for element in target.getroottree().getroot().iter():
        if isinstance(element.tag, str) and element.get("Id"):
            context.register_id(element, "Id")
    context.sign(signature)
    return signature


def _qualifying(signature: etree._Element, sig_id: str, sp_id: str, cert: x509.Certificate,
                signing_time: str | None, policy: str, role: str, city: str | None) -> None:
    """The XAdES SignedProperties: when, by which certificate, under which policy, as whom."""
    qualifying = _sub(_sub(signature, DS, "Object"), XAD, "QualifyingProperties",
                      Target=f"#{sig_id}")
    signed = _sub(_sub(qualifying, XAD, "SignedProperties", Id=sp_id), XAD,
                  "SignedSignatureProperties")
    when = signing_time or dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    _sub(signed, XAD, "SigningTime", when)
    certificate = _sub(_sub(signed, XAD, "SigningCertificate"), XAD, "Cert")
    digest = _sub(certificate, XAD, "CertDigest")
    # XAdES 1.1.1 declares these inside its own namespace (the DGFiP's flows write xad:).
    _sub(digest, XAD, "DigestMethod", Algorithm="http://www.w3.org/2001/04/xmlenc#sha256")
    _sub(digest, XAD, "DigestValue", base64.b64encode(
        hashlib.sha256(cert.public_bytes(Encoding.DER)).digest()).decode())
    serial = _sub(certificate, XAD, "IssuerSerial")
    _sub(serial, DS, "X509IssuerName", cert.issuer.rfc4514_string())
    _sub(serial, DS, "X509SerialNumber", str(cert.serial_number))
    policy_id = _sub(_sub(signed, XAD, "SignaturePolicyIdentifier"), XAD, "SignaturePolicyId")
    identifier = _sub(policy_id, XAD, "SigPolicyId")
    _sub(identifier, XAD, "Identifier", policy)
    _sub(identifier, XAD, "Description", POLICY_DESCRIPTION)
    hashed = _sub(policy_id, XAD, "SigPolicyHash")
    _sub(hashed, XAD, "DigestMethod", Algorithm="http://www.w3.org/2000/09/xmldsig#sha1")
    _sub(hashed, XAD, "DigestValue", "G7roucf600+f03r/o0bAOQ6WAs0=")
    if city:
        place = _sub(signed, XAD, "SignatureProductionPlace")
        _sub(place, XAD, "City", city)
        _sub(place, XAD, "CountryName", "France")
    _sub(_sub(_sub(signed, XAD, "SignerRole"), XAD, "ClaimedRoles"), XAD, "ClaimedRole", role)


def sign_pes(data: bytes, xpath: str, key_pem: bytes, cert_pem: bytes, *,
             city: str | None = None) -> bytes:
    """The PES in ``data`` signed as ``xpath`` says (``//Bordereau`` or ``.``), written back
    in ISO-8859-1 as the DGFiP reads it."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=True,
                             load_dtd=False)
    root = etree.fromstring(data, parser)
    targets = list(root.iter("Bordereau")) if xpath == "//Bordereau" else [root]
    if not targets:
        raise ValueError("the PES holds no Bordereau to sign")
    for target in targets:
        sign_element(target, key_pem, cert_pem, city=city)
    return etree.tostring(root, xml_declaration=True, encoding="ISO-8859-1")
