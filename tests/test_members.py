"""Members, invitations, the last owner, scoped API tokens and sign-up modes (issue #18)."""

from __future__ import annotations

import datetime as dt

import pytest
import time_machine
from django.core import mail
from django.core.management import call_command
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from connector import members, services
from connector.models import ApiToken, EventType, Invitation, Membership, User
from devices.models import Device
from tests.conftest import PASSWORD, basic

NOW = dt.datetime(2026, 12, 3, 12, tzinfo=dt.UTC)


def _api(user: User) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=basic(user.email))
    return client


def _join(user: User, connector, role: str) -> Membership:
    return Membership.objects.create(user=user, connector=connector, role=role)


def _token(email: str, **scope) -> dict:
    response = APIClient().post(
        "/api:1/token/", {"email": email, "password": PASSWORD, **scope}, format="json"
    )
    return {"status": response.status_code, **response.json()}


def _with_token(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"token {token}")
    return client


# --- members API -----------------------------------------------------------------------------


def test_member_list_and_invitation_through_the_api(alice, bob, connector):
    api = _api(alice)
    assert api.get(f"/api:1/connector/{connector.pk}/member").json() == [
        {"email": "alice@example.com", "role": "owner"}
    ]
    response = api.post(
        f"/api:1/connector/{connector.pk}/invitation",
        {"email": "Carol@Example.com", "role": "operator"},
        format="json",
    )
    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"url", "expires"}
    token = body["url"].rstrip("/").rsplit("/", 1)[1]
    assert body["url"] == f"http://testserver/invitation/{token}/"
    invitation = Invitation.objects.get(connector=connector)
    assert invitation.email == "carol@example.com" and invitation.role == "operator"
    assert token not in invitation.digest  # only the keyed hash is stored
    event = connector.events.get(type=EventType.MEMBER_INVITED)
    assert event.actor_email == "alice@example.com" and token not in str(event.payload)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": "not-an-address", "role": "viewer"}, "email"),
        ({"email": "c@example.com", "role": "superuser"}, "role"),
        ({"email": "c@example.com"}, "role"),
        ({"email": "c@example.com", "role": "viewer", "extra": 1}, "extra"),
        ({"role": "viewer"}, "email"),
    ],
)
def test_bad_invitations_are_refused_naming_the_field(alice, connector, body, field):
    response = _api(alice).post(f"/api:1/connector/{connector.pk}/invitation", body, format="json")
    assert response.status_code == 400 and field in response.json()
    assert not Invitation.objects.exists()


def test_inviting_a_member_again_is_a_conflict(alice, bob, connector):
    _join(bob, connector, "viewer")
    response = _api(alice).post(
        f"/api:1/connector/{connector.pk}/invitation",
        {"email": "bob@example.com", "role": "admin"},
        format="json",
    )
    assert response.status_code == 409


def test_invitation_is_used_once_by_the_invited_address_only(alice, bob, connector):
    invited = members.invite(connector, alice, "bob@example.com", "operator", link_for=str)
    url = f"/invitation/{invited.token}/"
    carol = User.objects.create_user("carol@example.com", PASSWORD)
    other = Client()
    other.force_login(carol)
    assert other.post(url).status_code == 403  # signed in as someone else
    assert not Membership.objects.filter(user=carol, connector=connector).exists()
    client = Client()
    client.force_login(bob)
    page = client.get(url)
    assert page.status_code == 200 and "Accept and join" in page.content.decode()
    response = client.post(url)
    assert response.status_code == 302 and response.url == f"/c/{connector.pk}/"
    assert Membership.objects.get(user=bob, connector=connector).role == "operator"
    joined = connector.events.get(type=EventType.MEMBER_JOINED)
    assert joined.actor_email == "bob@example.com" and joined.payload["role"] == "operator"
    assert client.post(url).status_code == 404  # once
    assert client.get(url).status_code == 404


def test_invitation_expires(db):
    with time_machine.travel(NOW, tick=False):
        alice = User.objects.create_user("alice@example.com", PASSWORD)
        bob = User.objects.create_user("bob@example.com", PASSWORD)
        connector = services.create_connector(alice, "Line")
        invited = members.invite(connector, alice, "bob@example.com", "viewer", link_for=str)
        client = Client()
        client.force_login(bob)
    with time_machine.travel(NOW + dt.timedelta(hours=7 * 24, seconds=-1), tick=False):
        assert client.get(f"/invitation/{invited.token}/").status_code == 200
    with time_machine.travel(NOW + dt.timedelta(hours=7 * 24), tick=False):
        assert client.post(f"/invitation/{invited.token}/").status_code == 404
        assert not Membership.objects.filter(user=bob).exists()


