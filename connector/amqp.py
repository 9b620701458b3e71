"""The message-broker sink: device events published to RabbitMQ (AMQP 0-9-1), one module.

Chosen because RabbitMQ is the broker most pipelines already run, and AMQP gives what the
outbox needs for at-least-once: persistent messages, publisher confirms (a publish returns
only once the broker has the message, or raises), and `mandatory` publishes (a message no
queue would take is refused, not dropped, so a consumer not yet bound loses nothing: the
relay retries it like a webhook that is down). `pika` is RabbitMQ's own Python client.

Each event is one message on a durable topic exchange, routed by a template (default
`{connector}.{type}`; `{identity}` also), `message_id` = the event id, JSON body as the
webhook's. Another broker is another module with the same two methods (`send`, `close`).
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import unquote, urlsplit

import pika
import pika.exceptions
from django.conf import settings

from connector import webhooks

DEFAULT_ROUTING = "{connector}.{type}"
PLACEHOLDERS = {"connector", "type", "identity"}
NAME = re.compile(r"[A-Za-z0-9_.:-]{1,200}")


def check(data: Any) -> tuple[dict[str, str], dict[str, str]]:
    """A broker destination `{"url", "exchange", "routing_key"}` checked: (clean, errors by
    JSON path)."""
    errors: dict[str, str] = {}
    if not isinstance(data, dict):
        return {}, {"amqp": "Must be an object."}
    for key in set(data) - {"url", "exchange", "routing_key"}:
        errors[f"amqp.{key}"] = "Unknown field."
    url = data.get("url")
    if not isinstance(url, str) or not url:
        errors["amqp.url"] = "Give the broker's URL: amqps://user:password@host:5671/vhost."
    elif reason := url_error(url):
        errors["amqp.url"] = reason
    exchange = data.get("exchange", "iot.events")
    if not isinstance(exchange, str) or not NAME.fullmatch(exchange) or exchange.startswith("amq."):
        errors["amqp.exchange"] = "An exchange name: letters, digits, _ . : - (not amq.…)."
    routing = data.get("routing_key", DEFAULT_ROUTING)
    if not isinstance(routing, str) or not 0 < len(routing) <= 200:
        errors["amqp.routing_key"] = "A routing key template of at most 200 characters."
    elif set(re.findall(r"{(\w*)}", routing)) - PLACEHOLDERS or re.search(r"{(?!\w+})", routing):
        errors["amqp.routing_key"] = "Placeholders: {connector}, {type}, {identity}."
    if errors:
        return {}, errors
    return {"url": url, "exchange": exchange, "routing_key": routing}, {}


def url_error(url: str) -> str | None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        return "Not a valid URL."
    if parts.scheme not in ("amqps", "amqp") or not parts.hostname:
        return "Use an amqps:// URL."
    if parts.scheme == "amqp" and not settings.EVENTS_ALLOW_PRIVATE_URLS:
        return "Use an amqps:// URL (plain amqp only with EVENTS_ALLOW_PRIVATE_URLS)."
    return webhooks.url_error(f"https://{parts.hostname}/")  # the same address rules


def display_url(url: str) -> str:
    """The URL without its password, for listing."""
    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{user}{parts.hostname}{port}{parts.path}"


def routing_key(template: str, event: dict[str, Any]) -> str:
    values = {name: str(event.get(name) or "-") for name in PLACEHOLDERS}
    return template.format(**values)[:255]


class Destination:
    """One broker connection and confirming channel for one batch of deliveries."""

    def __init__(self, config: dict[str, str]):
        parts = urlsplit(config["url"])
        tls = parts.scheme == "amqps"
        port = parts.port or (5671 if tls else 5672)
        address = webhooks.resolve(parts.hostname, port)  # vetted, then connected to
        vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
        params = pika.ConnectionParameters(
            host=address,
            port=port,
            virtual_host=vhost,
            credentials=pika.PlainCredentials(
                unquote(parts.username or "guest"), unquote(parts.password or "guest")
            ),
            socket_timeout=settings.EVENTS_TIMEOUT,
            blocked_connection_timeout=settings.EVENTS_TIMEOUT,
            connection_attempts=1,
            ssl_options=pika.SSLOptions(webhooks.tls_context(), parts.hostname) if tls else None,
        )
        self.exchange, self.routing = config["exchange"], config["routing_key"]
        try:
            self.connection = pika.BlockingConnection(params)
            self.channel = self.connection.channel()
            self.channel.confirm_delivery()
            self.channel.exchange_declare(self.exchange, "topic", durable=True)
        except pika.exceptions.AMQPError as exc:
            raise webhooks.DeliveryError(f"broker: {type(exc).__name__}: {exc}"[:300]) from None

    def send(self, msg_id: str, body: bytes, events: list[dict]) -> webhooks.Reply:
        """Publish each event as a persistent message, confirmed by the broker one by one."""
        try:
            for event in events:
                self.channel.basic_publish(
                    self.exchange,
                    routing_key(self.routing, event),
                    json.dumps(event).encode(),
                    pika.BasicProperties(
                        content_type="application/json",
                        delivery_mode=pika.DeliveryMode.Persistent,
                        message_id=event["id"],
                        timestamp=event["timestamp"] // 1_000_000,
                        type=event["type"],
                    ),
                    mandatory=True,
                )
        except pika.exceptions.UnroutableError:
            raise webhooks.DeliveryError("broker: no queue takes these events yet") from None
        except pika.exceptions.AMQPError as exc:
            raise webhooks.DeliveryError(f"broker: {type(exc).__name__}: {exc}"[:300]) from None
        return webhooks.Reply(200, None, "")

    def close(self) -> None:
        try:
            if self.connection.is_open:
                self.connection.close()
        except pika.exceptions.AMQPError:
            pass
