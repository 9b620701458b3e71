"""Certificate helpers: pure functions over PEM text, no database access.

Every parse failure becomes a `PKIError` whose message can be shown to a person as it is.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

PEM_CERT_RE = re.compile(
    r"-----BEGIN CERTIFICATE-----\s*[A-Za-z0-9+/=\s]*?-----END CERTIFICATE-----", re.S
)


class PKIError(ValueError):
    """A certificate problem, described for the person who supplied it."""


@dataclass(frozen=True)
class CertInfo:
    subject: str
    issuer: str
    common_name: str
    not_before: dt.datetime
    not_after: dt.datetime
    fingerprint: str  # SHA-256, lower-case hex without separators
    is_ca: bool
    pem: str

    @property
    def fingerprint_display(self) -> str:
        return ":".join(self.fingerprint[i : i + 2] for i in range(0, 64, 2)).upper()


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = names[0].value if names else ""
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def cert_info(cert: x509.Certificate) -> CertInfo:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        is_ca = constraints.ca
    except x509.ExtensionNotFound:
        is_ca = False
    return CertInfo(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        common_name=common_name(cert),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        fingerprint=fingerprint(cert),
        is_ca=is_ca,
        pem=cert.public_bytes(Encoding.PEM).decode(),
    )


def load_certificates(text: str) -> list[x509.Certificate]:
    """Parse one or more PEM certificates; raise PKIError naming the problem."""
    if not isinstance(text, str) or not text.strip():
        raise PKIError("No certificate given.")
    if "PRIVATE KEY-----" in text:
        raise PKIError("This contains a private key. Paste only the certificate, never the key.")
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise PKIError(
            "No PEM certificate found: paste the text that begins with -----BEGIN CERTIFICATE-----."
        )
    blocks = PEM_CERT_RE.findall(text)
    if len(blocks) != text.count("-----BEGIN CERTIFICATE-----"):
        raise PKIError("A certificate is cut off or contains characters that are not base64.")
    certs = []
    for number, block in enumerate(blocks, start=1):
        try:
            certs.append(x509.load_pem_x509_certificate(block.encode()))
        except ValueError as exc:
            which = f"Certificate {number}" if len(blocks) > 1 else "The certificate"
            raise PKIError(f"{which} could not be parsed ({exc}).") from exc
    return certs


def check_client_ca(cert: x509.Certificate, now: dt.datetime) -> CertInfo:
    """A certificate that may be used as a connector's client CA."""
    info = cert_info(cert)
    if not info.is_ca:
        raise PKIError(
            f"“{info.subject}” is not a CA certificate (its basicConstraints lack CA:TRUE), "
            "so it cannot sign device certificates."
        )
    if info.not_after < now:
        raise PKIError(f"“{info.subject}” expired on {info.not_after:%Y-%m-%d %H:%M} UTC.")
    return info
