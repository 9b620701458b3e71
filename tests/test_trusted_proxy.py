"""Forwarded headers are believed only from TRUSTED_PROXIES."""

import ipaddress

import pytest
from django.http import HttpResponse
from django.test import RequestFactory

from iotconnector.middleware import TrustedProxyMiddleware


def seen(peer: str, **headers):
    captured = {}

    def view(request):
        captured.update(request.META)
        captured["secure"] = request.is_secure()
        return HttpResponse()

    request = RequestFactory().get("/", REMOTE_ADDR=peer, **headers)
    TrustedProxyMiddleware(view)(request)
    return captured


FORGED = {
    "HTTP_X_FORWARDED_FOR": "203.0.113.9",
    "HTTP_X_FORWARDED_PROTO": "https",
    "HTTP_X_SSL_CLIENT_CERT": "-----BEGIN%20CERTIFICATE-----",
    "HTTP_X_REAL_IP": "203.0.113.9",
}


def test_untrusted_peer_cannot_forge_address_scheme_or_certificate():
    meta = seen("198.51.100.20", **FORGED)
    assert meta["REMOTE_ADDR"] == "198.51.100.20"
    assert meta["secure"] is False
    for header in FORGED:
        assert header not in meta


def test_trusted_proxy_forwards_client_address_scheme_and_certificate():
    meta = seen("127.0.0.1", **FORGED)
    assert meta["REMOTE_ADDR"] == "203.0.113.9"
    assert meta["PEER_ADDR"] == "127.0.0.1"
    assert meta["secure"] is True
    assert meta["HTTP_X_SSL_CLIENT_CERT"].startswith("-----BEGIN")


def test_client_supplied_forwarded_for_is_not_believed_past_our_proxy():
    # The client sent "X-Forwarded-For: 10.9.9.9"; nginx appended the real address.
    meta = seen("127.0.0.1", HTTP_X_FORWARDED_FOR="10.9.9.9, 203.0.113.9")
    assert meta["REMOTE_ADDR"] == "203.0.113.9"


def test_chain_of_trusted_proxies(settings):
    settings.TRUSTED_PROXIES = [
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("10.0.0.0/8"),
    ]
    meta = seen("127.0.0.1", HTTP_X_FORWARDED_FOR="203.0.113.9, 10.1.1.1")
    assert meta["REMOTE_ADDR"] == "203.0.113.9"


@pytest.mark.parametrize("value", ["garbage", "", "  ,  "])
def test_garbage_forwarded_for_falls_back_to_the_proxy(value):
    assert seen("::1", HTTP_X_FORWARDED_FOR=value)["REMOTE_ADDR"] == "::1"


def test_ipv6_client_through_proxy():
    assert seen("::1", HTTP_X_FORWARDED_FOR="2001:db8::5")["REMOTE_ADDR"] == "2001:db8::5"


def test_the_shipped_default_trusts_no_proxy_not_even_loopback(settings):
    """Unless TRUSTED_PROXIES is set, a local process cannot forge a client certificate or
    HTTPS by talking to the app directly."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "TRUSTED_PROXIES"}
    shipped = subprocess.run(
        [sys.executable, "-c", "from django.conf import settings; print(settings.TRUSTED_PROXIES)"],
        env={**env, "DJANGO_SETTINGS_MODULE": "iotconnector.settings"},
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        check=True,
    )
    assert shipped.stdout.strip() == "[]"
    settings.TRUSTED_PROXIES = []
    meta = seen("127.0.0.1", **FORGED)
    assert meta["secure"] is False
    for header in FORGED:
        assert header not in meta
