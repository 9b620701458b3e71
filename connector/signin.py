"""Throttling of password sign-ins (the page, HTTP Basic on the API, token requests) and of
sign-ups: the one home of who is refused unchecked, for how long, and what is counted.

Counted per account and address, per account from everywhere, and per address
(`provisioning.ratelimit`). The right password from an address where only other accounts
failed is never refused: an account is judged by its own failures, and an address over its
limit only cuts each account's tries from it to one per window.
"""

from __future__ import annotations

import datetime as dt
import time

from django.conf import settings
from django.db import connection
from django.utils import timezone

from connector.models import SignInAddress, User
from provisioning import ratelimit

ACCOUNTS_KEY = "@accounts"
SIGNUP_KEY = "@signup"
SIGNUP_WINDOW = 3600
THROTTLED = "Too many failed sign-ins for this account from your address."


def refused_for(email: str, ip: str) -> int | None:
    """Seconds to wait if a sign-in as `email` from `ip` is refused without checking the
    password, else None."""
    window = settings.SIGNIN_FAILURE_WINDOW
    counts = ratelimit.guesses(ACCOUNTS_KEY, email, ip, window)
    here_limit = settings.SIGNIN_FAILURE_LIMIT
    if counts.here and ratelimit.failures(ACCOUNTS_KEY, ip, window) >= (
        settings.SIGNIN_ADDRESS_FAILURE_LIMIT
    ):
        here_limit = 1
    known = counts.everywhere >= settings.SIGNIN_ACCOUNT_FAILURE_LIMIT and _known(email, ip)
    if ratelimit.guess_refused(
        counts,
        known=known,
        here_limit=here_limit,
        everywhere_limit=settings.SIGNIN_ACCOUNT_FAILURE_LIMIT,
    ):
        return ratelimit.retry_after(window)
    return None


def _known(email: str, ip: str) -> bool:
    since = timezone.now() - dt.timedelta(days=settings.SIGNIN_KNOWN_ADDRESS_DAYS)
    return SignInAddress.objects.filter(user__email=email, ip=ip, last_at__gte=since).exists()


def failed(email: str, ip: str) -> None:
    window = settings.SIGNIN_FAILURE_WINDOW
    ratelimit.note_guess(ACCOUNTS_KEY, email, ip, window)
    ratelimit.note_failure(ACCOUNTS_KEY, ip, window)


# (user id, address) -> when this process last recorded it: a management API client signs
# in on every request, and its address needs writing down about once an hour, not each time.
_recorded: dict[tuple[int, str], float] = {}


def succeeded(user: User, ip: str) -> None:
    """Remember that the account signed in from this address (one upsert, at most hourly)."""
    now = time.monotonic()
    key = (user.pk, ip)
    if key in _recorded and now - _recorded[key] < 3600:
        return
    if len(_recorded) > 10_000:
        _recorded.clear()
    table = connection.ops.quote_name(SignInAddress._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (user_id, ip, last_at) VALUES (%s, %s, %s)"  # noqa: S608
            " ON CONFLICT (user_id, ip) DO UPDATE SET last_at = excluded.last_at",
            [user.pk, ip, timezone.now()],
        )
    _recorded[key] = now


def message(retry_after: int) -> str:
    minutes = max(1, round(retry_after / 60))
    unit = "minute" if minutes == 1 else "minutes"
    return f"{THROTTLED} Try again in {minutes} {unit}."


def signup_message(retry_after: int) -> str:
    minutes = max(1, round(retry_after / 60))
    return f"Too many sign-ups from your address. Try again in {minutes} minutes."


def signup_refused(ip: str) -> int | None:
    """Seconds to wait if this address has used up its sign-ups for the hour, else None;
    counts this attempt otherwise."""
    if ratelimit.note_failure(SIGNUP_KEY, ip, SIGNUP_WINDOW) > settings.SIGNUP_LIMIT_PER_HOUR:
        return ratelimit.retry_after(SIGNUP_WINDOW)
    return None


def mark(request, retry_after: int) -> None:
    """Note on the request (and the Django request a DRF request wraps) that its sign-in was
    refused unchecked, so the page or API can answer 429 with Retry-After."""
    request.signin_retry_after = retry_after
    inner = getattr(request, "_request", None)
    if inner is not None:
        inner.signin_retry_after = retry_after


def retry_after_of(request) -> int | None:
    found = getattr(request, "signin_retry_after", None)
    if found is None and getattr(request, "_request", None) is not None:
        found = getattr(request._request, "signin_retry_after", None)
    return found