def test_a_new_invitation_replaces_the_earlier_one_and_revoking_ends_it(alice, connector):
    first = members.invite(connector, alice, "bob@example.com", "viewer", link_for=str)
    second = members.invite(connector, alice, "bob@example.com", "admin", link_for=str)
    assert members.find_invitation(first.token) is None
    assert members.find_invitation(second.token).role == "admin"
    client = Client()
    client.force_login(alice)
    response = client.post(
        f"/c/{connector.pk}/invitations/{second.invitation.pk}/revoke/", follow=True
    )
    assert "Invitation revoked" in response.content.decode()
    assert members.find_invitation(second.token) is None
    assert connector.events.filter(type=EventType.INVITATION_REVOKED).count() == 1


def test_invitation_is_emailed_when_email_is_configured(settings, alice, connector):
    settings.EMAIL_CONFIGURED = True
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    client = Client()
    client.force_login(alice)
    response = client.post(
        f"/c/{connector.pk}/members/invite/", {"email": "bob@example.com", "role": "viewer"}
    )
    assert response.status_code == 302
    (message,) = mail.outbox
    assert message.to == ["bob@example.com"]
    link = next(line for line in message.body.splitlines() if "/invitation/" in line)
    token = link.rstrip("/").rsplit("/", 1)[1]
    assert members.find_invitation(token).email == "bob@example.com"


def test_without_email_the_link_is_shown_once_on_the_members_page(alice, connector):
    client = Client()
    client.force_login(alice)
    response = client.post(
        f"/c/{connector.pk}/members/invite/", {"email": "bob@example.com", "role": "viewer"}
    )
    assert response.status_code == 201
    page = response.content.decode()
    start = page.index('id="invitation-link"')
    link = page[start:].split('value="', 1)[1].split('"', 1)[0]
    token = link.rstrip("/").rsplit("/", 1)[1]
    assert members.find_invitation(token) is not None
    assert token not in client.get(f"/c/{connector.pk}/members/").content.decode()


# --- the last owner -----------------------------------------------------------------------


def test_last_owner_cannot_leave_or_be_demoted(alice, bob, connector):
    _join(bob, connector, "admin")
    api = _api(alice)
    base = f"/api:1/connector/{connector.pk}/member"
    response = api.patch(f"{base}/alice@example.com", {"role": "admin"}, format="json")
    assert response.status_code == 409 and "last owner" in response.json()["detail"]
    assert api.delete(f"{base}/alice@example.com").status_code == 409
    client = Client()
    client.force_login(alice)
    page = client.post(f"/c/{connector.pk}/members/leave/", follow=True).content.decode()
    assert "last owner" in page
    assert Membership.objects.get(user=alice, connector=connector).role == "owner"
    # With a second owner, the first may step down, then leave.
    assert api.patch(f"{base}/bob@example.com", {"role": "owner"}, format="json").status_code == 204
    assert (
        api.patch(f"{base}/alice@example.com", {"role": "viewer"}, format="json").status_code == 204
    )
    assert _api(alice).delete(f"{base}/alice@example.com").status_code == 204
    assert list(connector.memberships.values_list("user__email", "role")) == [
        ("bob@example.com", "owner")
    ]
    changes = connector.events.filter(type=EventType.MEMBER_ROLE_CHANGED).order_by("id")
    assert [(e.payload["email"], e.payload["to"]) for e in changes] == [
        ("bob@example.com", "owner"),
        ("alice@example.com", "viewer"),
    ]
    removed = connector.events.get(type=EventType.MEMBER_REMOVED)
    assert removed.payload["left"] is True and removed.actor_email == "alice@example.com"


def test_anyone_may_leave_but_only_owners_remove_others(alice, bob, connector):
    carol = User.objects.create_user("carol@example.com", PASSWORD)
    _join(bob, connector, "admin")
    _join(carol, connector, "viewer")
    base = f"/api:1/connector/{connector.pk}/member"
    assert _api(bob).delete(f"{base}/carol@example.com").status_code == 403
    assert _api(carol).delete(f"{base}/carol@example.com").status_code == 204
    assert _api(alice).delete(f"{base}/bob@example.com").status_code == 204
    assert _api(alice).delete(f"{base}/nobody@example.com").status_code == 404
    assert list(connector.memberships.values_list("user__email", flat=True)) == [
        "alice@example.com"
    ]
    # The former member's connector is now a 404, like any other's.
    assert _api(bob).get(f"/api:1/connector/{connector.pk}").status_code == 404


