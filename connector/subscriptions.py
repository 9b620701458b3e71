"""Event subscriptions: one service function per change, shared by the API and the pages.

Creating, enabling or removing a subscription keeps `Connector.events_enabled` true exactly
while the connector has an enabled one (the store adds outbox rows only then), and gives a
new subscription one cursor per partition starting after the newest outbox row: it hears
what happens from now on.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

from django.db import transaction
from django.db.models import Max, Min
from django.utils import timezone

from connector import amqp, events, keys, outbox, webhooks
from connector.models import (
    Connector,
    DeadLetter,
    DeliveryCursor,
    EventType,
    OutboxEvent,
    Subscription,
    now_us,
)

HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}")
RESERVED_HEADERS = {
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "content-type",
    "content-length",
    "host",
    "transfer-encoding",
    "connection",
}
MAX_HEADERS = 20
MAX_BATCH = 100  # relay.BATCH: the most events one look takes
ROTATION_OVERLAP = dt.timedelta(hours=24)


class InvalidSubscription(ValueError):
    def __init__(self, errors: dict[str, str]):
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


def check(data: Any, *, partial: bool = False) -> dict[str, Any]:
    """The subscription fields of a JSON body, checked; raises InvalidSubscription naming
    each wrong field by its JSON path."""
    if not isinstance(data, dict):
        raise InvalidSubscription({"non_field_errors": "Send a JSON object."})
    errors: dict[str, str] = {}
    clean: dict[str, Any] = {}
    for key in set(data) - {"types", "webhook", "amqp", "enabled", "batch"}:
        errors[key] = "Unknown field."
    if "types" in data:
        types = data["types"]
        if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
            errors["types"] = "Give a list of event types."
        elif unknown := [t for t in types if t not in outbox.TYPES]:
            errors["types"] = f"Unknown type {unknown[0][:40]!r}; use {', '.join(outbox.TYPES)}."
        else:
            clean["types"] = sorted(set(types))
    if "batch" in data:
        batch = data["batch"]
        if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= MAX_BATCH:
            errors["batch"] = f"Events per delivery: a whole number from 1 to {MAX_BATCH}."
        else:
            clean["batch"] = batch
    if "enabled" in data:
        if not isinstance(data["enabled"], bool):
            errors["enabled"] = "Must be true or false."
        else:
            clean["enabled"] = data["enabled"]
    webhook = data.get("webhook")
    if "amqp" in data:
        if webhook is not None:
            errors["amqp"] = "Give one destination: webhook or amqp."
        else:
            destination, found = amqp.check(data["amqp"])
            errors |= found
            if destination:
                clean["amqp"] = destination
    elif webhook is None and not partial:
        errors["webhook"] = 'Give a destination: {"url": "https://…"}, or "amqp".'
    if webhook is not None and "amqp" not in data:
        if not isinstance(webhook, dict):
            errors["webhook"] = "Must be an object."
        else:
            for key in set(webhook) - {"url", "headers"}:
                errors[f"webhook.{key}"] = "Unknown field."
            url = webhook.get("url")
            if not isinstance(url, str) or not url:
                errors["webhook.url"] = "Give the receiver's URL."
            elif reason := webhooks.url_error(url):
                errors["webhook.url"] = reason[0].upper() + reason[1:] + "."
            else:
                clean["url"] = url
            headers = webhook.get("headers", {})
            if not isinstance(headers, dict) or len(headers) > MAX_HEADERS:
                errors["webhook.headers"] = f"An object of at most {MAX_HEADERS} headers."
            else:
                for name, value in headers.items():
                    if not HEADER_NAME.fullmatch(name) or name.lower() in RESERVED_HEADERS:
                        errors[f"webhook.headers.{name[:40]}"] = "Not a header this may set."
                    elif (
                        not isinstance(value, str)
                        or len(value) > 4000
                        or any(c in value for c in "\r\n\x00")
                    ):
                        errors[f"webhook.headers.{name}"] = "A one-line text value."
                clean["headers"] = headers
    if errors:
        raise InvalidSubscription(errors)
    return clean


def _refresh_flag(connector_id: str) -> None:
    on = Subscription.objects.filter(connector_id=connector_id, enabled=True).exists()
    Connector.objects.filter(pk=connector_id).update(events_enabled=on)


def _cursors_from_now(subscription: Subscription) -> None:
    from django.conf import settings

    newest = OutboxEvent.objects.aggregate(newest=Max("id"))["newest"] or 0
    DeliveryCursor.objects.bulk_create(
        [
            DeliveryCursor(subscription=subscription, partition=p, last_id=newest)
            for p in range(settings.EVENTS_PARTITIONS)
        ]
    )


def create(
    connector: Connector, data: Any, *, actor=None, source_ip=None
) -> tuple[Subscription, str]:
    """A new subscription and its signing secret (returned once, stored encrypted)."""
    clean = check(data)
    secret = webhooks.new_secret()
    broker = clean.get("amqp")
    with transaction.atomic():
        subscription = Subscription.objects.create(
            connector=connector,
            kind=Subscription.Kind.AMQP if broker else Subscription.Kind.WEBHOOK,
            destination_encrypted=keys.encrypt(json.dumps(broker)) if broker else "",
            types=clean.get("types", []),
            url=amqp.display_url(broker["url"]) if broker else clean["url"],
            headers_encrypted=keys.encrypt(json.dumps(clean["headers"]))
            if clean.get("headers")
            else "",
            secret_encrypted=keys.encrypt(secret),
            batch_size=clean.get("batch", 1),
            enabled=clean.get("enabled", True),
            created_by=actor if actor is not None and actor.is_authenticated else None,
        )
        _cursors_from_now(subscription)
        _refresh_flag(connector.pk)
        events.record(
            connector,
            EventType.SETTINGS_CHANGED,
            f"Event subscription {subscription.id} created ({_host(subscription.url)})",
            actor=actor,
            source_ip=source_ip,
            payload={"subscription": subscription.id, "types": subscription.types},
        )
    return subscription, secret


def update(subscription: Subscription, data: Any, *, actor=None, source_ip=None) -> None:
    clean = check(data, partial=True)
    fields = []
    if "types" in clean:
        subscription.types, fields = clean["types"], [*fields, "types"]
    if ("url" in clean or "headers" in clean) and subscription.kind != Subscription.Kind.WEBHOOK:
        raise InvalidSubscription({"webhook": "This subscription delivers to a broker."})
    if "amqp" in clean:
        if subscription.kind != Subscription.Kind.AMQP:
            raise InvalidSubscription({"amqp": "This subscription delivers to a webhook."})
        subscription.destination_encrypted = keys.encrypt(json.dumps(clean["amqp"]))
        subscription.url = amqp.display_url(clean["amqp"]["url"])
        fields += ["destination_encrypted", "url"]
    if "url" in clean:
        subscription.url, fields = clean["url"], [*fields, "url"]
    if "headers" in clean:
        subscription.headers_encrypted = (
            keys.encrypt(json.dumps(clean["headers"])) if clean["headers"] else ""
        )
        fields.append("headers_encrypted")
    if "batch" in clean:
        subscription.batch_size, fields = clean["batch"], [*fields, "batch_size"]
    if "enabled" in clean:
        subscription.enabled = clean["enabled"]
        if clean["enabled"]:
            subscription.disabled_reason = ""
        fields += ["enabled", "disabled_reason"]
    with transaction.atomic():
        if fields:
            subscription.save(update_fields=fields)
        _refresh_flag(subscription.connector_id)
        events.record(
            subscription.connector_id,
            EventType.SETTINGS_CHANGED,
            f"Event subscription {subscription.id} changed: {', '.join(sorted(clean))}",
            actor=actor,
            source_ip=source_ip,
            payload={"subscription": subscription.id, "changed": sorted(clean)},
        )


def rotate_secret(subscription: Subscription, *, actor=None) -> str:
    """A new secret; the old one keeps signing beside it for ROTATION_OVERLAP."""
    secret = webhooks.new_secret()
    with transaction.atomic():
        subscription.previous_secret_encrypted = subscription.secret_encrypted
        subscription.previous_until = timezone.now() + ROTATION_OVERLAP
        subscription.secret_encrypted = keys.encrypt(secret)
        subscription.save(
            update_fields=["previous_secret_encrypted", "previous_until", "secret_encrypted"]
        )
        events.record(
            subscription.connector_id,
            EventType.SETTINGS_CHANGED,
            f"Event subscription {subscription.id}: signing secret rotated",
            actor=actor,
            payload={"subscription": subscription.id},
        )
    return secret


def delete(subscription: Subscription, *, actor=None, source_ip=None) -> None:
    with transaction.atomic():
        connector_id = subscription.connector_id
        subscription.delete()
        _refresh_flag(connector_id)
        events.record(
            connector_id,
            EventType.SETTINGS_CHANGED,
            f"Event subscription {subscription.id} deleted",
            actor=actor,
            source_ip=source_ip,
            payload={"subscription": subscription.id},
        )


def disable(subscription: Subscription, reason: str) -> None:
    with transaction.atomic():
        Subscription.objects.filter(pk=subscription.pk).update(
            enabled=False, disabled_reason=reason[:300]
        )
        _refresh_flag(subscription.connector_id)
        events.record(
            subscription.connector_id,
            EventType.SETTINGS_CHANGED,
            f"Event subscription {subscription.id} disabled: {reason}",
            payload={"subscription": subscription.id, "reason": reason},
        )


def send_test(subscription: Subscription) -> dict[str, Any]:
    """Send one test event now (not through the outbox); what the receiver answered."""
    from connector import relay

    event = {
        "id": f"evt_test_{keys.new_token(16)}",
        "type": "test",
        "connector": subscription.connector_id,
        "identity": None,
        "ip": None,
        "protocol": None,
        "timestamp": now_us(),
        "connection_id": None,
        "payload": [],
    }
    body = json.dumps(event).encode()
    try:
        reply = relay.send(subscription, event["id"], body)
    except webhooks.DeliveryError as exc:
        return {"id": event["id"], "delivered": False, "status": None, "error": str(exc)}
    ok = 200 <= reply.status < 300
    return {
        "id": event["id"],
        "delivered": ok,
        "status": reply.status,
        "error": None if ok else reply.excerpt[:300],
    }


def health(subscription: Subscription) -> dict[str, Any]:
    cursors = list(subscription.cursors.all())
    backlog = recent = 0
    minute_ago = now_us() - 60_000_000
    for cursor in cursors:
        rows = OutboxEvent.objects.filter(
            connector_id=subscription.connector_id, partition=cursor.partition
        )
        backlog += rows.filter(id__gt=cursor.last_id).count()
        delivered = rows.filter(id__lte=cursor.last_id, time__gte=minute_ago)
        if subscription.types:
            delivered = delivered.filter(type__in=subscription.types)
        recent += delivered.count()
    return {
        "last_success": subscription.last_success_at,
        "last_error": subscription.last_error or None,
        "last_error_at": subscription.last_error_at,
        "delivered": subscription.delivered,
        "per_minute": recent,  # of the events of the last minute, those delivered
        "backlog": backlog,
        "dead_letters": DeadLetter.objects.filter(
            subscription=subscription, replayed_at__isnull=True
        ).count(),
        "retrying": sum(1 for c in cursors if c.attempts),
    }


def as_json(subscription: Subscription) -> dict[str, Any]:
    """Never the secret nor the headers' values (they may hold credentials): their names."""
    names = (
        list(json.loads(keys.decrypt(subscription.headers_encrypted)))
        if (subscription.headers_encrypted)
        else []
    )
    if subscription.kind == Subscription.Kind.AMQP:
        broker = json.loads(keys.decrypt(subscription.destination_encrypted))
        destination = {
            "webhook": None,
            "amqp": {
                "url": subscription.url,
                "exchange": broker["exchange"],
                "routing_key": broker["routing_key"],
            },
        }
    else:
        destination = {"webhook": {"url": subscription.url, "headers": names}, "amqp": None}
    return {
        "id": subscription.id,
        "types": subscription.types,
        **destination,
        "batch": subscription.batch_size,
        "enabled": subscription.enabled,
        "disabled_reason": subscription.disabled_reason or None,
        "created": subscription.created_at,
        "health": health(subscription),
    }


