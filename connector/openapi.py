"""The management API's request and response bodies as OpenAPI schemas (SPEC.md section 5).

One home for the shapes the views produce and accept, so the served description (`/api:1/
schema/`) lets a schema-driven client or fuzzer reach every real field. The views validate
on their own (forms, `devices.api._object`): these schemas describe that validation, and
`tests/test_openapi.py` runs schemathesis against a live server to keep the two in step.
"""

from __future__ import annotations

from typing import Any

from connector.identity import Casing, IdentityType
from connector.models import HTTP_PROTOCOL, MQTT_PROTOCOL, AuthType, EventType
from connector.outbox import TYPES as OUTBOX_TYPES
from devices.models import Status
from devices.resources import FORMATS

Schema = dict[str, Any]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(properties: dict[str, Schema], *, required: bool | list[str] = True, **extra) -> Schema:
    """A closed object: unknown fields are refused (400) by every view."""
    names = list(properties) if required is True else (required or [])
    schema: Schema = {"type": "object", "properties": properties, "additionalProperties": False}
    if names:
        schema["required"] = names
    return {**schema, **extra}


def nullable(schema: Schema) -> Schema:
    return {**schema, "nullable": True}


STRING, BOOLEAN = {"type": "string"}, {"type": "boolean"}
INTEGER = {"type": "integer", "format": "int64"}
MICROSECONDS = {**INTEGER, "description": "µs since the Unix epoch"}
PEM = {"type": "string", "description": "PEM text"}

RESOURCE = obj(
    {
        "format": {"type": "string", "enum": list(FORMATS)},
        "unit": {"type": "string", "maxLength": 32},
        "settable": BOOLEAN,
        "allowed": {
            "type": "array",
            "maxItems": 100,
            "items": {"anyOf": [STRING, {"type": "number"}, BOOLEAN]},
            "description": "values, or ranges like 9-11 for numbers",
        },
        "initial": nullable({"anyOf": [STRING, {"type": "number"}, BOOLEAN]}),
    },
    required=False,
)
RESOURCES = {
    "type": "object",
    "additionalProperties": ref("Resource"),
    "description": "alias (1-64 letters, digits, '_', '.', '-') → definition",
}

_VENDOR_OPTIONS_OUT = {
    "type": "object",
    "description": "DigiCert: profile_name, validity_months, api_key_set; local CA: ca_certificate",
    "properties": {
        "profile_name": STRING,
        "validity_months": nullable(INTEGER),
        "api_key_set": BOOLEAN,
        "ca_certificate": nullable(PEM),
    },
    "additionalProperties": False,
}


def _settings(*, writable: bool) -> Schema:
    """The settings JSON; as a PATCH body every field is optional, and only the writable ones
    (plus the read-only `fqdn` and `protocol.name`, accepted unchanged) may be sent."""
    required: bool | list[str] = not writable
    auth_types = {"type": "string", "enum": list(AuthType.values)}
    vendor_options = (
        obj(
            {
                "profile_name": STRING,
                "api_key": {**STRING, "description": "write-only: never read back"},
                "validity_months": nullable(INTEGER),
                "ca_certificate": PEM,
                "ca_private_key": {**PEM, "description": "write-only: never read back"},
            },
            required=False,
        )
        if writable
        else _VENDOR_OPTIONS_OUT
    )
    return obj(
        {
            "fqdn": STRING,
            "protocol": obj(
                {
                    "name": {"type": "string", "enum": [HTTP_PROTOCOL, MQTT_PROTOCOL]},
                    "devmode": BOOLEAN,
                },
                required=required,
            ),
            "provisioning": obj(
                {
                    "enabled": BOOLEAN,
                    "auth_type": auth_types,
                    "presenter_identity": BOOLEAN,
                    "ip_whitelisting": obj(
                        {
                            "enabled": BOOLEAN,
                            "allowed": {
                                "type": "array",
                                "items": STRING,
                                "maxItems": 1000,
                                "description": "addresses or CIDR ranges",
                            },
                        },
                        required=required,
                    ),
                    "activation_period_hours": {**INTEGER, "minimum": 0},
                },
                required=required,
            ),
            "identity_format": obj(
                {
                    "prefix": STRING,
                    "type": {"type": "string", "enum": list(IdentityType.values)},
                    "options": obj(
                        {
                            "casing": {"type": "string", "enum": list(Casing.values)},
                            "length": nullable({**INTEGER, "minimum": 0}),
                        },
                        required=required,
                    ),
                },
                required=required,
            ),
            "pki": obj(
                {
                    "enabled": BOOLEAN,
                    "client_ca": {
                        "type": "array",
                        "items": PEM,
                        "description": "the CA certificates devices' certificates chain to",
                    },
                    "vendor": obj(
                        {
                            "name": nullable({"type": "string", "enum": ["digicert", "local"]}),
                            "options": vendor_options,
                        },
                        required=required,
                    ),
                },
                required=required,
            ),
            "resources": RESOURCES,
            "events": obj(
                {
                    "types": {
                        "type": "array",
                        "items": {"type": "string", "enum": list(OUTBOX_TYPES)},
                    },
                    "subscriptions": INTEGER,
                },
                required=required,
                description="read-only: subscriptions are managed at …/events/subscription",
            ),
        },
        required=required,
    )


