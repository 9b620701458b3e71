"""Certificate helpers: pure functions over PEM text, no database access.

Every parse failure becomes a `PKIError` whose message can be shown to a person as it is.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger(__name__)

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
            log.info("certificate not parsed: %s", exc)  # the library's words, for operators
            raise PKIError(
                f"{which} could not be parsed: it is not a valid X.509 certificate in PEM form."
            ) from exc
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


# --- Device certificates, chains, CSRs and a local signer -------------------------------------

MIN_RSA_BITS = 2048
MIN_EC_BITS = 256


def check_key_strength(public_key) -> None:
    """Refuse keys too weak to authenticate a device."""
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < MIN_RSA_BITS:
            raise PKIError(
                f"The RSA key has {public_key.key_size} bits; at least {MIN_RSA_BITS} are needed."
            )
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        if public_key.curve.key_size < MIN_EC_BITS:
            raise PKIError(
                f"The EC key uses {public_key.curve.name}; a {MIN_EC_BITS}-bit curve or "
                "larger is needed."
            )
    elif isinstance(public_key, dsa.DSAPublicKey):
        raise PKIError("DSA keys are not accepted; use RSA (2048+ bits), ECDSA or Ed25519.")


def check_validity(cert: x509.Certificate, now: dt.datetime) -> None:
    if now < cert.not_valid_before_utc:
        raise PKIError(
            f"The certificate is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S}"
            " UTC (check the device's clock)."
        )
    if now > cert.not_valid_after_utc:
        raise PKIError(f"The certificate expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC.")


def check_client_certificate(cert: x509.Certificate, now: dt.datetime) -> CertInfo:
    """A certificate a device may authenticate with: in its validity period, strong key."""
    check_validity(cert, now)
    check_key_strength(cert.public_key())
    return cert_info(cert)


def verify_chain(
    leaf: x509.Certificate,
    intermediates: list[x509.Certificate],
    roots: list[x509.Certificate],
    now: dt.datetime,
) -> list[x509.Certificate]:
    """Verify `leaf` up to one of `roots` (the connector's client CAs), using intermediates
    the device sent or the connector stores. Device certificates need no SubjectAltName: the
    identity is their CN. Returns the verified chain, leaf first."""
    if not roots:
        raise PKIError("The connector has no client CA to verify the certificate against.")
    if leaf.version == x509.Version.v1:
        return _verify_v1_leaf(leaf, roots, now)
    # Device certificates from factory tooling (e.g. `openssl x509 -req`) often carry neither
    # a SubjectAltName nor an AuthorityKeyIdentifier; both are optional here.
    agnostic = verification.Criticality.AGNOSTIC
    ee_policy = (
        verification.ExtensionPolicy.webpki_defaults_ee()
        .may_be_present(x509.SubjectAlternativeName, agnostic, None)
        .may_be_present(x509.AuthorityKeyIdentifier, agnostic, None)
    )
    verifier = (
        verification.PolicyBuilder()
        .store(verification.Store(roots))
        .time(now)
        .extension_policies(
            ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(), ee_policy=ee_policy
        )
        .build_client_verifier()
    )
    try:
        return verifier.verify(leaf, intermediates).chain
    except verification.VerificationError as exc:
        log.info("certificate chain refused: %s", exc)  # the library's words, for operators
        raise PKIError(
            "The certificate does not chain to a client CA of this connector, or its chain"
            " is not valid for client authentication."
        ) from exc


def _verify_v1_leaf(leaf, roots, now) -> list[x509.Certificate]:
    """`openssl x509 -req` without an extensions file makes X.509 v1 certificates, which the
    path validator refuses outright. Factories do this (it is the tutorial's way), so a v1
    device certificate is accepted when a client CA signed it directly and it is in date."""
    check_validity(leaf, now)
    for root in roots:
        try:
            leaf.verify_directly_issued_by(root)
        except (ValueError, TypeError, InvalidSignature):
            continue
        check_validity(root, now)
        return [leaf, root]
    raise PKIError("The certificate does not chain to a client CA of this connector.")


def load_csr(text: str) -> x509.CertificateSigningRequest:
    if not isinstance(text, str) or "-----BEGIN CERTIFICATE REQUEST-----" not in text:
        raise PKIError(
            "No PEM certificate signing request found: it begins with "
            "-----BEGIN CERTIFICATE REQUEST-----."
        )
    try:
        csr = x509.load_pem_x509_csr(text.strip().encode())
    except ValueError as exc:
        log.info("CSR not parsed: %s", exc)  # the library's words, for operators
        raise PKIError(
            "The CSR could not be parsed: it is not a valid PKCS #10 request in PEM form."
        ) from exc
    if not csr.is_signature_valid:
        raise PKIError("The CSR's signature does not verify: it was altered or is corrupt.")
    check_key_strength(csr.public_key())
    return csr


def csr_common_name(csr: x509.CertificateSigningRequest) -> str:
    names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = names[0].value if names else ""
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def new_ca(name: str, now: dt.datetime, years: int = 10):
    """A connector's own CA (the local signer): an EC P-256 key and a self-signed certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365 * years))
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
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def sign_csr(
    csr: x509.CertificateSigningRequest,
    ca_cert: x509.Certificate,
    ca_key,
    now: dt.datetime,
    months: int = 12,
) -> x509.Certificate:
    """Issue a device certificate for a checked CSR: CN kept, clientAuth, not a CA."""
    not_after = min(now + dt.timedelta(days=31 * months), ca_cert.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(ca_cert.subject)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    return builder.sign(ca_key, hashes.SHA256())


def private_key_pem(key) -> str:
    return key.private_bytes(
        Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def load_private_key(pem: str):
    try:
        return serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise PKIError("The private key could not be read (PEM, unencrypted).") from exc
