"""A connector's people: invitations, joining, role changes, removal; scoped API tokens.

One function per state change, shared by the Members page and the management API. Each
writes its event with the actor. The rule that a connector keeps at least one owner lives
here (`_keep_an_owner`), checked under a lock on the connector's memberships so two owners
demoting each other at once cannot leave none.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.core.validators import validate_email
from django.db import transaction
from django.utils import timezone

from connector import access, events, keys
from connector.models import ApiToken, Connector, EventType, Invitation, Membership, User

log = logging.getLogger(__name__)
Role = access.Role

INVITATION_TOKEN_LENGTH = 40


class MemberError(Exception):
    """A refused change: `status` for the API (400, 404, 409), `field` for forms."""

    def __init__(self, status: int, field: str, message: str):
        super().__init__(message)
        self.status, self.field, self.message = status, field, message


@dataclass(frozen=True)
class Invited:
    invitation: Invitation
    token: str  # the clear token, for the link; shown or sent once, never stored
    emailed: bool


def signup_mode() -> str:
    """`SIGNUP`, or unset: open until the first account exists, then by invitation."""
    if settings.SIGNUP:
        return settings.SIGNUP
    return "invite" if User.objects.exists() else "open"


def check_role(role, field: str = "role") -> str:
    if not isinstance(role, str) or role not in access.RANK:
        raise MemberError(400, field, "Choose one of: owner, admin, operator, viewer.")
    return role


def check_email(email, field: str = "email") -> str:
    if not isinstance(email, str) or not email.strip():
        raise MemberError(400, field, "Give the email address to invite.")
    email = User.objects.normalize_email(email)
    try:
        validate_email(email)
    except ValidationError:
        raise MemberError(400, field, "Enter a valid email address.") from None
    return email


def members(connector: Connector) -> list[Membership]:
    return list(
        Membership.objects.filter(connector=connector)
        .select_related("user")
        .order_by("user__email")
    )


def open_invitations(connector: Connector) -> list[Invitation]:
    return list(
        connector.invitations.filter(
            accepted_at__isnull=True, revoked_at__isnull=True, expires_at__gt=timezone.now()
        ).select_related("created_by")
    )


def invite(
    connector: Connector,
    actor: User,
    email,
    role,
    *,
    link_for,
    ip: str | None = None,
) -> Invited:
    """An invitation of `email` with `role`; `link_for(token)` makes the absolute link. Sent
    by email when an email backend is configured; the caller shows it otherwise."""
    email, role = check_email(email), check_role(role)
    if Membership.objects.filter(connector=connector, user__email=email).exists():
        raise MemberError(409, "email", f"{email} is a member already.")
    token = keys.new_token(INVITATION_TOKEN_LENGTH)
    expires = timezone.now() + dt.timedelta(hours=settings.INVITATION_TTL_HOURS)
    with transaction.atomic():
        # One open invitation per address: a new one replaces (revokes) the earlier ones.
        connector.invitations.filter(
            email=email, accepted_at__isnull=True, revoked_at__isnull=True
        ).update(revoked_at=timezone.now())
        invitation = Invitation.objects.create(
            connector=connector,
            email=email,
            role=role,
            digest=keys.keyed_hash(token),
            created_by=actor,
            expires_at=expires,
        )
        events.record(
            connector,
            EventType.MEMBER_INVITED,
            f"{email} invited as {role}",
            actor=actor,
            source_ip=ip,
            payload={"email": email, "role": role, "expires": expires.isoformat()},
        )
    emailed = False
    if settings.EMAIL_CONFIGURED:
        link = link_for(token)
        try:
            send_mail(
                f"You are invited to the connector “{connector.name}”",
                f"{actor.email} invites you to join the IoT connector “{connector.name}” "
                f"as {role}.\n\nAccept (the link works once, until "
                f"{expires:%Y-%m-%d %H:%M} UTC):\n{link}\n",
                None,
                [email],
            )
            emailed = True
        except OSError:  # the mail server is down: the page shows the link instead
            log.warning("invitation email to the invitee could not be sent", exc_info=True)
    return Invited(invitation, token, emailed)


def find_invitation(token: str) -> Invitation | None:
    """The open invitation a link's token names, or None (unknown, used, revoked, expired)."""
    if not isinstance(token, str) or not token.isalnum() or len(token) > 100:
        return None
    found = (
        Invitation.objects.select_related("connector", "created_by")
        .filter(digest__in=keys.candidate_hashes(token))
        .first()
    )
    if found is None or not keys.hashes_match(found.digest, token) or not found.is_open():
        return None
    return found


