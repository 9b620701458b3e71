"""Identity JSON (SPEC.md section 5). Never contains a secret."""

from __future__ import annotations

from devices.models import Device

# A device counts as online when it was seen this recently (µs).
ONLINE_WINDOW_US = 5 * 60 * 1_000_000


def state_json(values) -> dict:
    """Per alias: what the device reported, what the cloud set, when (µs)."""
    return {
        v.alias: {"reported": v.reported, "set": v.set, "timestamp": v.timestamp} for v in values
    }


def device_json(device: Device, now: int, state: dict | None = None) -> dict:
    activity = getattr(device, "activity", None)
    last_seen = activity.last_seen if activity else None
    return {
        "identity": device.identity,
        "auth": {"type": device.auth_type or None, "expire": device.expire},
        "status": device.status_at(now).value,
        "locked": device.locked,
        "reprovision": device.reprovision,
        "devmode": device.devmode,
        "lastip": activity.last_ip if activity else None,
        "lastseen": last_seen,
        "online": last_seen is not None and now - last_seen < ONLINE_WINDOW_US,
        "tags": device.tag_list,
        "state": state if state is not None else {},
    }
