"""Throttling that stops guessers without locking out the honest (issue #14).

Sign-ins are judged by the failures of their own account (from this address, from
everywhere), devices with passwords by those of their own identity: what others do from the
same address never refuses the right password, a valid token or a valid certificate.
"""

import datetime as dt

import pytest
import time_machine
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from connector.models import Event, EventType, User
from devices import services as device_services
from provisioning.models import AuthFailure, GuessFailure
from tests.conftest import PASSWORD, basic
from tests.device_client import DeviceClient
from tests.device_client import basic as device_basic

API = "/api:1/connector/"
HERE, THERE, ELSEWHERE = "198.51.100.20", "203.0.113.30", "192.0.2.40"
NOON = dt.datetime(2026, 6, 1, 12, 0, 5, tzinfo=dt.UTC)


@pytest.fixture
def frozen():
    with time_machine.travel(NOON, tick=False) as traveller:
        yield traveller


def api_from(ip: str, email: str, password: str = PASSWORD):
    client = APIClient(REMOTE_ADDR=ip)
    client.credentials(HTTP_AUTHORIZATION=basic(email, password))
    return client.get(API)


def token_from(ip: str, email: str, password: str = PASSWORD):
    client = APIClient(REMOTE_ADDR=ip)
    return client.post("/api:1/token/", {"email": email, "password": password}, format="json")


def page_from(ip: str, email: str, password: str = PASSWORD):
    return Client(REMOTE_ADDR=ip).post(reverse("login"), {"username": email, "password": password})


def guess(ip: str, email: str, times: int) -> list[int]:
    return [api_from(ip, email, f"guess {n}").status_code for n in range(times)]


# --- Sign-in ----------------------------------------------------------------------------------


def test_an_account_guessed_from_an_address_is_429_there_on_every_way_in(frozen, alice, settings):
    settings.SIGNIN_FAILURE_LIMIT = 3
    assert guess(HERE, alice.email, 4) == [401, 401, 401, 429]
    refused = api_from(HERE, alice.email)  # the right password: not even checked
    assert refused.status_code == 429
    assert 0 < int(refused["Retry-After"]) <= settings.SIGNIN_FAILURE_WINDOW
    assert "Too many failed sign-ins" in refused.json()["detail"]
    token = token_from(HERE, alice.email)
    assert token.status_code == 429 and token["Retry-After"] == refused["Retry-After"]
    page = page_from(HERE, alice.email)
    assert page.status_code == 429 and page["Retry-After"]
    assert "Too many failed sign-ins for this account from your address" in page.content.decode()
    # From another address the owner gets in.
    assert api_from(THERE, alice.email).status_code == 200


def test_the_right_password_is_never_refused_where_only_other_accounts_failed(
    frozen, alice, bob, settings
):
    settings.SIGNIN_FAILURE_LIMIT = 3
    settings.SIGNIN_ADDRESS_FAILURE_LIMIT = 6
    for victim in ("alice@example.com", "carol@example.com", "nobody@example.com"):
        guess(HERE, victim, 5)
    assert AuthFailure.objects.get(connector_id="@accounts", ip=HERE).count >= 6
    # Bob never failed from here: every way in works, with the address far over its limit.
    assert api_from(HERE, bob.email).status_code == 200
    assert token_from(HERE, bob.email).status_code == 201
    assert page_from(HERE, bob.email).status_code == 302


def test_an_address_over_its_limit_gets_one_try_per_account(frozen, alice, bob, settings):
    settings.SIGNIN_FAILURE_LIMIT = 5
    settings.SIGNIN_ADDRESS_FAILURE_LIMIT = 4
    guess(HERE, "someone@example.com", 4)  # the address is now over its limit
    assert api_from(HERE, bob.email, "one wrong try").status_code == 401
    assert api_from(HERE, bob.email).status_code == 429  # no second try from here
    assert api_from(HERE, alice.email).status_code == 200  # alice had no try yet


def test_distributed_guessing_locks_an_account_except_where_its_owner_signs_in(
    frozen, alice, settings
):
    settings.SIGNIN_FAILURE_LIMIT = 5
    settings.SIGNIN_ACCOUNT_FAILURE_LIMIT = 6
    assert api_from(THERE, alice.email).status_code == 200  # the owner's usual address
    for n in range(6):
        guess(f"203.0.113.{100 + n}", alice.email, 1)
    assert api_from(ELSEWHERE, alice.email).status_code == 429  # a new address: refused
    assert api_from(THERE, alice.email).status_code == 200  # where the owner signed in
    assert page_from(THERE, alice.email).status_code == 302


def test_sign_in_works_again_after_the_window(alice, settings):
    settings.SIGNIN_FAILURE_LIMIT = 2
    with time_machine.travel(NOON, tick=False):
        guess(HERE, alice.email, 2)
        assert api_from(HERE, alice.email).status_code == 429
    later = NOON + dt.timedelta(seconds=settings.SIGNIN_FAILURE_WINDOW)
    with time_machine.travel(later, tick=False):
        assert api_from(HERE, alice.email).status_code == 200


def test_no_email_or_guess_is_kept_in_clear(frozen, alice):
    guess(HERE, alice.email, 2)
    subjects = list(GuessFailure.objects.values_list("subject", flat=True))
    assert subjects and all("alice" not in s and len(s) == 40 for s in subjects)


# --- Sign-up ----------------------------------------------------------------------------------


