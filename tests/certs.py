"""Certificates for tests, made with `cryptography` (no files, no network)."""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID


def new_key(kind: str = "ec"):
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def make_cert(
    cn: str,
    *,
    key=None,
    issuer_cert: x509.Certificate | None = None,
    issuer_key=None,
    ca: bool = False,
    not_before: dt.datetime | None = None,
    days: int = 365,
):
    """A certificate for `cn`, self-signed unless an issuer is given. Returns (cert, key)."""
    key = key or new_key()
    now = dt.datetime.now(dt.UTC)
    not_before = not_before or now - dt.timedelta(minutes=5)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test Factory"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject if issuer_cert else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
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
    cert = builder.sign(issuer_key or key, hashes.SHA256())
    return cert, key


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def key_pem(key) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def openssl_self_signed(
    folder, cn: str, key_name: str = "device-key.pem", cert_name: str = "device-cert.pem"
) -> tuple[str, str]:
    """The tutorial's own command for a device certificate; returns (cert PEM, key PEM)."""
    import subprocess

    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-nodes",
            "-days",
            "365",
            "-sha256",
            "-subj",
            f"/C=US/ST=MN/L=Mpls/O=Exosite/CN={cn}",
            "-newkey",
            "rsa:2048",
            "-keyout",
            str(folder / key_name),
            "-out",
            str(folder / cert_name),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return (folder / cert_name).read_text(), (folder / key_name).read_text()