def test_removing_a_member_revokes_their_tokens_for_that_connector(alice, bob, connector):
    _join(bob, connector, "operator")
    scoped = _token("bob@example.com", connector=connector.pk, role="operator")
    assert scoped["status"] == 201
    client = _with_token(scoped["token"])
    assert client.get(f"/api:1/service/{connector.pk}/device2/identity/").status_code == 200
    _api(alice).delete(f"/api:1/connector/{connector.pk}/member/bob@example.com")
    assert client.get(f"/api:1/service/{connector.pk}/device2/identity/").status_code == 401
    assert ApiToken.objects.get(user=bob).revoked_at is not None


# --- scoped tokens --------------------------------------------------------------------------


def test_a_factory_token_whitelists_devices_and_nothing_else(alice, connector):
    other = services.create_connector(alice, "Other line")
    found = _token("alice@example.com", connector=connector.pk, role="operator", name="line 2")
    assert found["status"] == 201
    client = _with_token(found["token"])
    base = f"/api:1/service/{connector.pk}/device2"
    assert client.put(f"{base}/identity/00000001", {}, format="json").status_code == 204
    assert Device.objects.filter(connector=connector, identity="00000001").exists()
    csv = b"id\n00000002\n00000003\n"
    from django.core.files.uploadedfile import SimpleUploadedFile

    imported = client.post(f"{base}/identities", {"identities": SimpleUploadedFile("ids.csv", csv)})
    assert imported.status_code == 200 and imported.json()["created"] == 2
    # Settings: readable (operator is above viewer), not changeable.
    assert client.get(base).status_code == 200
    patch = client.patch(base, {"protocol": {"devmode": True}}, format="json")
    assert patch.status_code == 403
    assert client.delete(f"{base}/identity/00000001").status_code == 403
    assert client.delete(f"/api:1/connector/{connector.pk}").status_code == 403
    assert client.get(f"/api:1/connector/{connector.pk}/member").status_code == 200
    # Any other connector, even one of the same user's: 404.
    assert client.get(f"/api:1/service/{other.pk}/device2").status_code == 404
    assert (
        client.put(
            f"/api:1/service/{other.pk}/device2/identity/00000001", {}, format="json"
        ).status_code
        == 404
    )
    assert [c["id"] for c in client.get("/api:1/connector/").json()] == [connector.pk]
    assert client.post("/api:1/connector/", {"name": "x"}, format="json").status_code == 403
    connector.refresh_from_db()
    assert connector.devmode is False


def test_a_token_never_does_more_than_its_user_may(alice, bob, connector):
    _join(bob, connector, "admin")
    found = _token("bob@example.com", connector=connector.pk, role="owner")
    client = _with_token(found["token"])
    base = f"/api:1/service/{connector.pk}/device2"
    assert client.patch(base, {"protocol": {"devmode": True}}, format="json").status_code == 204
    assert client.delete(f"/api:1/connector/{connector.pk}").status_code == 403  # bob is admin
    Membership.objects.filter(user=bob).update(role="viewer")  # demoted: the token follows
    assert client.patch(base, {"protocol": {"devmode": False}}, format="json").status_code == 403
    assert client.get(base).status_code == 200


def test_a_viewer_sees_no_vendor_options_or_event_destinations(alice, bob, connector):
    _join(bob, connector, "viewer")
    connector.vendor_name = "digicert"
    connector.vendor_options = {"profile_name": "secret profile", "validity_months": 12}
    connector.save()
    owner_view = _api(alice).get(f"/api:1/service/{connector.pk}/device2").json()
    assert owner_view["pki"]["vendor"]["options"]["profile_name"] == "secret profile"
    assert "events" in owner_view
    viewer_view = _api(bob).get(f"/api:1/service/{connector.pk}/device2").json()
    assert viewer_view["pki"]["vendor"] == {"name": "digicert", "options": {}}
    assert "events" not in viewer_view
    client = Client()
    client.force_login(bob)
    page = client.get(f"/c/{connector.pk}/").content.decode()
    assert "secret profile" not in page and 'id="read-only"' in page
    assert ">Save</button>" not in page and "Delete connector" not in page
    assert client.post(f"/c/{connector.pk}/", {"devmode": "on"}).status_code == 403


