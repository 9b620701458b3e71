"""The Overview tab's figures (issue #19), cheap on a big connector.

- Devices by status: one grouped count over the connector's devices, cached 30 s per
  connector (it reads every device row once: at 1 M devices, about once a minute per process
  at most, not per view).
- Provisions and failures per hour (24 h, 7 days; failures by reason): closed hours are
  counted once into EventCount and kept; a view counts only the hours since the mark and the
  current hour, through the (connector, type, id) index from the first event id of the range.
- Writes per minute and devices seen, last hour: the last hour's events only, found the same
  way.

The first event id at or after a time is found by bisecting ids through the (connector, id)
index (ids grow with time): ~30 one-row probes instead of a scan of the table.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.db.models import Count, F
from django.db.models.fields.json import KeyTextTransform

from connector.models import Connector, Event, EventCount, EventCountMark, EventType, now_us
from devices.models import Device, Status

HOUR_US = 3600 * 1_000_000
MINUTE_US = 60 * 1_000_000
STATUS_CACHE_SECONDS = 30
CLOSE_GRACE_US = 60 * 1_000_000
KEEP_COUNTS_DAYS = 8  # the Overview shows 7 days at most
HOURLY_TYPES = (EventType.PROVISIONED, EventType.PROVISION_FAILED)
# Events a device causes: "seen" in the last hour means one of these was logged for it.
DEVICE_TYPES = (
    EventType.PROVISIONED,
    EventType.DATA_IN,
    EventType.RECORD,
    EventType.READ,
    EventType.CONNECT,
    EventType.CONTENT_IN,
)


def first_id_since(connector_id: str, moment: int) -> int | None:
    """The smallest id of the connector's events with time >= moment (None: none)."""
    events = Event.objects.filter(connector_id=connector_id)
    newest = events.order_by("-id").values_list("id", "time").first()
    if newest is None or newest[1] < moment:
        return None
    low, high = 0, newest[0]  # the answer is in (low, high]
    while high - low > 1:
        middle = (low + high) // 2
        found = events.filter(id__lte=middle).order_by("-id").values_list("time", flat=True)
        time = found.first()
        if time is None or time < moment:
            low = middle
        else:
            high = middle
    return high


def status_counts(connector: Connector, now: int | None = None) -> dict[str, int]:
    """Devices by the status a person sees (devices.models.Status), cached briefly."""
    key = f"overview:status:{connector.pk}"
    if (found := cache.get(key)) is not None:
        return found
    now = now_us() if now is None else now
    counts = dict.fromkeys(Status.values, 0)
    rows = (
        Device.objects.filter(connector=connector)
        .annotate(expired=_expired(now))
        .values("state", "locked", "expired")
        .annotate(n=Count("id"))
        .values_list("state", "locked", "expired", "n")
    )
    for state, locked, expired, n in rows:
        if locked:
            counts[Status.LOCKED] += n
        elif state == Status.WHITELISTED and expired:
            counts[Status.EXPIRED] += n
        else:
            counts[state] += n
    cache.set(key, counts, STATUS_CACHE_SECONDS)
    return counts


def _expired(now: int):
    from django.db.models import BooleanField, Case, Value, When

    return Case(
        When(expire__lt=now, then=Value(True)), default=Value(False), output_field=BooleanField()
    )


def _count_hours(connector_id: str, since: int, until: int) -> list[tuple[int, str, str, int]]:
    """(hour, type, reason, count) of HOURLY_TYPES in [since, until), hour-aligned bounds."""
    first = first_id_since(connector_id, since)
    if first is None:
        return []
    rows = (
        Event.objects.filter(
            connector_id=connector_id,
            type__in=HOURLY_TYPES,
            id__gte=first,
            time__gte=since,
            time__lt=until,
        )
        .annotate(
            hour=(F("time") / HOUR_US) * HOUR_US,
            why=KeyTextTransform("reason", "payload"),
        )
        .values("hour", "type", "why")
        .annotate(n=Count("id"))
        .values_list("hour", "type", "why", "n")
    )
    return [(hour, type, reason or "", n) for hour, type, reason, n in rows]


