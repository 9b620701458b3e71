"""CSR signing with the connector's local CA, then connecting with the issued certificate."""

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from connector import keys
from connector.models import ClientCA, Event
from devices.models import Device
from tests.certs import new_key
from tests.test_certificate_auth import write


def csr_for(cn: str):
    key = new_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(Encoding.PEM).decode(), key


def settings_url(connector):
    return f"/api:1/service/{connector.id}/device2"


def identity_url(connector, identity):
    return f"/api:1/service/{connector.id}/device2/identity/{identity}"


def enable_local_signer(api, connector):
    response = api.patch(
        settings_url(connector),
        {
            "provisioning": {"auth_type": "certificate"},
            "pki": {"enabled": True, "vendor": {"name": "local"}},
        },
        format="json",
    )
    assert response.status_code == 204, response.content
    connector.refresh_from_db()


def test_local_ca_is_generated_trusted_and_its_key_kept_secret(api, connector):
    enable_local_signer(api, connector)
    assert connector.signer_ca_pem.startswith("-----BEGIN CERTIFICATE-----")
    assert ClientCA.objects.filter(connector=connector).count() == 1
    key_pem = keys.decrypt(connector.signer_key_encrypted)
    assert "PRIVATE KEY" in key_pem and key_pem not in connector.signer_key_encrypted
    body = api.get(settings_url(connector)).content.decode()
    assert "PRIVATE KEY" not in body and connector.signer_key_encrypted not in body
    assert body.count("BEGIN CERTIFICATE") == 2  # the CA: a client CA and the signer
    event = Event.objects.filter(type="settings_changed").last()
    assert "local_ca" in event.payload and "PRIVATE" not in str(event.payload)


def test_csr_is_signed_stored_and_the_device_connects_with_it(api, connector):
    enable_local_signer(api, connector)
    csr, key = csr_for("sensor-7")
    response = api.put(
        identity_url(connector, "sensor-7"), {"auth": {"type": "csr", "key": csr}}, format="json"
    )
    assert response.status_code == 200
    issued = x509.load_pem_x509_certificate(response.json()["certificate"].encode())
    assert issued.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "sensor-7"
    assert issued.public_key().public_numbers() == key.public_key().public_numbers()
    device = Device.objects.get()
    assert device.auth_type == "certificate" and device.cert_pem == response.json()["certificate"]
    assert Event.objects.filter(type="certificate_issued", identity="sensor-7").exists()
    # The device presents the issued certificate (with the CA, as in the tutorial): accepted.
    ca = x509.load_pem_x509_certificate(connector.signer_ca_pem.encode())
    assert write(connector, issued, ca).status_code == 204
    assert Device.objects.get().status == "provisioned"


def test_csr_errors(api, connector):
    csr, _ = csr_for("sensor-8")
    no_signer = api.put(
        identity_url(connector, "sensor-8"), {"auth": {"type": "csr", "key": csr}}, format="json"
    )
    assert no_signer.status_code == 400 and "no CSR signer" in no_signer.json()["auth.type"]
    enable_local_signer(api, connector)
    wrong_cn = api.put(
        identity_url(connector, "sensor-9"), {"auth": {"type": "csr", "key": csr}}, format="json"
    )
    assert wrong_cn.status_code == 400 and "CN is “sensor-8”" in wrong_cn.json()["auth.key"]
    garbage = api.put(
        identity_url(connector, "sensor-8"),
        {"auth": {"type": "csr", "key": "hello"}},
        format="json",
    )
    assert (
        garbage.status_code == 400
        and "No PEM certificate signing request" in garbage.json()["auth.key"]
    )
    missing = api.put(identity_url(connector, "sensor-8"), {"auth": {"type": "csr"}}, format="json")
    assert missing.status_code == 400 and "auth.key" in missing.json()
    assert not Device.objects.exists()
    ok = api.put(
        identity_url(connector, "sensor-8"), {"auth": {"type": "csr", "key": csr}}, format="json"
    )
    assert ok.status_code == 200
    again = api.put(
        identity_url(connector, "sensor-8"), {"auth": {"type": "csr", "key": csr}}, format="json"
    )
    assert again.status_code == 409


