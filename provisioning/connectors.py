"""The one per-process cache of connectors' device-facing settings.

An entry holds a connector's settings as last read, the fingerprint of the settings that
activation checks, and its resource definitions with their version. It is filled by one
loader (`load`, one query) and trusted only for what a statement confirms before it acts:
a claim checks the fingerprint, a write the definitions' version, in the statement that
stores it. When they differ the job is not stored and the explanation reads the connector
afresh (`load` again), so an entry is never wrong for longer than one refused job, on every
database backend alike.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache

from django.db import connection

from connector.models import Connector
from connector.sql import run as sql_run
from connector.sql import tables
from provisioning import ratelimit
from provisioning.models import AuthFailure

FIELDS = (
    "id",
    "devmode",
    "protocol_name",
    "auth_type",
    "provisioning_enabled",
    "presenter_identity",
    "ip_whitelisting_enabled",
    "ip_allowed",
    "id_prefix",
    "id_type",
    "id_length",
    "id_casing",
    "pki_enabled",
    "resources",
    "resources_version",
)
# What activation checks of a connector: a digest of these tells whether they changed.
FINGERPRINT_FIELDS = tuple(f for f in FIELDS if f not in ("id", "resources", "resources_version"))


@dataclass(frozen=True, slots=True)
class CachedConnector:
    connector: Connector  # the device-facing fields only; never saved
    fingerprint: str  # of FINGERPRINT_FIELDS, as `sql_fingerprint` computes it
    # Read on every device write: plain attributes, taken from the model once.
    id: str = field(init=False)
    resources: dict = field(init=False)
    resources_version: int = field(init=False)

    def __post_init__(self) -> None:
        connector = self.connector
        object.__setattr__(self, "id", connector.pk)
        object.__setattr__(self, "resources", connector.resources or {})
        object.__setattr__(self, "resources_version", connector.resources_version)


_CACHE: dict[str, CachedConnector] = {}


def cached(connector_id: str) -> CachedConnector | None:
    """The connector as `load` last read it in this process (see the module's docstring)."""
    return _CACHE.get(connector_id)


def forget(connector_id: str) -> None:
    _CACHE.pop(connector_id, None)


def load(connector_id: str, ip: str) -> tuple[CachedConnector | None, int]:
    """Read the connector's device-facing settings and this address's failure count in the
    current window (one query), and keep the connector in the cache."""
    rows = sql_run(_load_sql(), [ip, ratelimit.current_window(), connector_id])
    if not rows:
        forget(connector_id)
        return None, 0
    *values, fingerprint, failures = rows[0]
    fields = dict(zip(FIELDS, values, strict=True))
    for name in ("ip_allowed", "resources"):
        if isinstance(fields[name], str):
            fields[name] = json.loads(fields[name])
    entry = CachedConnector(Connector(**fields), fingerprint)
    _CACHE[connector_id] = entry
    return entry, failures or 0


def ensure(connector_id: str, ip: str) -> CachedConnector | None:
    """The cached entry, loaded first when there is none."""
    return cached(connector_id) or load(connector_id, ip)[0]


def sql_fingerprint(alias: str) -> str:
    """An expression for the fingerprint of a connector row's activation settings: their md5
    on PostgreSQL, on SQLite (no md5) the settings themselves, each quoted as a literal."""
    qn = connection.ops.quote_name
    columns = [f"{alias}.{qn(f)}" for f in FINGERPRINT_FIELDS]
    if connection.vendor == "postgresql":
        return f"md5(ROW({', '.join(columns)})::text)"
    return " || ',' || ".join(f"quote({column})" for column in columns)


@lru_cache(maxsize=1)
def _load_sql() -> str:
    qn = connection.ops.quote_name
    table, failure = tables(Connector, AuthFailure)
    return (
        f"SELECT {', '.join('c.' + qn(f) for f in FIELDS)}, {sql_fingerprint('c')}, "  # noqa: S608
        f"(SELECT f.count FROM {failure} f WHERE f.connector_id = c.id AND f.ip = %s"
        f" AND f.window_start = %s) FROM {table} c WHERE c.id = %s"
    )
