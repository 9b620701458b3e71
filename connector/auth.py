"""Sign-in for people (email + password) and management API token authentication."""

from __future__ import annotations

from django.contrib.auth.backends import ModelBackend
from django.utils import timezone
from rest_framework import authentication, exceptions

from connector import keys, signin
from connector.models import ApiToken


class EmailBackend(ModelBackend):
    """ModelBackend with the email (any case) as the login, slowed down against guessing
    (`connector.signin`): a throttled attempt is refused without checking the password and
    marked on the request, so the page and the API answer 429 with Retry-After."""

    def authenticate(self, request, username=None, password=None, **kwargs):
        username = username or kwargs.get("email")
        if username is None or password is None:
            return None
        if "\x00" in username or "\x00" in password:
            return None  # no account has one, and PostgreSQL cannot compare text with it
        email = username.strip().lower()
        ip = getattr(request, "META", {}).get("REMOTE_ADDR") if request is not None else None
        if ip and (retry := signin.refused_for(email, ip)) is not None:
            signin.mark(request, retry)
            return None
        user = super().authenticate(request, username=email, password=password)
        if ip:
            if user is None:
                signin.failed(email, ip)
            else:
                signin.succeeded(user, ip)
        return user


class BasicAuthentication(authentication.BasicAuthentication):
    """HTTP Basic for the management API; a throttled sign-in is a 429 with Retry-After."""

    def authenticate_credentials(self, userid, password, request=None):
        try:
            return super().authenticate_credentials(userid, password, request)
        except exceptions.AuthenticationFailed:
            if request is not None and (retry := signin.retry_after_of(request)) is not None:
                raise exceptions.Throttled(wait=retry, detail=signin.message(retry)) from None
            raise


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