def _host(url: str) -> str:
    from urllib.parse import urlsplit

    return urlsplit(url).hostname or "?"


def dead_letter_json(letter: DeadLetter) -> dict[str, Any]:
    return {
        "id": letter.id,
        "events": body if isinstance(body := json.loads(letter.body), list) else [body],
        "attempts": letter.attempts,
        "last_status": letter.last_status,
        "last_error": letter.last_error or None,
        "last_response": letter.last_response or None,
        "dead_since": letter.created_at,
        "replay_requested": letter.replay_requested_at,
        "replayed": letter.replayed_at,
    }


def recent_dead_letters(subscription: Subscription, limit: int = 5) -> list[dict[str, Any]]:
    """The newest dead letters not replayed yet, for the Events section."""
    letters = DeadLetter.objects.filter(subscription=subscription, replayed_at__isnull=True)
    return [dead_letter_json(d) for d in letters.order_by("-id")[:limit]]


def failing_json(subscription: Subscription) -> list[dict[str, Any]]:
    """The events being retried now: one per partition held back, with its last error."""
    found = []
    for cursor in subscription.cursors.filter(attempts__gt=0).order_by("partition"):
        event = (
            OutboxEvent.objects.filter(
                connector_id=subscription.connector_id,
                partition=cursor.partition,
                id__gt=cursor.last_id,
            )
            .order_by("id")
            .first()
        )
        if event is not None:
            found.append(
                {
                    "event": outbox.event_json(event),
                    "attempts": cursor.attempts,
                    "failing_since": cursor.failing_since,
                    "next_attempt": cursor.next_attempt_at,
                    "last_error": subscription.last_error or None,
                }
            )
    return found