def hourly(connector: Connector, hours: int, now: int | None = None) -> list[dict]:
    """The last `hours` hours (oldest first): provisions and failures by reason."""
    now = now_us() if now is None else now
    current = now // HOUR_US * HOUR_US
    start = current - (hours - 1) * HOUR_US
    # An hour is counted for good a little after it ends: a batch committing just after the
    # hour may still log events stamped inside it. Until then it is counted live.
    closed = max(start, (now - CLOSE_GRACE_US) // HOUR_US * HOUR_US)
    _fill(connector.pk, start, closed)
    stored = EventCount.objects.filter(
        connector=connector, hour__gte=start, hour__lt=closed
    ).values_list("hour", "type", "reason", "count")
    rows = list(stored) + _count_hours(connector.pk, closed, current + HOUR_US)
    buckets = {
        start + i * HOUR_US: {"hour": start + i * HOUR_US, "provisioned": 0, "failed": {}}
        for i in range(hours)
    }
    for hour, type, reason, n in rows:
        bucket = buckets.get(hour)
        if bucket is None:
            continue
        if type == EventType.PROVISIONED:
            bucket["provisioned"] += n
        else:
            bucket["failed"][reason or "other"] = bucket["failed"].get(reason or "other", 0) + n
    for bucket in buckets.values():
        bucket["failures"] = sum(bucket["failed"].values())
    return list(buckets.values())


def _fill(connector_id: str, start: int, current: int) -> None:
    """Count the closed hours in [start, current) not counted yet, once: those before the
    mark's `since` (a wider range than before) and those since its `until`."""
    mark = EventCountMark.objects.filter(connector_id=connector_id).first()
    if mark is not None and (start > mark.until or current < mark.since):
        mark = None  # not contiguous with what was counted: count this range afresh
        EventCount.objects.filter(
            connector_id=connector_id, hour__gte=start, hour__lt=current
        ).delete()
    if mark is None:
        missing = [(start, current)]
    else:
        missing = [(start, min(mark.since, current)), (max(mark.until, start), current)]
    missing = [(low, high) for low, high in missing if low < high]
    if not missing:
        return
    rows = [row for low, high in missing for row in _count_hours(connector_id, low, high)]
    since = min(start, mark.since) if mark else start
    try:
        with transaction.atomic():
            EventCount.objects.bulk_create(
                EventCount(connector_id=connector_id, hour=h, type=t, reason=r[:300], count=n)
                for h, t, r, n in rows
            )
            EventCountMark.objects.update_or_create(
                connector_id=connector_id,
                defaults={"since": since, "until": max(current, mark.until if mark else 0)},
            )
    except IntegrityError:
        pass  # another view counted them at the same time: theirs are as good


@dataclass(frozen=True)
class LastHour:
    writes_per_minute: list[tuple[int, int]]  # (minute start µs, writes), oldest first
    writes: int
    devices_seen: int


def last_hour(connector: Connector, now: int | None = None) -> LastHour:
    now = now_us() if now is None else now
    start = (now // MINUTE_US - 59) * MINUTE_US
    first = first_id_since(connector.pk, start)
    minutes = {start + i * MINUTE_US: 0 for i in range(60)}
    seen = 0
    if first is not None:
        recent = Event.objects.filter(connector=connector, id__gte=first, time__gte=start)
        writes = (
            recent.filter(type=EventType.DATA_IN)
            .annotate(minute=(F("time") / MINUTE_US) * MINUTE_US)
            .values("minute")
            .annotate(n=Count("id"))
            .values_list("minute", "n")
        )
        for minute, n in writes:
            if minute in minutes:
                minutes[minute] += n
        seen = (
            recent.filter(type__in=DEVICE_TYPES)
            .exclude(identity="")
            .values("identity")
            .distinct()
            .count()
        )
    series = sorted(minutes.items())
    return LastHour(series, sum(n for _m, n in series), seen)


def prune(now: int | None = None) -> int:
    """Drop hour counts older than the Overview shows (manage.py prune_events)."""
    cutoff = (now_us() if now is None else now) - KEEP_COUNTS_DAYS * 24 * HOUR_US
    deleted = EventCount.objects.filter(hour__lt=cutoff).delete()[0]
    EventCountMark.objects.filter(since__lt=cutoff).update(since=cutoff // HOUR_US * HOUR_US)
    EventCountMark.objects.filter(until__lt=F("since")).delete()
    return deleted


def failure_reasons(hours: list[dict]) -> list[tuple[str, int]]:
    """Every failure reason of the range with its total, most frequent first."""
    totals: dict[str, int] = {}
    for bucket in hours:
        for reason, n in bucket["failed"].items():
            totals[reason] = totals.get(reason, 0) + n
    return sorted(totals.items(), key=lambda item: (-item[1], item[0]))