@pytest.mark.parametrize(
    ("scope", "field"),
    [
        ({"role": "operator"}, "role"),  # a role needs a connector
        ({"connector": "nosuchconnector00"}, "connector"),
        ({"connector": 12}, "connector"),
        ({"ttl": 10}, "ttl"),
        ({"ttl": 10**9}, "ttl"),
        ({"ttl": "soon"}, "ttl"),
        ({"name": "x" * 101}, "name"),
        ({"scope": "all"}, "scope"),
    ],
)
def test_bad_token_scopes_are_refused(alice, connector, scope, field):
    found = _token("alice@example.com", **scope)
    assert found["status"] == 400 and field in found
    assert not ApiToken.objects.exists()


def test_a_bad_role_for_a_token_is_refused(alice, connector):
    found = _token("alice@example.com", connector=connector.pk, role="root")
    assert found["status"] == 400 and "role" in found


def test_tokens_of_another_users_connector_are_refused(alice, bob, bobs_connector):
    found = _token("alice@example.com", connector=bobs_connector.pk)
    assert found["status"] == 400 and "connector" in found


def test_token_events_name_the_token_never_its_value(alice, connector):
    found = _token("alice@example.com", connector=connector.pk, role="viewer", name="audit")
    created = connector.events.get(type=EventType.TOKEN_CREATED)
    assert created.actor_email == "alice@example.com" and "“audit”" in created.summary
    assert created.payload["role"] == "viewer"
    assert found["token"] not in str(created.payload) + created.summary
    assert _with_token(found["token"]).delete("/api:1/token/").status_code == 204
    revoked = connector.events.get(type=EventType.TOKEN_REVOKED)
    assert revoked.payload["token"] == created.payload["token"]


def test_token_page_creates_lists_and_revokes(alice, bob, connector):
    client = Client()
    client.force_login(alice)
    response = client.post(
        "/tokens/",
        {"name": "factory", "connector": connector.pk, "role": "operator", "days": "7"},
    )
    assert response.status_code == 201
    page = response.content.decode()
    clear = page.split('id="new-token" class="mono" type="text" value="', 1)[1].split('"', 1)[0]
    token = ApiToken.objects.get(user=alice)
    assert (token.name, token.connector_id, token.role) == ("factory", connector.pk, "operator")
    assert abs((token.expires_at - timezone.now()) - dt.timedelta(days=7)) < dt.timedelta(minutes=1)
    listing = client.get("/tokens/").content.decode()
    assert "factory" in listing and clear not in listing
    assert _with_token(clear).get(f"/api:1/service/{connector.pk}/device2").status_code == 200
    other = Client()
    other.force_login(bob)
    assert other.post(f"/tokens/{token.pk}/revoke/").status_code == 404  # not bob's
    assert client.post(f"/tokens/{token.pk}/revoke/").status_code == 302
    assert _with_token(clear).get(f"/api:1/service/{connector.pk}/device2").status_code == 401
    bad = client.post("/tokens/", {"role": "operator", "days": "7"})
    assert bad.status_code == 400 and "A role applies to one connector" in bad.content.decode()
    assert client.post("/tokens/", {"days": "0"}).status_code == 400


# --- sign-up modes -------------------------------------------------------------------------


def _sign_up(client: Client, email: str, query: str = ""):
    return client.post(
        f"/signup/{query}",
        {"email": email, "password1": "a long passphrase", "password2": "a long passphrase"},
    )


def test_default_sign_up_is_open_for_the_first_account_then_by_invitation(settings, db):
    settings.SIGNUP = ""
    assert _sign_up(Client(), "first@example.com").status_code == 302
    assert User.objects.filter(email="first@example.com").exists()
    refused = _sign_up(Client(), "second@example.com")
    assert refused.status_code == 403 and "by invitation" in refused.content.decode()
    assert not User.objects.filter(email="second@example.com").exists()


