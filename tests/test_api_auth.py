"""Management API authentication: HTTP Basic (curl -u) and revocable, expiring tokens."""

import datetime as dt

import pytest
import time_machine
from rest_framework.test import APIClient

from connector.models import ApiToken
from tests.conftest import PASSWORD, basic

URL = "/api:1/connector/"


@pytest.fixture
def anon() -> APIClient:
    return APIClient()


def test_basic_auth_with_email_and_password(api, connector):
    response = api.get(URL)
    assert response.status_code == 200
    assert [c["id"] for c in response.json()] == [connector.id]


def test_basic_auth_email_is_case_insensitive(anon, alice):
    anon.credentials(HTTP_AUTHORIZATION=basic("ALICE@example.com"))
    assert anon.get(URL).status_code == 200


@pytest.mark.parametrize(
    "header",
    [
        None,
        basic("alice@example.com", "wrong password"),
        basic("nobody@example.com"),
        "Basic not-base64!",
        "Bearer something",
        "token",
        "token abc def",
        "token " + "a" * 40,
    ],
)
def test_wrong_or_missing_credentials_are_401(anon, alice, header):
    if header:
        anon.credentials(HTTP_AUTHORIZATION=header)
    response = anon.get(URL)
    assert response.status_code == 401
    assert "WWW-Authenticate" in response


def test_wrong_password_and_unknown_user_look_the_same(anon, alice):
    anon.credentials(HTTP_AUTHORIZATION=basic("alice@example.com", "wrong"))
    wrong = anon.get(URL)
    anon.credentials(HTTP_AUTHORIZATION=basic("ghost@example.com", "wrong"))
    unknown = anon.get(URL)
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()


def test_inactive_user_cannot_use_basic_auth(anon, alice):
    alice.is_active = False
    alice.save()
    anon.credentials(HTTP_AUTHORIZATION=basic(alice.email))
    assert anon.get(URL).status_code == 401


def get_token(client, email="alice@example.com", password=PASSWORD):
    return client.post("/api:1/token/", {"email": email, "password": password}, format="json")


def test_token_flow_issue_use_revoke(anon, alice, connector):
    response = get_token(anon)
    assert response.status_code == 201
    token = response.json()["token"]
    assert len(token) == 40 and token.isalnum()
    stored = ApiToken.objects.get()
    assert token not in stored.digest  # only the keyed hash is stored
    for scheme in ("token", "Token", "TOKEN"):
        anon.credentials(HTTP_AUTHORIZATION=f"{scheme} {token}")
        assert anon.get(URL).status_code == 200
    assert anon.delete("/api:1/token/").status_code == 204
    assert anon.get(URL).status_code == 401


def test_token_request_with_wrong_credentials_is_401_without_hint(anon, alice):
    wrong = get_token(anon, password="nope")
    unknown = get_token(anon, email="ghost@example.com", password="nope")
    missing = anon.post("/api:1/token/", {}, format="json")
    assert wrong.status_code == unknown.status_code == missing.status_code == 401
    assert wrong.json() == unknown.json() == missing.json()
    assert not ApiToken.objects.exists()


def test_token_expires(anon, alice, settings):
    settings.API_TOKEN_LIFETIME_DAYS = 1
    with time_machine.travel(dt.datetime(2026, 6, 1, 12, tzinfo=dt.UTC), tick=False):
        token = get_token(anon).json()["token"]
        anon.credentials(HTTP_AUTHORIZATION=f"token {token}")
        assert anon.get(URL).status_code == 200
    with time_machine.travel(dt.datetime(2026, 6, 2, 12, 1, tzinfo=dt.UTC), tick=False):
        assert anon.get(URL).status_code == 401


def test_token_of_deactivated_user_stops_working(anon, alice):
    token = get_token(anon).json()["token"]
    alice.is_active = False
    alice.save()
    anon.credentials(HTTP_AUTHORIZATION=f"token {token}")
    assert anon.get(URL).status_code == 401


def test_token_survives_pepper_rotation(anon, alice, settings):
    token = get_token(anon).json()["token"]
    settings.TOKEN_PEPPERS = {"2": b"n" * 40, **settings.TOKEN_PEPPERS}
    settings.TOKEN_PEPPER_CURRENT = "2"
    anon.credentials(HTTP_AUTHORIZATION=f"token {token}")
    assert anon.get(URL).status_code == 200
    settings.TOKEN_PEPPERS = {"2": b"n" * 40}
    assert anon.get(URL).status_code == 401


def test_revoking_needs_a_token(api):
    assert api.delete("/api:1/token/").status_code == 400


def test_openapi_description_is_served(anon):
    response = anon.get("/api:1/schema/")
    assert response.status_code == 200
    body = response.content.decode()
    assert "/api:1/service/{connector_id}/device2" in body
    assert "/api:1/token/" in body