def accept(token: str, user: User, ip: str | None = None) -> Membership:
    """Join with an invitation; only the invited address may. Used once."""
    with transaction.atomic():
        invitation = find_invitation(token)
        if invitation is not None:
            invitation = Invitation.objects.select_for_update().get(pk=invitation.pk)
        if invitation is None or not invitation.is_open():
            raise MemberError(404, "token", "This invitation is not valid any more.")
        if invitation.email != user.email:
            raise MemberError(
                403,
                "email",
                f"This invitation is for {invitation.email}; you are signed in as {user.email}.",
            )
        invitation.accepted_at = timezone.now()
        invitation.save(update_fields=["accepted_at"])
        membership, created = Membership.objects.get_or_create(
            user=user, connector=invitation.connector, defaults={"role": invitation.role}
        )
        if created:
            events.record(
                invitation.connector,
                EventType.MEMBER_JOINED,
                f"{user.email} joined as {invitation.role}",
                actor=user,
                source_ip=ip,
                payload={"email": user.email, "role": invitation.role},
            )
        return membership


def revoke_invitation(connector: Connector, actor: User, invitation_id, ip=None) -> None:
    with transaction.atomic():
        count = connector.invitations.filter(
            pk=invitation_id, accepted_at__isnull=True, revoked_at__isnull=True
        ).update(revoked_at=timezone.now())
        if not count:
            raise MemberError(404, "invitation", "No open invitation with this id.")
        invitation = connector.invitations.get(pk=invitation_id)
        events.record(
            connector,
            EventType.INVITATION_REVOKED,
            f"Invitation of {invitation.email} revoked",
            actor=actor,
            source_ip=ip,
            payload={"email": invitation.email, "role": invitation.role},
        )


def _locked_member(connector: Connector, email: str) -> tuple[Membership, list[Membership]]:
    everyone = list(
        Membership.objects.select_for_update()
        .filter(connector=connector)
        .select_related("user")
        .order_by("pk")
    )
    for membership in everyone:
        if membership.user.email == User.objects.normalize_email(email):
            return membership, everyone
    raise MemberError(404, "email", "No member with this email address.")


def _keep_an_owner(target: Membership, everyone: list[Membership], doing: str) -> None:
    """The one rule: a connector always keeps at least one owner."""
    owners = [m for m in everyone if m.role == Role.OWNER]
    if target.role == Role.OWNER and len(owners) == 1:
        raise MemberError(
            409, "role", f"{target.user.email} is the last owner: make another owner {doing}."
        )


def change_role(connector: Connector, actor: User, email, role, ip=None) -> Membership:
    role = check_role(role)
    if not isinstance(email, str):
        raise MemberError(404, "email", "No member with this email address.")
    with transaction.atomic():
        target, everyone = _locked_member(connector, email)
        if target.role == role:
            return target
        if role != Role.OWNER:
            _keep_an_owner(target, everyone, "first")
        old = target.role
        target.role = role
        target.save(update_fields=["role"])
        events.record(
            connector,
            EventType.MEMBER_ROLE_CHANGED,
            f"{target.user.email}: {old} → {role}",
            actor=actor,
            source_ip=ip,
            payload={"email": target.user.email, "from": old, "to": role},
        )
        return target