def test_sign_up_with_an_invitation_joins_at_once(settings, alice, connector):
    settings.SIGNUP = "invite"
    invited = members.invite(connector, alice, "new@example.com", "viewer", link_for=str)
    client = Client()
    page = client.get(f"/signup/?invitation={invited.token}").content.decode()
    assert 'value="new@example.com"' in page
    # The address is the invited one, whatever the form sends.
    response = _sign_up(client, "someone.else@example.com", f"?invitation={invited.token}")
    assert response.status_code == 302 and response.url == f"/c/{connector.pk}/"
    user = User.objects.get(email="new@example.com")
    assert not User.objects.filter(email="someone.else@example.com").exists()
    assert Membership.objects.get(user=user, connector=connector).role == "viewer"
    page = client.get(f"/c/{connector.pk}/").content.decode()
    assert 'id="my-role">viewer' in page


def test_sign_up_with_an_invitation_for_an_existing_account_asks_to_sign_in(
    settings, alice, bob, connector
):
    settings.SIGNUP = "invite"
    invited = members.invite(connector, alice, "bob@example.com", "viewer", link_for=str)
    response = _sign_up(Client(), "bob@example.com", f"?invitation={invited.token}")
    assert response.status_code == 302 and response.url.startswith("/login/")
    assert "next=%2Finvitation%2F" in response.url
    assert not Membership.objects.filter(user=bob, connector=connector).exists()
    assert bob.check_password(PASSWORD)  # untouched


def test_closed_sign_up_refuses_even_with_an_invitation(settings, alice, connector):
    settings.SIGNUP = "closed"
    invited = members.invite(connector, alice, "new@example.com", "viewer", link_for=str)
    response = _sign_up(Client(), "new@example.com", f"?invitation={invited.token}")
    assert response.status_code == 403 and "closed" in response.content.decode()
    assert not User.objects.filter(email="new@example.com").exists()
    page = Client().get(f"/invitation/{invited.token}/").content.decode()
    assert "Sign in to accept" in page and "Create an account" not in page


def test_createsuperuser_works_with_sign_up_closed(settings, monkeypatch, db):
    settings.SIGNUP = "closed"
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", "a long admin passphrase")
    call_command("createsuperuser", "--noinput", "--email", "root@example.com")
    assert User.objects.get(email="root@example.com").is_superuser


def test_connector_list_shows_each_role(alice, bob, connector, bobs_connector):
    _join(alice, bobs_connector, "operator")
    client = Client()
    client.force_login(alice)
    page = client.get("/").content.decode()
    assert 'class="badge role-owner">owner' in page
    assert 'class="badge role-operator">operator' in page


def test_factory_cli_makes_a_scoped_token_and_whitelists_with_it(live_server, transactional_db):
    """scripts/iot-device token, then enable and import with IOT_TOKEN and no password."""
    import subprocess
    import sys
    from pathlib import Path

    user = User.objects.create_user("factory@example.com", PASSWORD)
    connector = services.create_connector(user, "Line")
    other = services.create_connector(user, "Other")
    script = Path(__file__).resolve().parent.parent / "scripts" / "iot-device"
    base_env = {"IOT_URL": live_server.url, "IOT_CONNECTOR": connector.id, "PATH": "/usr/bin:/bin"}

    def run(*argv, **env):
        return subprocess.run(
            [sys.executable, str(script), *argv],
            capture_output=True,
            text=True,
            env={**base_env, **env},
            timeout=60,
        )

    made = run(
        "token", "--name", "line 2", "--days", "3", IOT_EMAIL=user.email, IOT_PASSWORD=PASSWORD
    )
    assert made.returncode == 0, made.stdout + made.stderr
    token = made.stdout.strip()
    stored = ApiToken.objects.get(user=user)
    assert (stored.name, stored.connector_id, stored.role) == ("line 2", connector.id, "operator")
    enabled = run("enable", "00000042", IOT_TOKEN=token)
    assert enabled.returncode == 0, enabled.stdout + enabled.stderr
    csv = Path(__file__).resolve().parent / "data" / "identities.csv"
    imported = run("import", str(csv), IOT_TOKEN=token)
    assert imported.returncode == 0, imported.stdout + imported.stderr
    assert '"created"' in imported.stdout
    assert Device.objects.filter(connector=connector).count() > 1
    # The same token on another connector of the same account: 404, nothing whitelisted.
    elsewhere = run("enable", "00000042", IOT_TOKEN=token, IOT_CONNECTOR=other.id)
    assert elsewhere.returncode == 1
    assert not Device.objects.filter(connector=other).exists()
    # And it cannot change the connector's settings.
    client = _with_token(token)
    response = client.patch(
        f"/api:1/service/{connector.pk}/device2", {"protocol": {"devmode": True}}, format="json"
    )
    assert response.status_code == 403
