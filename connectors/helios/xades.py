"""XAdES (v1.1.1, enveloped) verification of a PES bordereau's signature.

The XML-DSig core (each reference's digest, the signature value) is checked by signxml
against the certificate the signature carries; the rest is the XAdES and Helios layer:
the references point at this bordereau and at the SignedProperties, the SigningCertificate
digest and serial are the carried certificate's, the certificate was valid at SigningTime,
the policy is the DGFiP's Helios policy, and the certificate chains to a trust anchor of
the platform. Each refusal says which of these failed.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature as CryptoInvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from lxml import etree
from signxml.exceptions import InvalidDigest, InvalidInput, InvalidSignature
from signxml.verifier import SignatureConfiguration, XMLVerifier

DS = "http://www.w3.org/2000/09/xmldsig#"
XAD = "http://uri.etsi.org/01903/v1.1.1#"
# The DGFiP's Helios signature policy, as S²LOW's template (…1.4) and later flows (…1.7) say.
HELIOS_POLICIES = frozenset({"urn:oid:1.2.250.1.131.1.5.18.21.1.4",
                             "urn:oid:1.2.250.1.131.1.5.18.21.1.7"})
_DIGESTS = {"http://www.w3.org/2001/04/xmlenc#sha256": hashlib.sha256,
            "http://www.w3.org/2000/09/xmldsig#sha1": hashlib.sha1,
            "http://www.w3.org/2001/04/xmlenc#sha512": hashlib.sha512}


class Judged(StrEnum):
    VALID = "valid"
    TAMPERED = "tampered"  # a digest or the signature value does not hold
    INCOMPLETE = "incomplete"  # a required part of XAdES is missing or does not match
    AMBIGUOUS = "ambiguous"  # a reference could point at two elements
    EXPIRED = "expired"  # the certificate was not valid at SigningTime
    UNTRUSTED = "untrusted"  # no chain to the platform's trust anchors
    POLICY = "policy"  # not the Helios signature policy


@dataclass(frozen=True)
class Verdict:
    judged: Judged
    reason: str
    signer: str | None = None
    signing_time: dt.datetime | None = None

    @property
    def ok(self) -> bool:
        return self.judged is Judged.VALID


_anchors_lock = threading.Lock()
_anchors: dict[tuple[Path, float], list[x509.Certificate]] = {}


def trust_anchors(path: Path) -> list[x509.Certificate]:
    """The platform's CA bundle (PEM), read again when the file changes."""
    key = (path, path.stat().st_mtime)
    with _anchors_lock:
        if key not in _anchors:
            _anchors.clear()
            _anchors[key] = x509.load_pem_x509_certificates(path.read_bytes())
        return _anchors[key]


def _find(element: etree._Element, path: str) -> etree._Element | None:
    return element.find(path, {"ds": DS, "xad": XAD})


def _text(element: etree._Element, path: str) -> str | None:
    found = _find(element, path)
    return (found.text or "").strip() if found is not None else None


def verify_bordereau(bordereau: etree._Element, anchors: Sequence[x509.Certificate], *,
                     ids_in_document: dict[str, int] | None = None) -> Verdict:
    """The verdict on the signature that is the last child of ``bordereau``.

    ``ids_in_document``: how many elements of the whole flow carry each Id (a reference to
    an Id carried twice is ambiguous: which element was signed cannot be said).
    """
    signature = _find(bordereau, "ds:Signature")
    own_id = bordereau.get("Id")
    if signature is None:
        return Verdict(Judged.INCOMPLETE, "the bordereau carries no ds:Signature")
    uris = [r.get("URI") or "" for r in signature.iterfind("ds:SignedInfo/ds:Reference",
                                                           {"ds": DS})]
    properties = _find(signature, "ds:Object/xad:QualifyingProperties/xad:SignedProperties")
    if not own_id or f"#{own_id}" not in uris:
        others = [u for u in uris if properties is None or u != f"#{properties.get('Id')}"]
        return Verdict(Judged.INCOMPLETE, f"the signature covers {', '.join(others) or 'nothing'}"
                       f", not this bordereau (#{own_id})")
    counts = ids_in_document or {}
    for uri in uris:
        if counts.get(uri.removeprefix("#"), 1) > 1:
            return Verdict(Judged.AMBIGUOUS, f"reference {uri} could point at "
                           f"{counts[uri.removeprefix('#')]} elements carrying that Id")
    if properties is None or f"#{properties.get('Id')}" not in uris:
        return Verdict(Judged.INCOMPLETE, "no reference covers the XAdES SignedProperties "
                       "(signing time, certificate, policy would not be signed)")
    carried = _text(signature, "ds:KeyInfo/ds:X509Data/ds:X509Certificate")
    if not carried:
        return Verdict(Judged.INCOMPLETE, "the signature carries no X509Certificate")
    try:
        cert = x509.load_der_x509_certificate(base64.b64decode("".join(carried.split())))
    except ValueError as exc:
        return Verdict(Judged.INCOMPLETE, f"its X509Certificate cannot be read: {exc}")
    signer = cert.subject.rfc4514_string()
    signed = _find(properties, "xad:SignedSignatureProperties")
    if signed is None:
        return Verdict(Judged.INCOMPLETE, "SignedProperties holds no SignedSignatureProperties",
                       signer)
    when_text = _text(signed, "xad:SigningTime")
    try:
        when = dt.datetime.fromisoformat((when_text or "").replace("Z", "+00:00"))
    except ValueError:
        return Verdict(Judged.INCOMPLETE, f"SigningTime {when_text!r} is no date and time",
                       signer)
    when = when if when.tzinfo else when.replace(tzinfo=dt.UTC)
    if not cert.not_valid_before_utc <= when <= cert.not_valid_after_utc:
        return Verdict(Judged.EXPIRED, f"the certificate was not valid at SigningTime "
                       f"{when.isoformat()} (valid {cert.not_valid_before_utc.date()} to "
                       f"{cert.not_valid_after_utc.date()})", signer, when)
    core = _core(bordereau, cert, len(uris), when)
    if core is not None:
        return Verdict(core[0], core[1], signer, when)
    return _qualifying(signed, cert, signer, when, anchors)


