"""The relay: delivers the outbox (`connector.outbox`) to each subscription, at least once,
in order per device.

Each subscription has one cursor per partition (`DeliveryCursor`). A relay takes a lease on
the cursors it works (an UPDATE that succeeds only where the lease is free or already its
own), so whatever the number of server processes or `relay_events` commands, exactly one
relay delivers a partition at a time; a relay that dies (kill -9) loses its leases when they
run out (LEASE_S) and another takes over from the last cursor saved. Within a partition
events go one after another, in outbox order: one device's events are delivered in order, and
a failing event holds back only its partition. Cursors are saved after each batch, so a crash
re-delivers at most a batch: duplicates carry the same `id`.

Retries back off exponentially with jitter (honouring Retry-After) for EVENTS_RETRY_SECONDS,
after which the event is dead-lettered (kept with the last answer, replayable) and the
partition moves on. A 410 Gone disables the subscription.
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from connector import keys, outbox, webhooks
from connector.models import (
    DeadLetter,
    DeliveryCursor,
    OutboxEvent,
    Subscription,
    now_us,
)
from provisioning.rows import WRITER_LOCK

log = logging.getLogger(__name__)

LEASE_S = 15
EXPIRY_EVERY_S = 5  # how often a relay announces the activation windows that closed
BATCH = 100
# When caught up, a relay gathers events this long before its next look (seconds).
COALESCE_S = 0.05
MAX_BACKOFF_S = 3600


def backoff_s(attempts: int, retry_after: float | None = None) -> float:
    """Seconds before the next attempt: 1, 2, 4 … an hour at most, with ±50 % jitter; at
    least what the receiver asked for in Retry-After (a day at most)."""
    base = min(2 ** max(attempts - 1, 0), MAX_BACKOFF_S)
    wait = base * random.uniform(0.5, 1.5)  # noqa: S311 (jitter, not security)
    if retry_after is not None:
        wait = max(wait, min(retry_after, 86400.0))
    return wait


def signing_secrets(subscription: Subscription) -> list[str]:
    found = [keys.decrypt(subscription.secret_encrypted)]
    if subscription.previous_secret_encrypted and subscription.previous_until:
        if subscription.previous_until > timezone.now():
            found.append(keys.decrypt(subscription.previous_secret_encrypted))
    return found


def extra_headers(subscription: Subscription) -> dict[str, str]:
    if not subscription.headers_encrypted:
        return {}
    return json.loads(keys.decrypt(subscription.headers_encrypted))


class Destination:
    """A subscription's receiver for one batch: its secrets and headers decrypted once, one
    kept-alive connection."""

    def __init__(self, subscription: Subscription):
        self.secrets = signing_secrets(subscription)
        self.headers = extra_headers(subscription)
        self.sender = webhooks.Sender(subscription.url)

    def send(self, msg_id: str, body: bytes, events: list[dict] | None = None) -> webhooks.Reply:
        """One signed POST (Standard Webhooks headers; `webhook-id` is the event id)."""
        stamp = int(time.time())
        headers = {
            **self.headers,
            "webhook-id": msg_id,
            "webhook-timestamp": str(stamp),
            "webhook-signature": webhooks.signature_header(self.secrets, msg_id, stamp, body),
        }
        return self.sender.post(body, headers)

    def close(self) -> None:
        self.sender.close()


def destination_for(subscription: Subscription):
    """The sink of a subscription: a webhook, or a broker (`connector.amqp`). Each has
    `send(msg_id, body, events)` and `close()`."""
    if subscription.kind == Subscription.Kind.AMQP:
        from connector import amqp

        return amqp.Destination(json.loads(keys.decrypt(subscription.destination_encrypted)))
    return Destination(subscription)


def send(subscription: Subscription, msg_id: str, body: bytes) -> webhooks.Reply:
    """One delivery of `body` on a connection of its own (test events, replays)."""
    destination = destination_for(subscription)
    try:
        parsed = json.loads(body)
        return destination.send(msg_id, body, parsed if isinstance(parsed, list) else [parsed])
    finally:
        destination.close()


class Relay:
    def __init__(self, owner: str | None = None, initializer: Callable[[], None] | None = None):
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"[:64]
        self.initializer = initializer
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self.pool: ThreadPoolExecutor | None = None
        self.expiry_due = 0.0

    # --- running -----------------------------------------------------------------------------

    def start(self) -> Relay:
        self.pool = ThreadPoolExecutor(
            settings.EVENTS_RELAY_THREADS, "relay", initializer=self.initializer
        )
        self.thread = threading.Thread(target=self._loop, name="relay", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        outbox.pending.set()
        if self.thread is not None:
            self.thread.join(10)
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def _loop(self) -> None:
        if self.initializer is not None:
            self.initializer()
        try:
            while not self.stopping.is_set():
                try:
                    _handled, backlog = self.step()
                except Exception:  # a failing step must not end the relay
                    log.exception("relay step failed")
                    backlog = False
                if not backlog:
                    # Caught up: gather what comes for a moment (fewer, larger batches and
                    # cursor saves), then look when this process commits or at the poll.
                    self.stopping.wait(COALESCE_S)
                    outbox.pending.wait(settings.EVENTS_POLL_INTERVAL)
                    outbox.pending.clear()
        finally:
            self._release()

    def _release(self) -> None:
        try:
            DeliveryCursor.objects.filter(lease_owner=self.owner).update(lease_until=0)
        except Exception:  # the database may be gone at shutdown
            log.warning("could not release relay leases", exc_info=True)

    # --- one pass ----------------------------------------------------------------------------

    def step(self) -> tuple[int, bool]:
        """Lease what is due and deliver it: the events delivered or passed, and whether a
        partition had more than one batch waiting. The cursors moved are saved together,
        in one transaction (on SQLite, under the store's writer lock)."""
        if time.monotonic() >= self.expiry_due:
            self.expiry_due = time.monotonic() + EXPIRY_EVERY_S
            from devices.services import announce_expired

            announce_expired()
        replayed = self.replay_due()
        cursors = self.lease()
        if not cursors:
            return replayed, False
        if self.pool is None:
            outcomes = [self.deliver(cursor) for cursor in cursors]
        else:
            outcomes = list(self.pool.map(self.deliver, cursors))
        self._save_all([o for o in outcomes if o.changed])
        return replayed + sum(o.handled for o in outcomes), any(o.full for o in outcomes)

    def replay_due(self) -> int:
        """Send the dead letters whose replay was asked for, under their own event id. Each
        is claimed first (one relay sends it); a failed replay is tried again a minute on."""
        now = now_us()
        due = DeadLetter.objects.filter(
            replay_requested_at__isnull=False,
            replayed_at__isnull=True,
            next_replay_at__lte=now,
            subscription__enabled=True,
        ).select_related("subscription")[:50]
        sent = 0
        for letter in due:
            claimed = DeadLetter.objects.filter(pk=letter.pk, next_replay_at__lte=now).update(
                next_replay_at=now + 60_000_000
            )
            if not claimed:
                continue  # another relay has it
            sent_body = json.loads(letter.body)
            msg_id = (
                sent_body["id"]
                if isinstance(sent_body, dict)
                else f"batch_{sent_body[0]['id'].removeprefix('evt_')}_{len(sent_body)}"
            )
            try:
                reply = send(letter.subscription, msg_id, letter.body.encode())
                ok, error = 200 <= reply.status < 300, f"HTTP {reply.status}: {reply.excerpt[:200]}"
                letter.last_status, letter.last_response = reply.status, reply.excerpt[:1000]
            except webhooks.DeliveryError as exc:
                ok, error = False, str(exc)
            letter.attempts += 1
            if ok:
                letter.replayed_at = timezone.now()
                sent += 1
            else:
                letter.last_error = error[:500]
            letter.save(
                update_fields=[
                    "attempts",
                    "replayed_at",
                    "last_status",
                    "last_response",
                    "last_error",
                ]
            )
        return sent

    def lease(self) -> list[DeliveryCursor]:
        now = now_us()
        due = DeliveryCursor.objects.filter(
            subscription__enabled=True, next_attempt_at__lte=now
        ).filter(models_lease_free(self.owner, now))
        found = list(due.values_list("id", "lease_owner", "lease_until")[:256])
        if not found:
            return []
        ids = [cursor_id for cursor_id, _owner, _until in found]
        # Take free leases and renew ours when half gone: a write only then, not every step.
        stale = [
            cursor_id
            for cursor_id, owner, until in found
            if owner != self.owner or until < now + LEASE_S * 500_000
        ]
        if stale:
            with WRITER_LOCK.held():
                DeliveryCursor.objects.filter(id__in=stale).filter(
                    models_lease_free(self.owner, now)
                ).update(lease_owner=self.owner, lease_until=now + LEASE_S * 1_000_000)
        return list(
            DeliveryCursor.objects.select_related("subscription").filter(
                id__in=ids, lease_owner=self.owner
            )
        )

    def deliver(self, cursor: DeliveryCursor) -> Outcome:
        """Deliver one partition of one subscription from its cursor, until it is drained,
        an event fails, or a batch is done; save the cursor. Returns events handled."""
        subscription = cursor.subscription
        events = list(
            OutboxEvent.objects.filter(
                connector_id=subscription.connector_id,
                partition=cursor.partition,
                id__gt=cursor.last_id,
            ).order_by("id")[:BATCH]
        )
        handled = delivered = 0
        error = ""
        leased_at = time.monotonic()
        destination = None
        size = subscription.batch_size
        chunk: list[OutboxEvent] = []
        for number, event in enumerate(events):
            if subscription.types and event.type not in subscription.types:
                if not chunk:
                    cursor.last_id, handled = event.id, handled + 1  # nothing owed before it
                    continue
            else:
                chunk.append(event)
            last = number == len(events) - 1
            if not chunk or (len(chunk) < size and not last):
                continue
            if time.monotonic() - leased_at > LEASE_S / 3:
                if not self._renew(cursor):
                    # Another relay has the partition now: stop, save nothing.
                    return Outcome(cursor, subscription, handled, 0, "", False, False)
                leased_at = time.monotonic()
            msg_id, body, objects = message(chunk, batched=size > 1)
            if cursor.failing_since and not cursor.attempts and _expired(chunk[-1]):
                # The receiver is failing and the retry period of these events (not tried
                # yet) is over: they go to the dead letters unsent, so a long outage leaves
                # no more than that period of events owed, and no request per expired event.
                self._dead_letter(cursor, chunk[-1], body, None, "not sent: expired", "")
                cursor.last_id, handled, chunk = event.id, number + 1, []
                continue
            status, retry_after, excerpt = None, None, ""
            try:
                destination = destination or destination_for(subscription)
                reply = destination.send(msg_id, body, objects)
                status, retry_after, excerpt = reply.status, reply.retry_after, reply.excerpt
            except webhooks.DeliveryError as exc:
                error = str(exc)
            if status is not None and 200 <= status < 300:
                # Past the chunk and any unsubscribed events after it that were looked at.
                cursor.last_id, cursor.attempts, cursor.failing_since = event.id, 0, None
                handled, delivered = number + 1, delivered + len(chunk)
                chunk = []
                continue
            if status == 410:
                self._disable(subscription, "the receiver answered 410 Gone")
                break
            error = error or f"HTTP {status}: {excerpt[:200]}"
            self._failed(cursor, chunk[-1], body, status, error, excerpt, retry_after)
            break
        if destination is not None:
            destination.close()
        changed = bool(handled or error or cursor.attempts)
        full = len(events) == BATCH and handled == len(events)
        return Outcome(cursor, subscription, handled, delivered, error, changed, full)

    def _renew(self, cursor: DeliveryCursor) -> bool:
        until = now_us() + LEASE_S * 1_000_000
        renewed = DeliveryCursor.objects.filter(pk=cursor.pk, lease_owner=self.owner).update(
            lease_until=until
        )
        return renewed == 1

    def _failed(self, cursor, event, body, status, error, excerpt, retry_after) -> None:
        """A failed attempt: try again after a backoff, or, once the event is older than
        EVENTS_RETRY_SECONDS, dead-letter it and go on to the next (at once: the cursor
        stays failing, so the events after it that have expired too follow it unsent)."""
        now = now_us()
        cursor.attempts += 1
        cursor.failing_since = cursor.failing_since or now
        if _expired(event):
            self._dead_letter(cursor, event, body, status, error, excerpt)
            cursor.next_attempt_at = 0
            return
        wait = backoff_s(cursor.attempts, retry_after)
        cursor.next_attempt_at = now + int(wait * 1_000_000)

    def _dead_letter(self, cursor, event, body, status, error, excerpt) -> None:
        with WRITER_LOCK.held():
            DeadLetter.objects.create(
                subscription_id=cursor.subscription_id,
                event_id=event.id,
                body=body.decode(),
                attempts=cursor.attempts,
                last_status=status,
                last_error=error[:500],
                last_response=excerpt[:1000],
            )
        cursor.last_id, cursor.attempts = event.id, 0  # still failing_since: see deliver

    def _save_all(self, outcomes: list[Outcome]) -> None:
        if not outcomes:
            return
        now = timezone.now()
        with WRITER_LOCK.held(), transaction.atomic():
            for o in outcomes:
                DeliveryCursor.objects.filter(pk=o.cursor.pk, lease_owner=self.owner).update(
                    last_id=o.cursor.last_id,
                    attempts=o.cursor.attempts,
                    failing_since=o.cursor.failing_since,
                    next_attempt_at=o.cursor.next_attempt_at,
                )
            for subscription_id, delivered, error in _health(outcomes):
                health = {}
                if delivered:
                    health |= {"last_success_at": now, "delivered": F("delivered") + delivered}
                if error:
                    health |= {"last_error_at": now, "last_error": error[:500]}
                if health:
                    Subscription.objects.filter(pk=subscription_id).update(**health)

    def _disable(self, subscription: Subscription, reason: str) -> None:
        from connector import subscriptions

        subscriptions.disable(subscription, reason)


def _expired(event: OutboxEvent) -> bool:
    """Whether an event's retry period (EVENTS_RETRY_SECONDS from its commit) is over."""
    return now_us() - event.time >= settings.EVENTS_RETRY_SECONDS * 1_000_000


def message(events: list[OutboxEvent], *, batched: bool) -> tuple[str, bytes, list[dict]]:
    """The webhook-id and body of one delivery, and its event objects: one event object,
    or (batched) an array of them under an id naming the first event and how many."""
    objects = [outbox.event_json(event) for event in events]
    if not batched:
        return objects[0]["id"], json.dumps(objects[0]).encode(), objects
    return f"batch_{events[0].id}_{len(events)}", json.dumps(objects).encode(), objects


class Outcome(NamedTuple):
    """What delivering one partition did; saved with the others of its step."""

    cursor: DeliveryCursor
    subscription: Subscription
    handled: int  # events delivered or passed (types not subscribed)
    delivered: int
    error: str
    changed: bool  # the cursor moved or failed: to save
    full: bool  # a whole batch went: more may be waiting


def _health(outcomes: list[Outcome]) -> list[tuple[str, int, str]]:
    """Per subscription: events delivered in this step, and the last error."""
    found: dict[str, list] = {}
    for o in outcomes:
        entry = found.setdefault(o.subscription.pk, [0, ""])
        entry[0] += o.delivered
        entry[1] = o.error or entry[1]
    return [(pk, delivered, error) for pk, (delivered, error) in found.items()]


def models_lease_free(owner: str, now: int):
    from django.db.models import Q

    return Q(lease_owner=owner) | Q(lease_until__lt=now)


_running: Relay | None = None


def start_in_process(initializer: Callable[[], None] | None = None) -> Relay | None:
    """The relay of this worker (EVENTS_RELAY=worker), started once."""
    global _running
    if settings.EVENTS_RELAY != "worker" or _running is not None:
        return _running
    _running = Relay(initializer=initializer).start()
    return _running


def stop_in_process() -> None:
    global _running
    if _running is not None:
        _running.stop()
        _running = None
