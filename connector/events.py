"""The event log: written explicitly by the service that did the thing, in its transaction."""

from __future__ import annotations

from typing import Any

from connector.models import Connector, Event, EventType


def _clean(value: Any) -> Any:
    """PostgreSQL refuses NUL in text and JSON: keep what a client sent readable instead."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def record(
    connector: Connector | str,
    type: EventType | str,
    summary: str,
    *,
    identity: str = "",
    source_ip: str | None = None,
    actor=None,
    payload: dict[str, Any] | None = None,
) -> Event:
    """Append one event. Callers pass no secrets: payloads hold names, values and reasons."""
    connector_id = connector if isinstance(connector, str) else connector.pk
    return Event.objects.create(
        connector_id=connector_id,
        type=type,
        summary=_clean(summary[:300]),
        identity=_clean(identity[:128]),
        source_ip=source_ip or None,
        actor=actor if actor is not None and actor.is_authenticated else None,
        actor_email=getattr(actor, "email", "") or "",
        payload=_clean(payload) if payload else {},
    )
