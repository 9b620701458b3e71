"""Sign-in for people (email + password) and management API token authentication."""

from __future__ import annotations

from django.contrib.auth.backends import ModelBackend
from django.utils import timezone
from rest_framework import authentication, exceptions

from connector import keys
from connector.models import ApiToken


class EmailBackend(ModelBackend):
    """ModelBackend with the email (any case) as the login."""

    def authenticate(self, request, username=None, password=None, **kwargs):
        username = username or kwargs.get("email")
        if username is None or password is None:
            return None
        return super().authenticate(request, username=username.strip().lower(), password=password)


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
