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


@register.filter
def pretty_json(value) -> str:
    """An event's payload, indented, for the Logs tab's expandable rows (escaped by the
    template like any text)."""
    import json

    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


@register.simple_tag(takes_context=True)
def device_api_base(context, connector) -> str:
    """The connector's device API as a device reaches it from where this page was served:
    scheme, host and port (`http://<id>.localhost:8000` locally)."""
    from connector.content_api import device_base_url

    request = context.get("request")
    if request is None:
        return f"https://{connector.fqdn}"
    return device_base_url(request, connector)
