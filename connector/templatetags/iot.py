"""Template filters for the connector pages."""

import datetime as dt

from django import template

register = template.Library()


@register.filter
def us_datetime(value):
    """µs since the epoch (event times, last seen) -> aware UTC datetime for `|date`."""
    if value in (None, ""):
        return None
    return dt.datetime.fromtimestamp(int(value) / 1_000_000, tz=dt.UTC)


@register.filter(name="bytes")
def byte_size(value):
    """A byte count as people read it: 1.5 MiB (exact bytes go in a title)."""
    from connector.content import human_size

    return human_size(int(value or 0))
