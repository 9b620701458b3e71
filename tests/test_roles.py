"""The role matrix (issue #18): every URL of the management UI and API, taken from the URL
conf, for every role and for a non-member. A route missing from the table below fails the
test, so a new route cannot ship without its rule.

For a connector's route the table says the lowest role that may use each method: a
non-member gets 404 (ids do not leak), a lower role 403, that role and above anything but
403/404 (a form error, a redirect, a 2xx: the rule let them through). The table is written
from the issue's list of what each role may do, not read from the code under test.
"""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.test import APIClient

from connector import members, services, subscriptions
from connector.models import Invitation, Membership, User
from devices import services as device_services
from tests.conftest import store_item

V, OP, A, W = "viewer", "operator", "admin", "owner"
ROLES = [None, V, OP, A, W]  # None: signed in, but not a member of this connector
RANK = {V: 0, OP: 1, A: 2, W: 3}

DEVICE = "00000001"
TARGET = "target@example.com"  # a second member, for the member routes

# name -> [(method, lowest role, body)]; the body picks an action where the route has several.
CONNECTOR_ROUTES: dict[str, list[tuple[str, str, dict]]] = {
    # Pages
    "connector-settings": [("GET", V, {}), ("POST", A, {})],
    "connector-overview": [("GET", V, {}), ("GET", V, {"range": "week"})],
    "connector-rename": [("POST", A, {"name": "Renamed"})],
    "connector-delete": [("GET", W, {}), ("POST", W, {})],
    "device-list": [("GET", V, {})],
    "device-bulk": [
        ("POST", OP, {"action": "lock", "identity": DEVICE}),
        ("POST", OP, {"action": "unlock", "identity": DEVICE}),
        ("POST", A, {"action": "delete", "identity": DEVICE}),
    ],
    "device-export": [("GET", V, {})],
    "device-add": [("GET", OP, {}), ("POST", OP, {"identity": "00000099"})],
    "device-check": [("GET", OP, {"identity": "00000099"})],
    "device-import": [("GET", OP, {}), ("POST", OP, {})],
    "device-detail": [
        ("GET", V, {}),
        ("POST", OP, {"action": "lock"}),
        ("POST", OP, {"action": "revoke"}),
        ("POST", OP, {"action": "tags", "tags": "line=2"}),
        ("POST", OP, {"action": "set", "alias": "setpoint", "value": "21"}),
    ],
    "device-delete": [("GET", A, {}), ("POST", A, {})],
    "device-history-csv": [("GET", V, {"alias": "temp"})],
    "connector-resources": [("GET", V, {}), ("POST", A, {"delete": "temp"})],
    "connector-content": [("GET", V, {})],
    "content-upload-form": [("POST", A, {})],
    "content-descriptor": [("POST", A, {"name": "new.bin"})],
    "content-delete": [("GET", A, {}), ("POST", A, {})],
    "connector-members": [("GET", V, {})],
    "member-invite": [("POST", W, {"email": "new@example.com", "role": V})],
    "member-leave": [("POST", V, {})],
    "member-role": [("POST", W, {"role": OP})],
    "member-remove": [("POST", W, {})],
    "invitation-revoke": [("POST", W, {})],
    "connector-logs": [("GET", V, {})],
    "connector-logs-feed": [("GET", V, {"after": "0"})],
    "subscription-create": [("POST", A, {"url": "http://127.0.0.1:9/hook"})],
    "subscription-test": [("POST", A, {})],
    "subscription-replay": [("POST", A, {})],
    "subscription-rotate": [("POST", A, {})],
    "subscription-redeliver": [("POST", A, {"since": "2026-01-01T00:00"})],
    "subscription-delete": [("POST", A, {})],
    # Management API
    "api-connector": [("GET", V, {}), ("PATCH", A, {"name": "Renamed"}), ("DELETE", W, {})],
    "api-member-list": [("GET", V, {})],
    "api-member": [("PATCH", W, {"role": OP}), ("DELETE", W, {})],
    "api-invitation": [("POST", W, {"email": "new@example.com", "role": V})],
    "api-settings": [("GET", V, {}), ("PATCH", A, {"protocol": {"devmode": True}})],
    "api-identity-list": [("GET", V, {})],
    "api-identity": [
        ("GET", V, {}),
        ("PUT", OP, {}),
        ("PATCH", OP, {"locked": True}),
        ("DELETE", A, {}),
    ],
    "api-identity-state": [("GET", V, {}), ("PATCH", OP, {"setpoint": 21})],
    "api-identity-import": [("POST", OP, {})],
    "api-identity-history": [("GET", V, {"alias": "temp"})],
    "api-logs": [("GET", V, {})],
    "api-subscriptions": [("GET", A, {}), ("POST", A, {})],
    "api-subscription": [("GET", A, {}), ("PATCH", A, {}), ("DELETE", A, {})],
    "api-subscription-test": [("POST", A, {})],
    "api-subscription-rotate": [("POST", A, {})],
    "api-subscription-deliveries": [("GET", A, {})],
    "api-subscription-replay": [("POST", A, {})],
    "api-subscription-redeliver": [("POST", A, {"since": 0})],
    "api-content-list": [("GET", V, {}), ("DELETE", A, {})],
    "api-content-item": [("GET", V, {}), ("DELETE", A, {})],
    "api-content-upload": [("GET", A, {"sha256": "0" * 64})],
    "api-content-download": [("GET", V, {})],
}

