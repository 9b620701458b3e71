"""The event log: written explicitly by the service that did the thing, in its transaction."""

from __future__ import annotations

from typing import Any, NamedTuple

from django.core.serializers.json import DjangoJSONEncoder

from connector.models import Connector, Event, EventType, now_us
from connector.sql import insert_rows


class EventRow(NamedTuple):
    """One event as the row inserted: the fields are the table's columns, in `COLUMNS` order."""

    connector_id: str
    time: int  # µs
    type: str
    identity: str
    source_ip: str | None
    actor_id: int | None
    actor_email: str
    summary: str
    payload: str  # JSON


COLUMNS = list(EventRow._fields)


def _clean(value: Any) -> Any:
    """PostgreSQL refuses NUL in text and JSON: keep what a client sent readable instead."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


_ENCODER = DjangoJSONEncoder()  # one for every call: building one is most of a small dump


def payload_json(payload: dict[str, Any] | None) -> str:
    """The payload as stored: JSON, with any NUL a client sent made readable (`_clean`).
    Encoded first as it is, which is every payload but a hostile one: a NUL can only show
    as the escape `\\u0000` in the text, and only then is it cleaned and encoded again."""
    if not payload:
        return "{}"
    text = _ENCODER.encode(payload)
    return _ENCODER.encode(_clean(payload)) if "\\u0000" in text else text


def row(
    connector: Connector | str,
    type: EventType | str,
    summary: str,
    *,
    identity: str = "",
    source_ip: str | None = None,
    actor=None,
    payload: dict[str, Any] | None = None,
    time: int | None = None,
) -> EventRow:
    """The event as a row of COLUMNS, for callers that insert it together with other rows;
    at `time` (µs) when given, else now."""
    connector_id = connector if isinstance(connector, str) else connector.pk
    user = actor if actor is not None and actor.is_authenticated else None
    return EventRow(
        connector_id,
        now_us() if time is None else time,
        str(type),
        identity[:128].replace("\x00", "\ufffd"),
        source_ip or None,
        user.pk if user else None,
        user.email if user else "",
        summary[:300].replace("\x00", "\ufffd"),
        payload_json(payload),
    )


def record(connector: Connector | str, type: EventType | str, summary: str, **fields) -> None:
    """Append one event: a single INSERT (it runs on the device API's hot path).

    `fields` are those of `row` (identity, source_ip, actor, payload). Callers pass no
    secrets: payloads hold names, values and reasons.
    """
    insert_rows(Event, COLUMNS, [row(connector, type, summary, **fields)])