def remove(connector: Connector, actor: User, email, ip=None) -> None:
    """Remove a member (an owner's act), or leave (anyone's, for themselves). The member's
    tokens scoped to this connector are revoked with the membership."""
    if not isinstance(email, str):
        raise MemberError(404, "email", "No member with this email address.")
    with transaction.atomic():
        target, everyone = _locked_member(connector, email)
        leaving = target.user_id == actor.pk
        _keep_an_owner(target, everyone, "before leaving" if leaving else "first")
        target.delete()
        ApiToken.objects.filter(
            user_id=target.user_id, connector=connector, revoked_at__isnull=True
        ).update(revoked_at=timezone.now())
        events.record(
            connector,
            EventType.MEMBER_REMOVED,
            f"{target.user.email} left" if leaving else f"{target.user.email} removed",
            actor=actor,
            source_ip=ip,
            payload={"email": target.user.email, "role": target.role, "left": leaving},
        )


# --- API tokens -------------------------------------------------------------------------


def parse_ttl(value, field: str = "ttl") -> dt.timedelta:
    """Seconds a token lives: 60 s to API_TOKEN_LIFETIME_DAYS (the default and the most)."""
    most = settings.API_TOKEN_LIFETIME_DAYS * 86400
    if value is None or value == "":
        return dt.timedelta(seconds=most)
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 12:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 60 <= value <= most:
        raise MemberError(400, field, f"Give the token's lifetime in seconds, 60 to {most}.")
    return dt.timedelta(seconds=value)


def create_token(
    user: User,
    *,
    name="",
    connector_id=None,
    role=None,
    ttl=None,
    ip: str | None = None,
) -> tuple[str, ApiToken]:
    """A management API token; the clear value is returned once and only its keyed hash is
    stored. Scoped to `connector_id` (a connector the user belongs to) and capped at `role`
    when given; a role needs a connector."""
    if not isinstance(name, str) or len(name) > 100 or "\n" in name:
        raise MemberError(400, "name", "A name is one line of at most 100 characters.")
    lifetime = parse_ttl(ttl)
    connector = None
    if connector_id not in (None, ""):
        connector = (
            Connector.objects.for_user(user).filter(pk=connector_id).first()
            if isinstance(connector_id, str)
            else None
        )
        if connector is None:
            raise MemberError(400, "connector", "No connector with this id among yours.")
    if role not in (None, ""):
        check_role(role)
        if connector is None:
            raise MemberError(400, "role", "A role applies to one connector: give it too.")
    clear = keys.new_token(40)
    with transaction.atomic():
        token = ApiToken.objects.create(
            user=user,
            digest=keys.keyed_hash(clear),
            name=name.strip(),
            connector=connector,
            role=role or "",
            expires_at=timezone.now() + lifetime,
        )
        _token_event(token, EventType.TOKEN_CREATED, "created", ip)
    return clear, token


def revoke_token(token: ApiToken, ip: str | None = None) -> bool:
    with transaction.atomic():
        done = ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(
            revoked_at=timezone.now()
        )
        if done:
            _token_event(token, EventType.TOKEN_REVOKED, "revoked", ip)
    return bool(done)


def _token_event(token: ApiToken, type: EventType, verb: str, ip: str | None) -> None:
    """On the token's connector, or on each of the user's connectors for an unscoped token
    (it can act on all of them). Never the token itself."""
    scope = f"{token.role} on this connector" if token.role else "this connector"
    if token.connector_id is None:
        scope = "all of the user's connectors"
    label = f"“{token.name}”" if token.name else f"#{token.pk}"
    connector_ids = (
        [token.connector_id]
        if token.connector_id
        else list(Membership.objects.filter(user=token.user).values_list("connector_id", flat=True))
    )
    payload = {
        "token": token.pk,
        "name": token.name,
        "role": token.role or None,
        "expires": token.expires_at.isoformat(),
    }
    for connector_id in connector_ids:
        events.record(
            connector_id,
            type,
            f"API token {label} {verb} ({scope})",
            actor=token.user,
            source_ip=ip,
            payload=payload,
        )


def user_tokens(user: User) -> list[ApiToken]:
    return list(
        ApiToken.objects.filter(user=user).select_related("connector").order_by("-created_at")
    )
