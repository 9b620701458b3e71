"""DigiCert as CSR signer, against a local fake of its API (the real one is not reachable)."""

import datetime as dt
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from cryptography import x509

from devices.models import Device
from provisioning import pki
from tests.test_csr_signing import csr_for, identity_url, settings_url

API_KEY = "dc-service-user-token"


class FakeDigiCert(BaseHTTPRequestHandler):
    """Enough of POST /mpki/api/v1/certificate to stand in for DigiCert ONE."""

    ca = pki.new_ca("Fake DigiCert CA", dt.datetime.now(dt.UTC))
    requests: list = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeDigiCert.requests.append(
            {"path": self.path, "key": self.headers.get("x-api-key"), "body": body}
        )
        if self.headers.get("x-api-key") != API_KEY:
            return self._answer(
                401, {"error": {"code": "unauthorized", "message": "Invalid API key"}}
            )
        if self.path != "/mpki/api/v1/certificate" or body["profile"]["id"] != "iot-profile":
            return self._answer(
                400, {"error": {"code": "invalid_profile", "message": "Unknown profile"}}
            )
        csr = pki.load_csr(body["csr"])
        cert = pki.sign_csr(
            csr, *self.ca, dt.datetime.now(dt.UTC), months=body["validity"]["duration"]
        )
        return self._answer(
            201,
            {
                "serial_number": format(cert.serial_number, "x"),
                "certificate": pki.cert_info(cert).pem,
            },
        )

    def _answer(self, status, payload):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_digicert(settings):
    server = HTTPServer(("127.0.0.1", 0), FakeDigiCert)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    settings.DIGICERT_API_URL = f"http://127.0.0.1:{server.server_port}"
    FakeDigiCert.requests = []
    yield FakeDigiCert
    server.shutdown()
    server.server_close()


def use_digicert(api, connector, api_key=API_KEY, profile="iot-profile"):
    ca_pem = pki.cert_info(FakeDigiCert.ca[0]).pem
    response = api.patch(
        settings_url(connector),
        {
            "pki": {
                "enabled": True,
                "client_ca": [ca_pem],
                "vendor": {
                    "name": "digicert",
                    "options": {"profile_name": profile, "api_key": api_key, "validity_months": 6},
                },
            }
        },
        format="json",
    )
    assert response.status_code == 204, response.content


def test_csr_is_signed_by_digicert(api, connector, fake_digicert):
    use_digicert(api, connector)
    csr, key = csr_for("meter-1")
    response = api.put(
        identity_url(connector, "meter-1"), {"auth": {"type": "csr", "key": csr}}, format="json"
    )
    assert response.status_code == 200, response.content
    issued = x509.load_pem_x509_certificate(response.json()["certificate"].encode())
    assert issued.issuer == FakeDigiCert.ca[0].subject
    assert Device.objects.get().cert_pem == response.json()["certificate"]
    sent = fake_digicert.requests[-1]
    assert sent["key"] == API_KEY and sent["body"]["validity"] == {"unit": "months", "duration": 6}
    assert sent["body"]["csr"] == csr and sent["body"]["profile"] == {"id": "iot-profile"}


def test_digicert_refusal_is_502_and_nothing_is_stored(api, connector, fake_digicert):
    use_digicert(api, connector, api_key="wrong-key")
    csr, _ = csr_for("meter-2")
    response = api.put(
        identity_url(connector, "meter-2"), {"auth": {"type": "csr", "key": csr}}, format="json"
    )
    assert response.status_code == 502
    assert "Invalid API key" in response.json()["detail"]
    assert "wrong-key" not in response.content.decode()
    assert not Device.objects.exists()


def test_digicert_unreachable_is_502(api, connector, settings):
    use_digicert(api, connector)
    settings.DIGICERT_API_URL = "http://127.0.0.1:9"  # nothing listens there
    csr, _ = csr_for("meter-3")
    response = api.put(
        identity_url(connector, "meter-3"), {"auth": {"type": "csr", "key": csr}}, format="json"
    )
    assert response.status_code == 502 and "could not be reached" in response.json()["detail"]
