"""DigiCert ONE (Enterprise PKI Manager REST API) as the CSR signer of a connector.

One outbound call: POST {DIGICERT_API_URL}/mpki/api/v1/certificate with the `x-api-key`
header, the profile, the CSR and the validity in months; the answer carries the certificate.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from django.conf import settings

from provisioning import pki

TIMEOUT = 30


class SignerError(Exception):
    """The signing service failed or refused; the message is safe to show (no API key)."""


def _post_json(url: str, body: dict, headers: dict[str, str]) -> tuple[int, dict]:
    """The one outbound HTTP client of the project."""
    request = urllib.request.Request(  # noqa: S310 (https URL from settings)
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Accept": "application/json", **headers},
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:  # noqa: S310
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"{}")
        except ValueError:
            return exc.code, {}
    except (urllib.error.URLError, TimeoutError, ValueError) as exc:
        raise SignerError(f"DigiCert could not be reached ({exc}).") from exc


def sign(csr_pem: str, identity: str, *, profile: str, api_key: str, months: int) -> str:
    """Have DigiCert sign the CSR; returns the device certificate (PEM), checked."""
    url = settings.DIGICERT_API_URL.rstrip("/") + "/mpki/api/v1/certificate"
    body = {
        "profile": {"id": profile},
        "seat": {"seat_id": identity},
        "csr": csr_pem,
        "validity": {"unit": "months", "duration": months},
        "delivery_format": "x509",
        "attributes": {"subject": {"common_name": identity}},
    }
    status, answer = _post_json(url, body, {"x-api-key": api_key})
    if status >= 400 or "certificate" not in answer:
        error = answer.get("error") or (answer.get("errors") or [{}])[0]
        message = error.get("message") if isinstance(error, dict) else None
        raise SignerError(f"DigiCert refused the request ({status}): {message or 'no reason'}")
    try:
        cert = pki.load_certificates(answer["certificate"])[0]
    except pki.PKIError as exc:
        raise SignerError(f"DigiCert answered with an unreadable certificate ({exc}).") from exc
    csr = pki.load_csr(csr_pem)
    if pki.common_name(cert) != identity or cert.public_key() != csr.public_key():
        raise SignerError("DigiCert's certificate does not match the request.")
    return pki.cert_info(cert).pem