NEW_PASSPHRASE = "a brand new passphrase"


def sign_up(client: Client, email: str, password: str = NEW_PASSPHRASE):
    return client.post(
        reverse("signup"), {"email": email, "password1": password, "password2": password}
    )


def test_sign_up_answers_the_same_whether_or_not_the_email_has_an_account(alice):
    new = sign_up(Client(REMOTE_ADDR=HERE), "new@example.com")
    taken = sign_up(Client(REMOTE_ADDR=THERE), "ALICE@example.com")
    assert new.status_code == taken.status_code == 302
    assert new["Location"].replace("new%40", "X") == taken["Location"].replace("alice%40", "X")
    assert User.objects.count() == 2  # alice and new; alice's password is untouched
    assert User.objects.get(email="alice@example.com").check_password(PASSWORD)
    follow = Client(REMOTE_ADDR=HERE)
    page = sign_up(follow, "other@example.com")
    landing = follow.get(page["Location"])
    html = landing.content.decode()
    assert "Your account is ready" in html and 'value="other@example.com"' in html
    assert "already" not in html


def test_sign_up_is_throttled_per_address(db, frozen, settings):
    settings.SIGNUP_LIMIT_PER_HOUR = 2
    client = Client(REMOTE_ADDR=HERE)
    assert [sign_up(client, f"u{n}@example.com").status_code for n in range(2)] == [302, 302]
    refused = sign_up(client, "u9@example.com")
    assert refused.status_code == 429 and 0 < int(refused["Retry-After"]) <= 3600
    assert "Too many sign-ups from your address" in refused.content.decode()
    assert not User.objects.filter(email="u9@example.com").exists()
    assert sign_up(Client(REMOTE_ADDR=THERE), "u9@example.com").status_code == 302


# --- Devices ----------------------------------------------------------------------------------


@pytest.fixture
def line(connector):
    connector.auth_type = "password"
    connector.save()
    return connector


DEVICE_PASSWORD = "a-password-of-24-bytes!!"


def provisioned(connector, identity: str, ip: str) -> DeviceClient:
    device_services.whitelist_device(connector, identity)
    client = DeviceClient(connector, ip=ip)
    assert client.activate(identity, DEVICE_PASSWORD).status_code == 204
    return client


def write(client: DeviceClient, identity: str, password: str = DEVICE_PASSWORD) -> int:
    auth = device_basic(identity, password)
    return client.post("/onep:v1/stack/alias", "a=1", HTTP_AUTHORIZATION=auth).status_code


def test_an_honest_password_device_keeps_working_beside_a_guesser(frozen, line, settings):
    settings.DEVICE_AUTH_FAILURE_LIMIT = 5
    honest = provisioned(line, "honest-1", HERE)
    provisioned(line, "victim-1", ELSEWHERE)
    guesser = DeviceClient(line, ip=HERE)
    answers, honest_ok = [], 0
    for n in range(40):
        answers.append(write(guesser, "victim-1", f"guess-{n}"))
        answers.append(guesser.write("X" * 40, "a=1").status_code)  # random tokens too
        honest_ok += write(honest, "honest-1") == 204
    assert honest_ok == 40  # every honest write, while its address is far over the limit
    assert answers.count(401) <= 10 and answers[-2:] == [429, 429]


def test_a_password_guessed_from_an_address_is_refused_there_not_where_the_device_lives(
    frozen, line, settings
):
    settings.DEVICE_IDENTITY_FAILURE_LIMIT = 3
    settings.DEVICE_IDENTITY_FAILURE_LIMIT_ALL = 5
    device = provisioned(line, "dev-1", THERE)
    assert write(device, "dev-1") == 204  # seen at THERE
    attacker = DeviceClient(line, ip=HERE)
    assert [write(attacker, "dev-1", f"g{n}") for n in range(4)] == [401, 401, 401, 429]
    assert write(attacker, "dev-1") == 429  # the right password, unchecked, from here
    failed = Event.objects.filter(type=EventType.AUTH_FAILED, identity="dev-1").count()
    assert failed == 3  # each wrong password logged with its identity, the 429s not
    # Other addresses: two more failures reach the identity's limit from everywhere.
    for n in range(2):
        assert write(DeviceClient(line, ip=f"192.0.2.{n + 1}"), "dev-1", "x") == 401
    assert write(DeviceClient(line, ip=ELSEWHERE), "dev-1") == 429  # a new address: refused
    assert write(device, "dev-1") == 204  # where the device was last seen: never


def test_a_device_retrying_its_own_refused_activation_costs_its_neighbours_nothing(
    frozen, line, settings
):
    settings.DEVICE_AUTH_FAILURE_LIMIT = 8
    settings.DEVICE_IDENTITY_FAILURE_LIMIT = 3
    broken = DeviceClient(line, ip=HERE)
    answers = [broken.activate("not-listed", DEVICE_PASSWORD).status_code for _ in range(20)]
    assert answers[:3] == [404] * 3 and set(answers[3:]) == {429}
    assert AuthFailure.objects.get(connector_id=line.pk, ip=HERE).count == 3
    # Its neighbour behind the same address provisions and writes.
    neighbour = provisioned(line, "neighbour-1", HERE)
    assert write(neighbour, "neighbour-1") == 204
    # Enumerating identities is what the address limit stops.
    guesses = [broken.activate(f"guess-{n}", DEVICE_PASSWORD).status_code for n in range(6)]
    assert guesses[-1] == 429
