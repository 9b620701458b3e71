"""Reading the event log: filters and keyset pages shared by the Logs tab and the API, and
retention. Newest first; pages are keyed on the event id, so page n costs what page 1 costs.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.conf import settings
from django.db.models import QuerySet

from connector import safeinput
from connector.models import Connector, Event, EventType, now_us

DEFAULT_LIMIT = 50
MAX_LIMIT = 500


@dataclass(frozen=True)
class LogFilter:
    type: str = ""
    identity: str = ""
    since: int | None = None  # µs
    until: int | None = None  # µs

    @classmethod
    def from_params(cls, params) -> tuple[LogFilter, dict[str, str]]:
        errors: dict[str, str] = {}
        kind = params.get("type", "").strip()
        if kind and kind not in EventType.values:
            errors["type"] = f"Unknown event type; use one of {', '.join(EventType.values)}."
        bounds = {}
        for name in ("since", "until"):
            raw = params.get(name, "").strip()
            if not raw:
                continue
            try:
                bounds[name] = parse_time(raw)
            except ValueError:
                errors[name] = "Give a date/time like 2026-05-01T12:00 (UTC) or µs since the epoch."
        return cls(type=kind, identity=params.get("identity", "").strip(), **bounds), errors

    @property
    def active(self) -> bool:
        return bool(self.type or self.identity or self.since or self.until)


def parse_time(raw: str) -> int:
    if raw.isdigit():
        return safeinput.whole_number(raw, "the time")
    moment = dt.datetime.fromisoformat(raw)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return int(moment.timestamp() * 1_000_000)


def filtered(connector: Connector, flt: LogFilter) -> QuerySet[Event]:
    qs = Event.objects.filter(connector=connector)
    if flt.type:
        qs = qs.filter(type=flt.type)
    if flt.identity:
        qs = qs.filter(identity=flt.identity)
    if flt.since is not None:
        qs = qs.filter(time__gte=flt.since)
    if flt.until is not None:
        qs = qs.filter(time__lt=flt.until)
    return qs


def page(qs: QuerySet[Event], *, before: int | None = None, limit: int | None = None):
    """Newest first, older than event id `before`. Returns (events, more)."""
    limit = limit or DEFAULT_LIMIT
    if before is not None:
        qs = qs.filter(id__lt=before)
    rows = list(qs.order_by("-id")[: limit + 1])
    return rows[:limit], len(rows) > limit


def newer(qs: QuerySet[Event], after: int, limit: int = MAX_LIMIT) -> list[Event]:
    """Events after id `after`, newest first (the live view's next batch)."""
    return list(qs.filter(id__gt=after).order_by("-id")[:limit])


def event_json(event: Event) -> dict:
    return {
        "id": event.id,
        "time": event.time,
        "type": event.type,
        "identity": event.identity or None,
        "source_ip": event.source_ip,
        "actor": event.actor_email or None,
        "summary": event.summary,
        "payload": event.payload,
    }


def prune(*, days: int | None = None, max_rows: int | None = None) -> int:
    """Delete events older than `days` and beyond the newest `max_rows` of each connector."""
    days = settings.LOG_RETENTION_DAYS if days is None else days
    max_rows = settings.LOG_MAX_ROWS_PER_CONNECTOR if max_rows is None else max_rows
    deleted = 0
    if days:
        cutoff = now_us() - days * 86_400_000_000
        deleted += _delete_in_batches(Event.objects.filter(time__lt=cutoff))
    if max_rows:
        for connector_id in Connector.objects.values_list("id", flat=True):
            events = Event.objects.filter(connector_id=connector_id).order_by("-id")
            boundary = events.values_list("id", flat=True)[max_rows : max_rows + 1]
            if boundary:
                deleted += _delete_in_batches(
                    Event.objects.filter(connector_id=connector_id, id__lte=boundary[0])
                )
    return deleted


def _delete_in_batches(qs: QuerySet[Event], batch: int = 10_000) -> int:
    """Delete in slices so a large prune never holds one long lock over the table."""
    total = 0
    while ids := list(qs.values_list("id", flat=True)[:batch]):
        total += Event.objects.filter(id__in=ids).delete()[0]
    return total
