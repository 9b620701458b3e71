"""A device's value history (issue #19): every stored value, from writes and records, as
`DataPoint` rows; read newest first in keyset pages, as CSV, or as a chart's series.

Reads use the unique index on (device, alias, timestamp): a device's range of one alias is
one index range scan, whatever the table's size.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass

from django.conf import settings
from django.db.models import Q

from connector import safeinput
from connector.models import now_us
from devices.models import AliasValue, DataPoint, Device

DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000
EXPORT_MAX_POINTS = 1_000_000
SERIES_MAX_POINTS = 50_000  # a week at one point every 12 s; the chart reduces them
TABLE_ROWS = 100  # newest values shown for a string or boolean alias

# The chart's ranges: name -> seconds back from now.
RANGES = {"hour": 3600, "day": 86400, "week": 7 * 86400}


class HistoryError(ValueError):
    def __init__(self, errors: dict[str, str]):
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


@dataclass(frozen=True)
class Query:
    alias: str
    since: int | None  # µs, inclusive
    until: int | None  # µs, exclusive
    before: int | None  # µs: the previous page's oldest timestamp
    limit: int


def parse_moment(raw: str, field: str) -> int:
    """µs since the epoch, or an ISO 8601 date/time (UTC unless it says otherwise)."""
    raw = raw.strip()
    if raw.isascii() and raw.isdigit():
        return safeinput.whole_number(raw, field)
    try:
        moment = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise safeinput.InputError(
            f"{field}: give µs since the epoch or a date/time like 2026-05-01T12:00 (UTC)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return int(moment.timestamp() * 1_000_000)


def parse(params, *, default_limit: int = DEFAULT_LIMIT) -> Query:
    """Validate the query string; HistoryError names each bad parameter (a 400)."""
    errors: dict[str, str] = {}
    known = {"alias", "since", "until", "before", "limit"}
    for key in params:
        if key not in known:
            errors[key] = "Unknown parameter."
    alias = params.get("alias", "")
    if not alias:
        errors["alias"] = "Say which alias: ?alias=<alias>."
    elif len(alias) > 64:
        errors["alias"] = "An alias has at most 64 characters."
    moments: dict[str, int | None] = {}
    for field in ("since", "until", "before"):
        raw = params.get(field, "")
        moments[field] = None
        if raw:
            try:
                moments[field] = parse_moment(raw, field)
            except safeinput.InputError as exc:
                errors[field] = str(exc)
    limit = default_limit
    if raw_limit := params.get("limit", ""):
        try:
            limit = safeinput.whole_number(raw_limit, "limit", low=1, high=MAX_LIMIT)
        except safeinput.InputError:
            errors["limit"] = f"A whole number from 1 to {MAX_LIMIT}."
    since, until = moments["since"], moments["until"]
    if since is not None and until is not None and since >= until:
        errors["until"] = "Must be after since."
    if errors:
        raise HistoryError(errors)
    return Query(alias, since, until, moments["before"], limit)


def _points(device: Device, query: Query):
    qs = DataPoint.objects.filter(device=device, alias=query.alias)
    if query.since is not None:
        qs = qs.filter(timestamp__gte=query.since)
    upper = Q()
    if query.until is not None:
        upper &= Q(timestamp__lt=query.until)
    if query.before is not None:
        upper &= Q(timestamp__lt=query.before)
    return qs.filter(upper)


def page(device: Device, query: Query) -> dict:
    """`{"mayLoadMore", "points": [{"timestamp", "value"}]}`, newest first."""
    rows = list(
        _points(device, query)
        .order_by("-timestamp")
        .values_list("timestamp", "value")[: query.limit + 1]
    )
    more = len(rows) > query.limit
    return {
        "mayLoadMore": more,
        "points": [{"timestamp": ts, "value": value} for ts, value in rows[: query.limit]],
    }


def export_rows(device: Device, query: Query) -> Iterator[tuple[str, int, str]]:
    """(ISO time, µs, value), newest first, in chunks by keyset (the whole range is never in
    memory at once)."""
    before = query.before
    sent = 0
    while sent < EXPORT_MAX_POINTS:
        chunk = list(
            _points(device, Query(query.alias, query.since, query.until, before, 0))
            .order_by("-timestamp")
            .values_list("timestamp", "value")[:5000]
        )
        if not chunk:
            return
        for ts, value in chunk:
            moment = dt.datetime.fromtimestamp(ts / 1_000_000, dt.UTC)
            yield moment.isoformat(timespec="microseconds").replace("+00:00", "Z"), ts, value
        sent += len(chunk)
        before = chunk[-1][0]


def series(
    device: Device, alias: str, since: int, until: int, most: int = SERIES_MAX_POINTS
) -> list[tuple[int, str]]:
    """Oldest first, for a chart or table: at most `most` points of the range (the newest;
    the caller says so when the range held more)."""
    rows = list(
        DataPoint.objects.filter(
            device=device, alias=alias, timestamp__gte=since, timestamp__lt=until
        )
        .order_by("-timestamp")
        .values_list("timestamp", "value")[:most]
    )
    rows.reverse()
    return rows


def chart_range(params) -> tuple[str, int, int, dict[str, str]]:
    """The device page's range: `range=hour|day|week` or `range=custom&from=&to=`."""
    name = params.get("range", "day")
    now = now_us()
    errors: dict[str, str] = {}
    if name in RANGES:
        return name, now - RANGES[name] * 1_000_000, now + 1, errors
    if name == "custom":
        try:
            since = parse_moment(params.get("from", ""), "From")
            until = parse_moment(params.get("to", ""), "To")
            if since < until:
                return name, since, until, errors
            errors["to"] = "To must be after From."
        except safeinput.InputError as exc:
            errors["from"] = str(exc)
    else:
        errors["range"] = "Choose hour, day, week or custom."
    return "day", now - RANGES["day"] * 1_000_000, now + 1, errors


def prune(now: int | None = None, batch: int = 10_000) -> int:
    """Delete points older than HISTORY_RETENTION_DAYS (0 keeps everything). One alias of
    one device at a time, through the (device, alias, timestamp) index, in batches, so no
    statement scans the table or holds locks for long. Every alias that has points has a
    latest value (writes and records keep both), so AliasValue lists them."""
    days = settings.HISTORY_RETENTION_DAYS
    if not days:
        return 0
    cutoff = (now or now_us()) - days * 86400 * 1_000_000
    deleted = 0
    for device_id, alias in AliasValue.objects.values_list("device_id", "alias").iterator():
        while True:
            old = DataPoint.objects.filter(device_id=device_id, alias=alias, timestamp__lt=cutoff)
            ids = list(old.values_list("pk", flat=True)[:batch])
            if not ids:
                break
            deleted += DataPoint.objects.filter(pk__in=ids).delete()[0]
    return deleted
