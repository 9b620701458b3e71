"""Resource values: what a write stores (checked against its definition) and what a read
answers (SPEC.md section 4)."""

from __future__ import annotations

from devices.models import AliasValue
from devices.resources import value_error
from provisioning.jobs import ValueRow
from provisioning.wire import WireError

# Longest value kept in an event's payload (the stored value is never cut).
EVENT_VALUE_CHARS = 200


def split_write(resources: dict, pairs: list[tuple[str, str]]) -> tuple[list[ValueRow], list]:
    """(rows to store, undefined aliases) for a device write.

    Raises WireError(400) naming the first value its definition refuses: nothing is stored.
    """
    stored, ignored = [], []
    for alias, value in pairs:
        definition = resources.get(alias)
        if definition is None:
            ignored.append(alias)  # logged, not stored (SPEC.md section 4)
            continue
        if reason := value_error(definition, value):
            raise WireError(400, f"{alias}: {reason}")
        stored.append(ValueRow(alias, value, value if definition.get("settable") else None))
    return stored, ignored


def short(value: str) -> str:
    return value if len(value) <= EVENT_VALUE_CHARS else value[:EVENT_VALUE_CHARS] + "…"


def current_value(definition: dict, reported: str | None, set_value: str | None) -> str | None:
    """What a read answers: the cloud's `set` for settable resources, else the device's
    `reported`; the definition's initial value until there is one."""
    value = set_value if definition.get("settable") else reported
    return value if value is not None else definition.get("initial")


def current_value_at(device_pk: int, alias: str, definition: dict) -> tuple[str, int] | None:
    """What a read of one alias answers, with the time it was stored (µs); None without a
    stored value (a long poll waits for one, the initial value is not news)."""
    row = (
        AliasValue.objects.filter(device_id=device_pk, alias=alias)
        .values_list("reported", "set", "timestamp")
        .first()
    )
    if row is None:
        return None
    value = current_value(definition, row[0], row[1])
    return None if value is None else (value, row[2])


def current_values(device_pk: int, resources: dict, aliases: list[str]) -> list[tuple[str, str]]:
    """Current values of the defined aliases that have one, in the order asked."""
    wanted = [a for a in dict.fromkeys(aliases) if a in resources]
    rows = {
        alias: (reported, set_value)
        for alias, reported, set_value in AliasValue.objects.filter(
            device_id=device_pk, alias__in=wanted
        ).values_list("alias", "reported", "set")
    }
    found = []
    for alias in wanted:
        value = current_value(resources[alias], *rows.get(alias, (None, None)))
        if value is not None:
            found.append((alias, value))
    return found
