"""Device lists: filters and keyset pages, shared by the Devices tab, the API and CSV export.

Pages are keyed on the identity (unique per connector, indexed with the connector), so the
n-th page costs the same as the first at any number of devices: no OFFSET.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.db.models import Prefetch
from django.utils import timezone

from connector import safeinput
from connector.models import Connector, now_us
from devices.models import Device, DeviceTag, Status

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000


@dataclass(frozen=True)
class DeviceFilter:
    status: str = ""
    identity: str = ""  # prefix
    tag_name: str = ""
    tag_value: str | None = None  # None: any value
    cert_expires_days: int | None = None

    @classmethod
    def from_params(cls, params, *, tag_param: bool) -> tuple[DeviceFilter, dict[str, str]]:
        """Read filters from query parameters; API: `tag=name:value`, pages: two fields."""
        errors: dict[str, str] = {}
        status = params.get("status", "").strip()
        if status and status not in Status.values:
            errors["status"] = f"Unknown status; use one of {', '.join(Status.values)}."
        if tag_param:
            name, sep, value = params.get("tag", "").partition(":")
            tag_value = value if sep else None
        else:
            name = params.get("tag_name", "")
            tag_value = params.get("tag_value") or None
        days = None
        if raw := params.get("cert_expires_days", "").strip():
            try:
                days = safeinput.whole_number(raw, "cert_expires_days", high=3650)
            except safeinput.InputError:
                errors["cert_expires_days"] = "Give a number of days from 0 to 3650."
        return (
            cls(
                status=status,
                identity=params.get("identity", "").strip(),
                tag_name=name.strip(),
                tag_value=tag_value,
                cert_expires_days=days,
            ),
            errors,
        )

    @property
    def active(self) -> bool:
        return bool(self.status or self.identity or self.tag_name or self.cert_expires_days)


def filtered(connector: Connector, flt: DeviceFilter, now: int | None = None):
    now = now_us() if now is None else now
    qs = Device.objects.filter(connector=connector)
    if flt.status:
        qs = qs.with_status(flt.status, now)
    if flt.identity:
        qs = qs.filter(identity__startswith=flt.identity)
    if flt.tag_name:
        tags = DeviceTag.objects.filter(connector=connector, name=flt.tag_name)
        if flt.tag_value is not None:
            tags = tags.filter(value=flt.tag_value)
        qs = qs.filter(pk__in=tags.values("device_id"))
    if flt.cert_expires_days is not None:
        limit = timezone.now() + dt.timedelta(days=flt.cert_expires_days)
        qs = qs.filter(cert_not_after__isnull=False, cert_not_after__lte=limit)
    return qs


def with_details(qs):
    """Tags and activity for displaying rows: two extra queries per page, not per row."""
    return qs.select_related("activity").prefetch_related(
        Prefetch("tags", queryset=DeviceTag.objects.order_by("id"))
    )


def page(qs, *, after: str = "", before: str = "", limit: int | None = None):
    """One page in identity order: after `after`, or the page that ends before `before`.
    Returns (devices in ascending order, more_after, more_before)."""
    limit = limit or DEFAULT_LIMIT
    if before:
        rows = list(with_details(qs.filter(identity__lt=before).order_by("-identity"))[: limit + 1])
        more_before = len(rows) > limit
        rows = rows[:limit][::-1]
        return rows, True, more_before
    if after:
        qs = qs.filter(identity__gt=after)
    rows = list(with_details(qs.order_by("identity"))[: limit + 1])
    return rows[:limit], len(rows) > limit, bool(after)
