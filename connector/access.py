"""Who may do what on a connector: the one home of the role rules.

Every page, API route and form of a connector asks `connector_for(request, id, need)`:
- not a member (or a token scoped to another connector): 404, so ids do not leak;
- a member whose role is below `need`: 403;
- otherwise the connector, with `.role` (the effective role) and `.can` (what it allows,
  for templates to hide what the role cannot do; the server check is the boundary).

A scoped API token caps the role: the effective role is the lower of the membership's and
the token's, so demoting a member also demotes every token they made.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.core.exceptions import PermissionDenied
from django.http import Http404

from connector.models import ApiToken, Connector, Membership

Role = Membership.Role

RANK = {Role.VIEWER.value: 0, Role.OPERATOR.value: 1, Role.ADMIN.value: 2, Role.OWNER.value: 3}
ROLES = [Role.OWNER, Role.ADMIN, Role.OPERATOR, Role.VIEWER]  # highest first, for choices

# What each role is for, as the Members page says it (SPEC.md section 11).
DESCRIPTIONS = {
    Role.OWNER: "Everything, plus members and invitations, and deleting the connector.",
    Role.ADMIN: "Settings, resources, devices (including deleting them), content and events.",
    Role.OPERATOR: "Devices: whitelist, import, lock and unlock, revoke, tags and set values.",
    Role.VIEWER: "Reads devices, resources, content and logs. Changes nothing; sees no secret.",
}

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def at_least(role: str, need: str) -> bool:
    return RANK.get(str(role), -1) >= RANK[str(need)]


def lower(first: str, second: str) -> str:
    return first if RANK[str(first)] <= RANK[str(second)] else second


@dataclass(frozen=True)
class Can:
    """What a role may do, named after the product's actions (for pages and their buttons)."""

    role: str

    @property
    def operate(self) -> bool:  # whitelist, import, lock/unlock, revoke, tags, set values
        return at_least(self.role, Role.OPERATOR)

    @property
    def administer(self) -> bool:  # settings, resources, delete devices, content, events
        return at_least(self.role, Role.ADMIN)

    @property
    def own(self) -> bool:  # members, invitations, delete the connector
        return at_least(self.role, Role.OWNER)


def request_token(request) -> ApiToken | None:
    """The API token a request authenticated with (DRF sets `auth`; pages have none)."""
    token = getattr(request, "auth", None)
    return token if isinstance(token, ApiToken) else None


def connector_for(
    request, connector_id: str, need: str = Role.VIEWER, *, change: str | None = None
) -> Connector:
    """The connector as the request may act on it; 404 or 403 (PermissionDenied) otherwise.
    `change`, when given, is the role an unsafe method (POST, PUT, PATCH, DELETE) needs."""
    if change is not None and request.method not in SAFE_METHODS:
        need = change
    user = request.user
    if not user.is_authenticated:
        raise Http404
    token = request_token(request)
    if token is not None and token.connector_id not in (None, connector_id):
        raise Http404
    row = (
        Membership.objects.select_related("connector")
        .filter(user=user, connector_id=connector_id)
        .first()
    )
    if row is None:
        raise Http404
    role = row.role
    if token is not None and token.role:
        role = lower(role, token.role)
    if not at_least(role, need):
        raise PermissionDenied(f"Your role on this connector ({role}) cannot do this: {need} can.")
    connector = row.connector
    connector.role = role
    connector.can = Can(role)
    return connector


def visible_connectors(request):
    """The connectors a request may see: the user's, or only a scoped token's own."""
    found = Connector.objects.for_user(request.user)
    token = request_token(request)
    if token is not None and token.connector_id is not None:
        found = found.filter(pk=token.connector_id)
    return found


def may_create_connectors(request) -> bool:
    """A scoped token acts on its connector only: it creates none."""
    token = request_token(request)
    return token is None or token.connector_id is None
