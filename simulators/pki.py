"""A throw-away certificate authority for the simulators and their tests.

:meth:`TestCA.create` makes a self-signed root at start; it then issues a
document-signing certificate (the parapheur's signer), a TLS server certificate
for ``127.0.0.1``/``localhost`` and TLS client certificates. Everything can be
written as PEM (and PKCS#12 for the leaf certificates) so a peer that only
takes files can use it. Keys are EC P-256 by default: generating them is
instant, which keeps simulator starts and tests fast; ``key_type="rsa"`` gives
RSA 2048 where a peer insists on it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KeyType = Literal["ec", "rsa"]
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

# Certificates are back-dated a little so a peer whose clock is slightly behind accepts them.
_BACKDATE = dt.timedelta(hours=1)


def new_key(key_type: KeyType = "ec") -> PrivateKey:
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str, organization: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass(frozen=True)
class IssuedFiles:
    cert: Path
    key: Path
    p12: Path | None = None


@dataclass(frozen=True)
class Issued:
    """A certificate, its private key and the chain up to (not including) the root."""

    cert: x509.Certificate
    key: PrivateKey
    chain: tuple[x509.Certificate, ...] = ()

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return _key_pem(self.key)

    def pkcs12(self, password: bytes | None = None, friendly_name: str = "demat") -> bytes:
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(password)
            if password
            else serialization.NoEncryption()
        )
        return pkcs12.serialize_key_and_certificates(
            friendly_name.encode(), self.key, self.cert, list(self.chain) or None, encryption
        )

    def write(
        self, directory: Path, stem: str, *, p12_password: bytes | None = None
    ) -> IssuedFiles:
        """``<stem>.pem`` (certificate), ``<stem>.key`` (PKCS#8, mode 600), ``<stem>.p12``."""
        directory.mkdir(parents=True, exist_ok=True)
        cert_path, key_path, p12_path = (
            directory / f"{stem}{ext}" for ext in (".pem", ".key", ".p12")
        )
        cert_path.write_bytes(self.cert_pem + b"".join(_pem(c) for c in self.chain))
        key_path.touch(mode=0o600)
        key_path.write_bytes(self.key_pem)
        p12_path.touch(mode=0o600)
        p12_path.write_bytes(self.pkcs12(p12_password))
        return IssuedFiles(cert_path, key_path, p12_path)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class TestCA:
    """A root CA that signs leaf certificates directly."""

    __test__ = False  # not a pytest test class, whatever its name says

    cert: x509.Certificate
    key: PrivateKey
    organization: str
    key_type: KeyType

    @classmethod
    def create(
        cls,
        common_name: str = "Demat Test Root CA",
        *,
        organization: str = "Demat Simulators",
        key_type: KeyType = "ec",
        days: int = 3650,
    ) -> TestCA:
        key = new_key(key_type)
        name = _name(common_name, organization)
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key, organization, key_type)

    @property
    def cert_pem(self) -> bytes:
        return _pem(self.cert)

    def write(self, directory: Path, stem: str = "ca") -> Path:
        """Write the root certificate as ``<stem>.pem``; return its path."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{stem}.pem"
        path.write_bytes(self.cert_pem)
        return path

    def _issue(
        self,
        subject: x509.Name,
        *,
        usage: x509.KeyUsage,
        extended: Sequence[x509.ObjectIdentifier],
        san: Iterable[x509.GeneralName] = (),
        days: int = 825,
    ) -> Issued:
        key = new_key(self.key_type)
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage, critical=True)
            .add_extension(x509.ExtendedKeyUsage(list(extended)), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
        )
        names = list(san)
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return Issued(builder.sign(self.key, hashes.SHA256()), key)

    def issue_signing(self, common_name: str, *, email: str | None = None) -> Issued:
        """A document-signing certificate (digitalSignature + nonRepudiation)."""
        usage = x509.KeyUsage(
            digital_signature=True,
            content_commitment=True,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=False,
            crl_sign=False,
            encipher_only=False,
            decipher_only=False,
        )
        san = [x509.RFC822Name(email)] if email else []
        return self._issue(
            _name(common_name, self.organization),
            usage=usage,
            extended=[ExtendedKeyUsageOID.EMAIL_PROTECTION],
            san=san,
        )

    def issue_tls_server(self, hosts: Iterable[str] = ("127.0.0.1", "localhost")) -> Issued:
        """A TLS server certificate whose SAN lists ``hosts`` (IP addresses or DNS names)."""
        hosts = list(hosts)
        san: list[x509.GeneralName] = []
        for host in hosts:
            try:
                san.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                san.append(x509.DNSName(host))
        return self._issue(
            _name(hosts[0] if hosts else "localhost", self.organization),
            usage=_tls_usage(),
            extended=[ExtendedKeyUsageOID.SERVER_AUTH],
            san=san,
        )

    def issue_client(self, common_name: str) -> Issued:
        """A TLS client certificate (for peers that authenticate callers by certificate)."""
        return self._issue(
            _name(common_name, self.organization),
            usage=_tls_usage(),
            extended=[ExtendedKeyUsageOID.CLIENT_AUTH],
        )


def _tls_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=True,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