# Routes outside any connector, and who they are for; their rules are tested elsewhere
# (tests/test_members.py: tokens and invitations; tests/test_accounts.py: sign-up/in).
OTHER_ROUTES = {
    "connector-list": "account",  # lists only the user's connectors
    "signup": "public",
    "login": "public",
    "logout": "account",
    "token-list": "account",  # the user's own tokens
    "token-revoke": "account",  # another user's token is a 404 (test_members.py)
    "invitation": "public",  # the token is the credential; accepting needs the invitee
    "api-token": "public",  # email and password in the body
    "api-connector-list": "account",
    "content-upload": "public",  # the signed ticket is the credential (test_content.py)
    "api-schema": "account",
    "healthz": "public",
}


def _routes(resolver: URLResolver, prefix: str = ""):
    for pattern in resolver.url_patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            yield from _routes(pattern, route)
        elif isinstance(pattern, URLPattern):
            yield pattern.name, route


ALL_ROUTES = dict(_routes(get_resolver()))
CASES = [
    (name, method, need, body, role)
    for name, rules in CONNECTOR_ROUTES.items()
    for method, need, body in rules
    for role in ROLES
]


def test_every_route_has_a_rule():
    unnamed = [route for name, route in ALL_ROUTES.items() if name is None]
    assert not unnamed, f"routes without a name cannot be checked: {unnamed}"
    missing = sorted(set(ALL_ROUTES) - set(CONNECTOR_ROUTES) - set(OTHER_ROUTES))
    assert not missing, f"routes with no role rule in tests/test_roles.py: {missing}"
    stale = sorted((set(CONNECTOR_ROUTES) | set(OTHER_ROUTES)) - set(ALL_ROUTES))
    assert not stale, f"rules for routes that do not exist: {stale}"
    for name in CONNECTOR_ROUTES:
        assert "<str:connector_id>" in ALL_ROUTES[name], name
    for name in OTHER_ROUTES:
        assert "connector_id" not in ALL_ROUTES[name], name


@pytest.fixture
def team(db):
    owner = User.objects.create_user("owner@example.com", "pw")
    connector = services.create_connector(owner, "Line 1")
    users = {W: owner}
    for role in (A, OP, V):
        users[role] = User.objects.create_user(f"{role}@example.com", "pw")
        Membership.objects.create(user=users[role], connector=connector, role=role)
    outsider = User.objects.create_user("outsider@example.com", "pw")
    services.create_connector(outsider, "Someone else's")
    users[None] = outsider
    target = User.objects.create_user(TARGET, "pw")
    target_membership = Membership.objects.create(user=target, connector=connector, role=V)
    services.set_resource(connector, owner, "temp", {"format": "number"})
    services.set_resource(connector, owner, "setpoint", {"format": "number", "settable": True})
    device_services.whitelist_device(connector, DEVICE)
    subscription, _secret = subscriptions.create(
        connector, {"webhook": {"url": "http://127.0.0.1:9/events"}}
    )
    store_item(connector, "fw.bin", b"firmware")
    invited = members.invite(connector, owner, "invitee@example.com", V, link_for=str)
    return {
        "users": users,
        "connector": connector,
        "kwargs": {
            "connector_id": connector.pk,
            "identity": DEVICE,
            "subscription_id": subscription.pk,
            "name": "fw.bin",
            "member_id": target_membership.pk,
            "invitation_id": invited.invitation.pk,
            "email": TARGET,
        },
    }


def _url(name: str, kwargs: dict) -> str:
    route = ALL_ROUTES[name]
    url = "/" + route
    for key, value in kwargs.items():
        for converter in ("str", "int"):
            url = url.replace(f"<{converter}:{key}>", str(value))
    assert "<" not in url, url
    return url


def _call(name: str, method: str, body: dict, user: User, kwargs: dict) -> int:
    url = _url(name, kwargs)
    if name.startswith("api-"):
        client = APIClient()
        client.force_authenticate(user)
        if method == "GET":
            response = client.get(url, body)
        else:
            response = getattr(client, method.lower())(url, body, format="json")
    else:
        client = Client()
        client.force_login(user)
        response = client.get(url, body) if method == "GET" else client.post(url, body)
    if hasattr(response, "streaming_content"):
        b"".join(response.streaming_content)
    return response.status_code


@pytest.mark.parametrize(
    ("name", "method", "need", "body", "role"),
    CASES,
    ids=[
        f"{n} {m} {b.get('action', '')} as {r or 'non-member'}".replace("  ", " ")
        for n, m, _, b, r in CASES
    ],
)
def test_role_matrix(team, name, method, need, body, role):
    status = _call(name, method, body, team["users"][role], team["kwargs"])
    assert status < 500
    if role is None:
        assert status == 404, f"a non-member got {status}"
    elif RANK[role] < RANK[need]:
        assert status == 403, f"{role} got {status}; {need} is needed"
    else:
        assert status not in (403, 404), f"{role} got {status}; {need} is enough"


def test_refused_changes_change_nothing(team):
    """A 403 is decided before anything is touched: the viewer's tries leave no trace."""
    connector, kwargs, viewer = team["connector"], team["kwargs"], team["users"][V]
    events_before = connector.events.count()
    for name, rules in CONNECTOR_ROUTES.items():
        for method, need, body in rules:
            if method != "GET" and RANK[need] > RANK[V]:
                assert _call(name, method, body, viewer, kwargs) == 403, name
    connector.refresh_from_db()
    assert connector.name == "Line 1"
    assert connector.devices.filter(identity=DEVICE, locked=False).exists()
    assert connector.memberships.count() == 5
    assert connector.content_items.filter(name="fw.bin").exists()
    assert connector.subscriptions.count() == 1
    assert Invitation.objects.filter(connector=connector, revoked_at__isnull=True).count() == 1
    assert connector.events.count() == events_before