def _core(bordereau: etree._Element, cert: x509.Certificate, references: int,
          when: dt.datetime) -> tuple[Judged, str] | None:
    """signxml's check of the XML-DSig core on the bordereau alone (the certificate taken as
    it was at signing time), or why it fails."""
    alone = copy.deepcopy(bordereau)
    try:
        XMLVerifier().verify(alone, x509_cert=cert, expect_config=SignatureConfiguration(
            expect_references=references, verification_time=when))
    except InvalidDigest as exc:
        return Judged.TAMPERED, f"a digest does not match what it covers (changed after " \
                                f"signing): {exc}"
    except InvalidSignature as exc:
        return Judged.TAMPERED, f"the signature value does not hold for the signed info: {exc}"
    except InvalidInput as exc:
        if "forbidden by configuration" in str(exc):  # SHA-1 and other weak algorithms
            return Judged.POLICY, f"{exc}: SHA-256 or stronger is required"
        return Judged.INCOMPLETE, f"the signature cannot be checked: {exc}"
    return None


def _qualifying(signed: etree._Element, cert: x509.Certificate, signer: str,
                when: dt.datetime, anchors: Sequence[x509.Certificate]) -> Verdict:
    # XAdES 1.1.1 puts them in its own namespace; some producers write the ds: ones.
    digest = "xad:SigningCertificate/xad:Cert/xad:CertDigest/"
    digest_method = _find(signed, digest + "xad:DigestMethod")
    if digest_method is None:  # (an element without children is falsy: no ``or`` here)
        digest_method = _find(signed, digest + "ds:DigestMethod")
    digest_value = _text(signed, digest + "xad:DigestValue")
    if digest_value is None:
        digest_value = _text(signed, digest + "ds:DigestValue")
    algorithm = _DIGESTS.get(digest_method.get("Algorithm", "") if digest_method is not None
                             else "")
    if algorithm is None or digest_value is None:
        return Verdict(Judged.INCOMPLETE, "SigningCertificate gives no certificate digest the "
                       "broker knows", signer, when)
    der = cert.public_bytes(Encoding.DER)
    try:
        carried_digest = base64.b64decode(digest_value, validate=True)
    except ValueError:
        return Verdict(Judged.INCOMPLETE, "SigningCertificate's digest is not base64", signer,
                       when)
    if carried_digest != algorithm(der).digest():
        return Verdict(Judged.INCOMPLETE, "SigningCertificate's digest is not the carried "
                       "certificate's", signer, when)
    serial = _text(signed, "xad:SigningCertificate/xad:Cert/xad:IssuerSerial/ds:X509SerialNumber")
    if serial is None or serial.strip() != str(cert.serial_number):
        return Verdict(Judged.INCOMPLETE, f"SigningCertificate's serial {serial} is not the "
                       f"carried certificate's ({cert.serial_number})", signer, when)
    policy = _text(signed, "xad:SignaturePolicyIdentifier/xad:SignaturePolicyId/"
                   "xad:SigPolicyId/xad:Identifier")
    if policy not in HELIOS_POLICIES:
        return Verdict(Judged.POLICY, f"signature policy {policy!r} is not the DGFiP's Helios "
                       f"policy ({', '.join(sorted(HELIOS_POLICIES))})", signer, when)
    if not _chains(cert, anchors):
        return Verdict(Judged.UNTRUSTED, f"the certificate of {signer} does not chain to a "
                       "trust anchor of this platform", signer, when)
    return Verdict(Judged.VALID, f"signed by {signer} at {when.isoformat()}", signer, when)


def _chains(cert: x509.Certificate, anchors: Sequence[x509.Certificate]) -> bool:
    """Issued (signature checked) by one of ``anchors`` directly, or is one of them."""
    for anchor in anchors:
        if cert == anchor:
            return True
        if cert.issuer != anchor.subject:
            continue
        key = anchor.public_key()
        try:
            if isinstance(key, rsa.RSAPublicKey):
                assert cert.signature_hash_algorithm is not None
                key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(),
                           cert.signature_hash_algorithm)
            elif isinstance(key, ec.EllipticCurvePublicKey):
                assert cert.signature_hash_algorithm is not None
                key.verify(cert.signature, cert.tbs_certificate_bytes,
                           ec.ECDSA(cert.signature_hash_algorithm))
            else:
                continue
        except CryptoInvalidSignature:
            continue
        return True
    return False

