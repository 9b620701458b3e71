"""Sign-in for people (email + password) and management API token authentication."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.backends import ModelBackend
from django.utils import timezone
from rest_framework import authentication, exceptions

from connector import keys
from connector.models import ApiToken
from provisioning import ratelimit

# Password sign-ins (page, HTTP Basic, token requests) share one failure counter per address.
ACCOUNTS_KEY = "@accounts"


class EmailBackend(ModelBackend):
    """ModelBackend with the email (any case) as the login, slowed down against guessing:
    after ACCOUNT_AUTH_FAILURE_LIMIT failures from one address in a minute, every attempt
    from it fails, the right password included, until the minute is over."""

    def authenticate(self, request, username=None, password=None, **kwargs):
        username = username or kwargs.get("email")
        if username is None or password is None:
            return None
        if "\x00" in username or "\x00" in password:
            return None  # no account has one, and PostgreSQL cannot compare text with it
        ip = getattr(request, "META", {}).get("REMOTE_ADDR") if request is not None else None
        if ip and ratelimit.failures(ACCOUNTS_KEY, ip) >= settings.ACCOUNT_AUTH_FAILURE_LIMIT:
            return None
        user = super().authenticate(request, username=username.strip().lower(), password=password)
        if user is None and ip:
            ratelimit.note_failure(ACCOUNTS_KEY, ip)
        return user


class ApiTokenAuthentication(authentication.BaseAuthentication):
    """`Authorization: token <t>` (scheme in any case) with a token from POST /api:1/token/."""

    keyword = "token"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode("latin-1")
        scheme, _, credential = header.partition(" ")
        if scheme.lower() != self.keyword:
            return None
        credential = credential.strip()
        if not credential or " " in credential:
            raise exceptions.AuthenticationFailed("Invalid token header.")
        token = (
            ApiToken.objects.select_related("user")
            .filter(digest__in=keys.candidate_hashes(credential))
            .first()
        )
        # One message for unknown, expired, revoked and inactive: no hint which it was.
        if token is None or not token.is_usable() or not token.user.is_active:
            raise exceptions.AuthenticationFailed("Invalid or expired token.")
        if not keys.hashes_match(token.digest, credential):
            raise exceptions.AuthenticationFailed("Invalid or expired token.")
        now = timezone.now()
        if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
            ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        return token.user, token

    def authenticate_header(self, request):
        return 'Token realm="api"'
