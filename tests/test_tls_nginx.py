"""Through a real nginx on loopback, with real certificates and curl (SPEC.md section 7)."""

import datetime as dt
import json
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from rest_framework.test import APIClient

from connector.models import ClientCA, Event, User
from connector.services import create_connector
from devices import services as device_services
from devices.models import Device
from provisioning.tlsstack import nginx_config
from tests.certs import key_pem, make_cert, openssl_self_signed, pem
from tests.conftest import PASSWORD, basic, free_port, require


@pytest.fixture
def connector_tls(live_server, transactional_db, tmp_path):
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    require(Path(nginx).exists(), "nginx is not installed (apt install nginx-light)")
    require(shutil.which("curl") is not None, "curl is not installed")
    user = User.objects.create_user("tls@example.com", PASSWORD)
    connector = create_connector(user, "TLS")
    connector.auth_type, connector.id_type, connector.id_length = "certificate", "base10", 8
    connector.save()
    port = free_port()
    upstream = f"127.0.0.1:{urlsplit(live_server.url).port}"
    config = nginx_config(
        tmp_path,
        listen=f"127.0.0.1:{port}",
        upstream=upstream,
        device_domain="localhost",
        names=["localhost", f"{connector.id}.localhost"],
    )
    started = subprocess.run([nginx, "-c", str(config)], capture_output=True, text=True)
    assert started.returncode == 0, started.stderr
    try:
        yield connector, f"https://{connector.id}.localhost:{port}", tmp_path
    finally:
        subprocess.run([nginx, "-c", str(config), "-s", "stop"], capture_output=True)


