"""A local TLS front for development and tests: server CA, server certificate, nginx config.

curl refuses a `*.localhost` wildcard, so the server certificate names every connector's
device host explicitly; re-run after creating connectors.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path
from string import Template

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from provisioning.pki import Encoding, load_certificates, load_private_key, new_ca, private_key_pem

TEMPLATE = (
    Path(__file__).resolve().parent.parent / "deploy" / "nginx" / "iot-connector.conf.template"
)


def server_ca(folder: Path):
    """The local server CA (created once); give `ca.pem` to curl as --cacert."""
    cert_path, key_path = folder / "ca.pem", folder / "ca.key"
    if cert_path.exists() and key_path.exists():
        return load_certificates(cert_path.read_text())[0], load_private_key(key_path.read_text())
    cert, key = new_ca("IoT Connector local server CA", dt.datetime.now(dt.UTC))
    key_path.write_text(private_key_pem(key))
    key_path.chmod(0o600)
    cert_path.write_bytes(cert.public_bytes(Encoding.PEM))
    return cert, key


def server_certificate(folder: Path, names: list[str]) -> tuple[Path, Path]:
    """A server certificate for `names` (host names or IP addresses), signed by the local CA."""
    ca_cert, ca_key = server_ca(folder)
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = folder / "server.pem", folder / "server.key"
    # Each file replaced whole: a server re-reading them (the MQTT listener) never sees half.
    _replace(key_path, private_key_pem(key).encode(), 0o600)
    _replace(cert_path, cert.public_bytes(Encoding.PEM), 0o644)
    return cert_path, key_path


def _replace(path: Path, data: bytes, mode: int) -> None:
    partial = path.with_name(path.name + ".new")
    partial.write_bytes(data)
    partial.chmod(mode)
    os.replace(partial, path)


def nginx_config(
    folder: Path, *, listen: str, upstream: str, device_domain: str, names: list[str]
) -> Path:
    """A complete nginx.conf that runs as the current user with everything under `folder`."""
    cert_path, key_path = server_certificate(folder, names)
    server = Template(TEMPLATE.read_text()).safe_substitute(
        LISTEN=listen,
        UPSTREAM=upstream,
        SERVER_NAMES=" ".join(n for n in names if not _is_ip(n)),
        CERTIFICATE=cert_path,
        CERTIFICATE_KEY=key_path,
        DEVICE_DOMAIN=device_domain,
    )
    (folder / "tmp").mkdir(exist_ok=True)
    config = folder / "nginx.conf"
    config.write_text(
        f"daemon on;\npid {folder / 'nginx.pid'};\nerror_log {folder / 'error.log'} warn;\n"
        "worker_processes 1;\nevents { worker_connections 1024; }\nhttp {\n"
        f"  access_log {folder / 'access.log'};\n"
        f"  client_body_temp_path {folder / 'tmp'};\n  proxy_temp_path {folder / 'tmp'};\n"
        f"  fastcgi_temp_path {folder / 'tmp'};\n  uwsgi_temp_path {folder / 'tmp'};\n"
        f"  scgi_temp_path {folder / 'tmp'};\n" + server + "\n}\n"
    )
    return config


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