def request_replay(subscription: Subscription, ids: list[int] | None, *, actor=None) -> int:
    """Ask the relay to send these dead letters again (all not yet replayed when `ids` is
    None); the number asked for."""
    letters = DeadLetter.objects.filter(subscription=subscription, replayed_at__isnull=True)
    if ids is not None:
        letters = letters.filter(pk__in=ids)
    with transaction.atomic():
        count = letters.update(replay_requested_at=timezone.now(), next_replay_at=0)
        if count:
            events.record(
                subscription.connector_id,
                EventType.SETTINGS_CHANGED,
                f"Event subscription {subscription.id}: replay of {count} dead letters asked",
                actor=actor,
                payload={"subscription": subscription.id, "count": count},
            )
    if count:
        outbox.wake()
    return count


def redeliver(
    subscription: Subscription, since_us: int, *, actor=None, source_ip=None
) -> dict[str, int]:
    """Deliver again every event of the subscription's connector from `since_us` on, in
    order, as far as the outbox still holds them (delivered rows are kept
    EVENTS_OUTBOX_RETENTION_DAYS). Each partition's cursor moves back to just before its
    first event at or after `since_us`, so a device's events restart at one point and stay
    in order; events after the range the receiver lost arrive a second time under the same
    ids (receivers drop duplicates by id). The lease is taken from whichever relay holds a
    cursor, so its in-flight save cannot undo the rewind. Returns the events owed again and
    the oldest time the outbox still holds."""
    rows = OutboxEvent.objects.filter(connector_id=subscription.connector_id)
    if subscription.types:
        rows = rows.filter(type__in=subscription.types)
    owed = 0
    with transaction.atomic():
        cursors = DeliveryCursor.objects.select_for_update().filter(subscription=subscription)
        for cursor in cursors:
            part = rows.filter(partition=cursor.partition)
            first = part.filter(time__gte=since_us).aggregate(first=Min("id"))["first"]
            if first is None or first > cursor.last_id:
                owed += part.filter(id__gt=cursor.last_id).count()
                continue  # nothing delivered since then in this partition
            DeliveryCursor.objects.filter(pk=cursor.pk).update(
                last_id=first - 1,
                attempts=0,
                failing_since=None,
                next_attempt_at=0,
                lease_owner="",
                lease_until=0,
            )
            owed += part.filter(id__gte=first).count()
        oldest = rows.aggregate(oldest=Min("time"))["oldest"]
        events.record(
            subscription.connector_id,
            EventType.SETTINGS_CHANGED,
            f"Event subscription {subscription.id}: events since {_moment(since_us)}"
            f" delivered again ({owed} owed)",
            actor=actor,
            source_ip=source_ip,
            payload={"subscription": subscription.id, "since": since_us, "owed": owed},
        )
    outbox.wake()
    return {"owed": owed, "oldest": oldest}


def _moment(us: int) -> str:
    return dt.datetime.fromtimestamp(us / 1_000_000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def settings_summary(connector: Connector) -> dict[str, Any]:
    """The `events` part of the settings JSON (read-only: subscriptions are managed at
    `…/events/subscription`): which event types leave the connector, and to how many."""
    enabled = list(connector.subscriptions.filter(enabled=True).values_list("types", flat=True))
    types: set[str] = set()
    for chosen in enabled:
        types |= set(chosen or outbox.TYPES)
    return {
        "types": [t for t in outbox.TYPES if t in types],
        "subscriptions": len(enabled),
    }
