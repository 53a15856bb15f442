"""A XAdES v1.1.1 enveloped signer for bordereaux, in the shape of helios-pes.md §3, made with
xmlsec (libxmlsec1): a second library, so the broker's verifier (signxml) is checked against
signatures it did not make."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib

import xmlsec
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from lxml import etree

from connectors.helios.xades import DS, XAD

POLICY = "urn:oid:1.2.250.1.131.1.5.18.21.1.4"


def _sub(parent: etree._Element, ns: str, name: str, text: str | None = None,
         **attrs: str) -> etree._Element:
    element = etree.SubElement(parent, f"{{{ns}}}{name}", attrs)
    if text is not None:
        element.text = text
    return element


def sign_bordereau(bordereau: etree._Element, key_pem: bytes, cert_pem: bytes, *,
                   signing_time: str | None = None, policy: str = POLICY,
                   covers: str | None = None, sign_properties: bool = True) -> etree._Element:
    """Sign ``bordereau`` in place (its Signature as last child), at ``signing_time`` (now by
    default); ``covers`` points the first
    reference elsewhere; ``sign_properties=False`` leaves out the SignedProperties reference."""
    bid = bordereau.get("Id")
    sig_id, sp_id = f"{bid}_SIG", f"{bid}_SIG_SP"
    signature = xmlsec.template.create(bordereau, xmlsec.Transform.EXCL_C14N,
                                       xmlsec.Transform.RSA_SHA256, ns="ds")
    signature.set("Id", sig_id)
    bordereau.append(signature)
    ref = xmlsec.template.add_reference(signature, xmlsec.Transform.SHA256,
                                        uri=f"#{covers or bid}")
    xmlsec.template.add_transform(ref, xmlsec.Transform.ENVELOPED)
    xmlsec.template.add_transform(ref, xmlsec.Transform.EXCL_C14N)
    if sign_properties:
        props = xmlsec.template.add_reference(signature, xmlsec.Transform.SHA256,
                                              uri=f"#{sp_id}",
                                              type=f"{XAD}SignedProperties")
        xmlsec.template.add_transform(props, xmlsec.Transform.EXCL_C14N)
    key_info = xmlsec.template.ensure_key_info(signature)
    xmlsec.template.add_x509_data(key_info)
    cert = x509.load_pem_x509_certificate(cert_pem)
    obj = _sub(signature, DS, "Object")
    qualifying = _sub(obj, XAD, "QualifyingProperties", Target=f"#{sig_id}")
    properties = _sub(qualifying, XAD, "SignedProperties", Id=sp_id)
    signed = _sub(properties, XAD, "SignedSignatureProperties")
    when = signing_time or dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    _sub(signed, XAD, "SigningTime", when)
    certificate = _sub(_sub(signed, XAD, "SigningCertificate"), XAD, "Cert")
    digest = _sub(certificate, XAD, "CertDigest")
    _sub(digest, DS, "DigestMethod", Algorithm="http://www.w3.org/2001/04/xmlenc#sha256")
    _sub(digest, DS, "DigestValue", base64.b64encode(
        hashlib.sha256(cert.public_bytes(Encoding.DER)).digest()).decode())
    serial = _sub(certificate, XAD, "IssuerSerial")
    _sub(serial, DS, "X509IssuerName", cert.issuer.rfc4514_string())
    _sub(serial, DS, "X509SerialNumber", str(cert.serial_number))
    policy_id = _sub(_sub(signed, XAD, "SignaturePolicyIdentifier"), XAD, "SignaturePolicyId")
    _sub(_sub(policy_id, XAD, "SigPolicyId"), XAD, "Identifier", policy)
    hashed = _sub(policy_id, XAD, "SigPolicyHash")
    _sub(hashed, DS, "DigestMethod", Algorithm="http://www.w3.org/2000/09/xmldsig#sha1")
    _sub(hashed, DS, "DigestValue", "G7roucf600+f03r/o0bAOQ6WAs0=")
    context = xmlsec.SignatureContext()
    key = xmlsec.Key.from_memory(key_pem, xmlsec.KeyFormat.PEM)
    key.load_cert_from_memory(cert_pem, xmlsec.KeyFormat.PEM)
    context.key = key
    root = bordereau.getroottree().getroot()
    for element in root.iter():
        if element.get("Id"):
            context.register_id(element, "Id")
    context.sign(signature)
    return signature