TAG = obj({"name": STRING, "value": STRING})
TAGS = {"type": "array", "items": ref("Tag")}
STATE_ENTRY = obj(
    {"reported": nullable(STRING), "set": nullable(STRING), "timestamp": nullable(MICROSECONDS)}
)
STATE = {"type": "object", "additionalProperties": ref("StateEntry")}

IDENTITY = obj(
    {
        "identity": STRING,
        "auth": obj(
            {
                "type": nullable({"type": "string", "enum": list(AuthType.values)}),
                "expire": nullable(MICROSECONDS),
            }
        ),
        "status": {"type": "string", "enum": list(Status.values)},
        "locked": BOOLEAN,
        "reprovision": BOOLEAN,
        "devmode": BOOLEAN,
        "lastip": nullable(STRING),
        "lastseen": nullable(MICROSECONDS),
        "online": BOOLEAN,
        "tags": TAGS,
        "state": STATE,
    }
)

COMPONENTS: dict[str, Schema] = {
    "Settings": _settings(writable=False),
    "SettingsPatch": _settings(writable=True),
    "Resource": RESOURCE,
    "Tag": TAG,
    "StateEntry": STATE_ENTRY,
    "Identity": IDENTITY,
    "IdentityPage": obj(
        {"mayLoadMore": BOOLEAN, "devices": {"type": "array", "items": ref("Identity")}}
    ),
    "IdentityPut": obj(
        {
            "auth": obj(
                {
                    "type": {"type": "string", "enum": [*AuthType.values, "csr"]},
                    "key": {**PEM, "description": "the certificate, or a CSR to sign (type csr)"},
                    "expire": {**MICROSECONDS, "description": "end of the activation window"},
                },
                required=False,
            ),
            "locked": BOOLEAN,
            "tags": TAGS,
        },
        required=False,
    ),
    "IdentityPatch": obj(
        {
            "auth": obj({"expire": {**MICROSECONDS, "description": "0 revokes"}}, required=False),
            "locked": BOOLEAN,
            "tags": TAGS,
            "reprovision": {"type": "boolean", "enum": [True], "description": "revokes"},
        },
        required=False,
    ),
    "Certificate": obj({"certificate": PEM}),
    "State": STATE,
    "StatePatch": {
        "type": "object",
        "minProperties": 1,
        "additionalProperties": {"anyOf": [STRING, {"type": "number"}, BOOLEAN]},
        "description": "alias → value, for settable aliases",
    },
    "History": obj(
        {
            "mayLoadMore": BOOLEAN,
            "points": {
                "type": "array",
                "items": obj({"timestamp": INTEGER, "value": STRING}),
                "description": "newest first; timestamp in µs since the epoch",
            },
        }
    ),
    "ImportReport": obj({"created": INTEGER, "skipped": INTEGER, "updated": INTEGER}),
    "ImportErrors": obj(
        {
            "errors": {
                "type": "array",
                "items": obj({"line": nullable(INTEGER), "message": STRING}),
            },
            "error_count": INTEGER,
        },
        required=["errors"],
    ),
    "Event": obj(
        {
            "id": INTEGER,
            "time": MICROSECONDS,
            "type": {"type": "string", "enum": list(EventType.values)},
            "identity": nullable(STRING),
            "source_ip": nullable(STRING),
            "actor": nullable(STRING),
            "summary": STRING,
            "payload": {"type": "object", "additionalProperties": True},
        }
    ),
    "EventPage": obj({"mayLoadMore": BOOLEAN, "events": {"type": "array", "items": ref("Event")}}),
    "SubscriptionIn": obj(
        {
            "types": {"type": "array", "items": {"type": "string", "enum": list(OUTBOX_TYPES)}},
            "webhook": obj(
                {
                    "url": {**STRING, "description": "https:// (http only where allowed)"},
                    "headers": {
                        "type": "object",
                        "additionalProperties": STRING,
                        "maxProperties": 20,
                        "description": "extra headers sent with each delivery (stored encrypted)",
                    },
                },
                required=["url"],
            ),
            "batch": {
                **INTEGER,
                "minimum": 1,
                "maximum": 100,
                "description": "events per delivery",
            },
            "enabled": BOOLEAN,
        },
        required=["webhook"],
    ),
    "SubscriptionPatch": obj(
        {
            "types": {"type": "array", "items": {"type": "string", "enum": list(OUTBOX_TYPES)}},
            "webhook": obj(
                {
                    "url": STRING,
                    "headers": {"type": "object", "additionalProperties": STRING},
                },
                required=False,
            ),
            "batch": {**INTEGER, "minimum": 1, "maximum": 100},
            "enabled": BOOLEAN,
            "amqp": obj(
                {
                    "url": {**STRING, "description": "amqps://user:password@host:5671/vhost"},
                    "exchange": {**STRING, "description": "a durable topic exchange"},
                    "routing_key": {
                        **STRING,
                        "description": "template: {connector}, {type}, {identity}",
                    },
                },
                required=["url"],
            ),
        },
        required=False,
    ),
    "SubscriptionCreated": obj({"id": STRING, "secret": {**STRING, "description": "whsec_…"}}),
    "Subscription": obj(
        {
            "id": STRING,
            "types": {"type": "array", "items": STRING},
            "webhook": nullable(
                obj({"url": STRING, "headers": {"type": "array", "items": STRING}})
            ),
            "amqp": nullable(obj({"url": STRING, "exchange": STRING, "routing_key": STRING})),
            "batch": INTEGER,
            "enabled": BOOLEAN,
            "disabled_reason": nullable(STRING),
            "created": {"type": "string", "format": "date-time"},
            "health": obj(
                {
                    "last_success": nullable({"type": "string", "format": "date-time"}),
                    "last_error": nullable(STRING),
                    "last_error_at": nullable({"type": "string", "format": "date-time"}),
                    "delivered": INTEGER,
                    "per_minute": INTEGER,
                    "backlog": INTEGER,
                    "dead_letters": INTEGER,
                    "retrying": INTEGER,
                }
            ),
        }
    ),
    "SubscriptionList": {"type": "array", "items": ref("Subscription")},
    "TestDelivery": obj(
        {
            "id": STRING,
            "delivered": BOOLEAN,
            "status": nullable(INTEGER),
            "error": nullable(STRING),
        }
    ),
    "Deliveries": obj(
        {
            "dead": {"type": "array", "items": ref("DeadLetter")},
            "failed": {"type": "array", "items": ref("Retrying")},
        },
        required=False,
    ),
    "DeadLetter": obj(
        {
            "id": INTEGER,
            "events": {
                "type": "array",
                "items": {"type": "object", "additionalProperties": True},
                "description": "what the delivery carried: one event, or a batch",
            },
            "attempts": INTEGER,
            "last_status": nullable(INTEGER),
            "last_error": nullable(STRING),
            "last_response": nullable(STRING),
            "dead_since": {"type": "string", "format": "date-time"},
            "replay_requested": nullable({"type": "string", "format": "date-time"}),
            "replayed": nullable({"type": "string", "format": "date-time"}),
        }
    ),
    "Retrying": obj(
        {
            "event": {"type": "object", "additionalProperties": True},
            "attempts": INTEGER,
            "failing_since": nullable(MICROSECONDS),
            "next_attempt": MICROSECONDS,
            "last_error": nullable(STRING),
        }
    ),
    "ReplayIn": obj(
        {"ids": {"type": "array", "items": INTEGER, "description": "none: every dead letter"}},
        required=False,
    ),
    "ReplayAccepted": obj({"replaying": INTEGER}),
    "RedeliverIn": obj(
        {
            "since": {
                "oneOf": [STRING, MICROSECONDS],
                "description": "ISO date/time (UTC) or µs since the epoch",
            }
        }
    ),
    "RedeliverAccepted": obj(
        {
            "owed": INTEGER,
            "oldest": {**nullable(MICROSECONDS), "description": "the oldest event still held"},
        }
    ),
    "ContentItem": obj(
        {
            "id": {**STRING, "pattern": "^[A-Za-z0-9._-]{1,128}$"},
            "type": STRING,
            "length": INTEGER,
            "last_modified": {**STRING, "format": "date-time"},
            "description": STRING,
            "tags": {"type": "object", "additionalProperties": STRING},
            "sha256": STRING,
        }
    ),
    "ContentList": {
        "type": "array",
        "items": {"anyOf": [STRING, ref("ContentItem")]},
        "description": "names; with full=true, the item objects",
    },
    "UploadDescriptor": obj(
        {
            "method": {"type": "string", "enum": ["POST"]},
            "enctype": {"type": "string", "enum": ["multipart/form-data"]},
            "url": STRING,
            "inputs": {"type": "object", "additionalProperties": STRING},
            "field": STRING,
            "expires_at": {**STRING, "format": "date-time"},
            "max_size": INTEGER,
        },
        description="POST `inputs` and the file (in `field`) to `url` before `expires_at`",
    ),
    "DownloadLink": obj({"method": {"type": "string", "enum": ["GET"]}, "url": STRING}),
    "FieldErrors": {
        "type": "object",
        "additionalProperties": STRING,
        "description": "field (or JSON path) → what is wrong with it",
    },
    "Detail": obj({"detail": STRING}),
}