def test_factory_cli_enables_a_device_with_a_csr(live_server, transactional_db, tmp_path):
    """scripts/iot-device enable <cn> --auth csr --cred ./<cn>.req.pem, as murano's CLI."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from rest_framework.test import APIClient

    from connector.models import User
    from connector.services import create_connector
    from tests.conftest import PASSWORD, basic

    user = User.objects.create_user("factory@example.com", PASSWORD)
    connector = create_connector(user, "Line")
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=basic(user.email))
    enable_local_signer(api, connector)
    csr, _key = csr_for("00000077")
    (tmp_path / "00000077.req.pem").write_text(csr)
    script = Path(__file__).resolve().parent.parent / "scripts" / "iot-device"
    env = {
        "IOT_URL": live_server.url,
        "IOT_CONNECTOR": connector.id,
        "IOT_EMAIL": user.email,
        "IOT_PASSWORD": PASSWORD,
        "PATH": "/usr/bin:/bin",
    }
    result = subprocess.run(
        [
            sys.executable,
            str(script),
            "enable",
            "00000077",
            "--auth",
            "csr",
            "--cred",
            str(tmp_path / "00000077.req.pem"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    certificate = json.loads(result.stdout)["certificate"]
    assert certificate.startswith("-----BEGIN CERTIFICATE-----")
    assert Device.objects.get(identity="00000077").cert_pem == certificate
    again = subprocess.run(
        [sys.executable, str(script), "enable", "00000077"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert again.returncode == 1 and "already exists" in again.stdout


def test_add_one_device_form_accepts_a_csr(api, browser_client, connector):
    from django.urls import reverse

    enable_local_signer(api, connector)
    csr, _ = csr_for("sensor-11")
    response = browser_client.post(
        reverse("device-add", args=[connector.id]),
        {"identity": "sensor-11", "certificate": csr, "activation_hours": "48"},
    )
    assert response.status_code == 200
    assert "Certificate issued for" in response.content.decode()
    device = Device.objects.get()
    assert device.cert_pem in response.content.decode()
    bad = browser_client.post(
        reverse("device-add", args=[connector.id]),
        {"identity": "sensor-12", "certificate": csr, "activation_hours": "48"},
    )
    assert bad.status_code == 400 and "CN is “sensor-11”" in bad.content.decode()


def test_uploaded_local_ca_signs_and_its_key_is_never_shown(api, browser_client, connector):
    from django.urls import reverse

    from tests.certs import key_pem, make_cert, pem

    ca_cert, ca_key = make_cert("Uploaded CA", ca=True)
    other_cert, _ = make_cert("Other CA", ca=True)
    mismatch = api.patch(
        settings_url(connector),
        {
            "pki": {
                "enabled": True,
                "vendor": {
                    "name": "local",
                    "options": {
                        "ca_certificate": pem(other_cert),
                        "ca_private_key": key_pem(ca_key),
                    },
                },
            }
        },
        format="json",
    )
    assert mismatch.status_code == 400
    assert "does not belong" in mismatch.json()["pki.vendor.options.ca_private_key"]
    half = api.patch(
        settings_url(connector),
        {
            "pki": {
                "enabled": True,
                "vendor": {"name": "local", "options": {"ca_certificate": pem(ca_cert)}},
            }
        },
        format="json",
    )
    assert half.status_code == 400
    ok = api.patch(
        settings_url(connector),
        {
            "pki": {
                "enabled": True,
                "vendor": {
                    "name": "local",
                    "options": {"ca_certificate": pem(ca_cert), "ca_private_key": key_pem(ca_key)},
                },
            }
        },
        format="json",
    )
    assert ok.status_code == 204
    body = api.get(settings_url(connector)).json()
    assert body["pki"]["vendor"] == {"name": "local", "options": {"ca_certificate": pem(ca_cert)}}
    assert pem(ca_cert) in body["pki"]["client_ca"]
    csr, _ = csr_for("sensor-20")
    issued = api.put(
        identity_url(connector, "sensor-20"), {"auth": {"type": "csr", "key": csr}}, format="json"
    ).json()["certificate"]
    assert x509.load_pem_x509_certificate(issued.encode()).issuer == ca_cert.subject
    # The settings page never echoes a private key, not even on a failed save.
    page = browser_client.post(
        reverse("connector-settings", args=[connector.id]),
        {
            "auth_type": "token",
            "activation_period_hours": "0",
            "id_type": "opaque",
            "id_casing": "mixed",
            "pki_enabled": "on",
            "vendor_name": "local",
            "local_ca_key": key_pem(ca_key),
        },
    )
    assert page.status_code == 400 and "PRIVATE KEY" not in page.content.decode()