def curl(base_dir: Path, url: str, *args: str, cert=None, key=None) -> tuple[int, str]:
    command = [
        "curl",
        "-sS",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        "--cacert",
        str(base_dir / "ca.pem"),
        url,
        *args,
    ]
    if cert is not None:
        (base_dir / "dev-cert.pem").write_text(cert)
        (base_dir / "dev-key.pem").write_text(key)
        command += [
            "--cert",
            str(base_dir / "dev-cert.pem"),
            "--key",
            str(base_dir / "dev-key.pem"),
        ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    body, _, status = result.stdout.rpartition("\n")
    return int(status), body


def test_tutorial_self_signed_certificate_through_nginx(connector_tls):
    from tests.conftest import define

    connector, base, folder = connector_tls
    define(connector, "myalias")
    device_services.whitelist_device(connector, "00000002")
    cert, key = openssl_self_signed(folder, "00000002")
    status, _ = curl(folder, f"{base}/onep:v1/stack/alias", "-d", "myalias=55", cert=cert, key=key)
    assert status == 204
    assert list(Event.objects.filter(identity="00000002").values_list("type", flat=True))[-2:] == [
        "provisioned",
        "data_in",
    ]
    status, body = curl(folder, f"{base}/onep:v1/stack/alias?myalias", cert=cert, key=key)
    assert (status, body) == (200, "myalias=55")
    assert Device.objects.get().activity.last_ip == "127.0.0.1"


def test_long_poll_through_nginx_with_a_client_certificate(connector_tls):
    """The poll waits behind nginx (the template's timeouts) and a device write wakes it."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.conftest import define
    from tests.test_long_poll import wait_for_waiters

    connector, base, folder = connector_tls
    define(connector, "myalias")
    device_services.whitelist_device(connector, "00000005")
    cert, key = openssl_self_signed(folder, "00000005")
    url = f"{base}/onep:v1/stack/alias"
    assert curl(folder, url, "-d", "myalias=1", cert=cert, key=key)[0] == 204
    poll = ("-H", "Request-Timeout: 20000")
    with ThreadPoolExecutor(1) as pool:
        polling = pool.submit(curl, folder, f"{url}?myalias", *poll, cert=cert, key=key)
        wait_for_waiters(1)
        assert curl(folder, url, "-d", "myalias=2", cert=cert, key=key)[0] == 204
        assert polling.result(timeout=20) == (200, "myalias=2")
    status, body = curl(folder, f"{url}?myalias", "-H", "Request-Timeout: 300", cert=cert, key=key)
    assert (status, body) == (304, "")


def test_whitelisted_certificate_mismatch_and_self_registration(connector_tls):
    connector, base, folder = connector_tls
    expected, _ = make_cert("00000003")
    device_services.whitelist_device(connector, "00000003", cert_pem=pem(expected))
    impostor, impostor_key = make_cert("00000003")
    assert (
        curl(
            folder,
            f"{base}/onep:v1/stack/alias",
            "-d",
            "a=1",
            cert=pem(impostor),
            key=key_pem(impostor_key),
        )[0]
        == 401
    )
    newcomer, newcomer_key = make_cert("00000009")
    assert (
        curl(
            folder,
            f"{base}/onep:v1/stack/alias",
            "-d",
            "a=1",
            cert=pem(newcomer),
            key=key_pem(newcomer_key),
        )[0]
        == 401
    )
    connector.presenter_identity = True
    connector.save()
    assert (
        curl(
            folder,
            f"{base}/onep:v1/stack/alias",
            "-d",
            "a=1",
            cert=pem(newcomer),
            key=key_pem(newcomer_key),
        )[0]
        == 204
    )


def test_ca_signed_certificate_sent_with_its_ca_and_another_ca(connector_tls):
    connector, base, folder = connector_tls
    ca_cert, ca_key = make_cert("Factory CA", ca=True)
    connector.pki_enabled = True
    connector.save()
    ClientCA.objects.create(
        connector=connector,
        pem=pem(ca_cert),
        fingerprint="a" * 64,
        subject="CN=Factory CA",
        not_after=ca_cert.not_valid_after_utc,
    )
    leaf, leaf_key = make_cert("00000010", issuer_cert=ca_cert, issuer_key=ca_key)
    status, _ = curl(
        folder,
        f"{base}/onep:v1/stack/alias",
        "-d",
        "temp=50",
        cert=pem(leaf) + pem(ca_cert),
        key=key_pem(leaf_key),
    )
    assert status == 204
    assert Device.objects.get(identity="00000010").status == "provisioned"
    other_ca = make_cert("Other CA", ca=True)
    stranger, stranger_key = make_cert("00000011", issuer_cert=other_ca[0], issuer_key=other_ca[1])
    assert (
        curl(
            folder,
            f"{base}/onep:v1/stack/alias",
            "-d",
            "temp=1",
            cert=pem(stranger) + pem(other_ca[0]),
            key=key_pem(stranger_key),
        )[0]
        == 401
    )


def test_expired_and_not_yet_valid_certificates_reach_the_app_and_get_401(connector_tls):
    connector, base, folder = connector_tls
    connector.presenter_identity = True
    connector.save()
    now = dt.datetime.now(dt.UTC)
    expired, expired_key = make_cert("00000020", not_before=now - dt.timedelta(days=40), days=30)
    future, future_key = make_cert("00000021", not_before=now + dt.timedelta(days=2))
    for cert, key in ((expired, expired_key), (future, future_key)):
        status, _ = curl(
            folder, f"{base}/onep:v1/stack/alias", "-d", "a=1", cert=pem(cert), key=key_pem(key)
        )
        assert status == 401
    reasons = [e.payload["reason"] for e in Event.objects.filter(type="auth_failed")]
    assert any("expired" in r for r in reasons) and any("not valid before" in r for r in reasons)
    assert not Device.objects.exists()


def test_forged_certificate_header_from_a_client_is_ignored(connector_tls):
    connector, base, folder = connector_tls
    device_services.whitelist_device(connector, "00000002")
    cert, _ = make_cert("00000002")
    from urllib.parse import quote

    status, _ = curl(
        folder,
        f"{base}/onep:v1/stack/alias",
        "-d",
        "a=1",
        "-H",
        f"X-SSL-Client-Cert: {quote(pem(cert))}",
    )
    assert status == 401
    assert Device.objects.get().status == "whitelisted"


def test_csr_signed_by_the_local_signer_then_connecting(connector_tls):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509.oid import NameOID

    from tests.certs import new_key

    connector, base, folder = connector_tls
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=basic("tls@example.com"))
    assert (
        api.patch(
            f"/api:1/service/{connector.id}/device2",
            {"pki": {"enabled": True, "vendor": {"name": "local"}}},
            format="json",
        ).status_code
        == 204
    )
    key = new_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "00000030")]))
        .sign(key, hashes.SHA256())
        .public_bytes(Encoding.PEM)
        .decode()
    )
    response = api.put(
        f"/api:1/service/{connector.id}/device2/identity/00000030",
        {"auth": {"type": "csr", "key": csr}},
        format="json",
    )
    certificate = json.loads(response.content)["certificate"]
    connector.refresh_from_db()
    status, _ = curl(
        folder,
        f"{base}/onep:v1/stack/alias",
        "-d",
        "temp=50",
        cert=certificate + connector.signer_ca_pem,
        key=key_pem(key),
    )
    assert status == 204
    assert Device.objects.get().status == "provisioned"
