"""`GET /provision/download`: the content area as devices see it (SPEC.md section 9).

No query: the item names, one per line. `?id=<name>&info=true`: one line
`<type>,<size>,<updated unix s>,<description>`. `?id=<name>`: the bytes, with `ETag` (the
sha256), `Last-Modified`, `Accept-Ranges`, one `Range` (`a-b`, `a-`, `-n`) answered `206`,
`If-Range`, and `If-None-Match` answered `304`. The file is opened here, before the answer
starts, so a replacement committed meanwhile does not mix into this download.

Any device credential (token, password, certificate) lists and fetches; a signed link from
the management API (`expires`, `signature`) fetches that one item without one. Each download
is a `content_in` event (who, which item, how many bytes went out) when it ends.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import parse_qs

from django.db import transaction
from django.http import HttpRequest
from django.utils.http import http_date, parse_http_date_safe

from connector import content, events, outbox
from connector.models import Connector, ContentItem, EventType, now_us
from provisioning import rules
from provisioning.answers import NOT_ALLOWED, NOT_FOUND, Answer, Result, Stream, text
from provisioning.auth import DeviceRow, client_ip

CSV = "text/csv; charset=utf-8"
RANGE_RE = re.compile(r"bytes=(\d*)-(\d*)")


def parse_range(header: str, size: int) -> tuple[int, int] | None | bool:
    """The one byte range `Range` asks for as (start, length); None: the whole file (no
    header, or one this server does not split, as several ranges); False: unsatisfiable."""
    found = RANGE_RE.fullmatch(header.strip().replace(" ", ""))
    if not found or (not found[1] and not found[2]):
        return None
    first, last = found[1], found[2]
    if not first:  # the last n bytes
        n = int(last)
        if n == 0 or size == 0:
            return False
        return max(0, size - n), min(n, size)
    start = int(first)
    if start >= size:
        return False
    end = min(int(last), size - 1) if last else size - 1
    if end < start:
        return None  # syntactically invalid: ignored (RFC 9110 14.1.1)
    return start, end - start + 1


def download(
    request: HttpRequest, connector_id: str, authenticate: Callable[..., DeviceRow | Answer]
) -> Result:
    """`authenticate` is the device API's own (provisioning.api), passed in by its route."""
    if request.method not in ("GET", "HEAD"):
        return NOT_ALLOWED
    query = parse_qs(request.META.get("QUERY_STRING", ""), keep_blank_values=True)
    name = (query.get("id") or [""])[0]
    signature, expires = (query.get("signature") or [""])[0], (query.get("expires") or [""])[0]
    device: DeviceRow | None = None
    if signature and name:
        devmode = (
            Connector.objects.filter(pk=connector_id).values_list("devmode", flat=True).first()
        )
        if devmode is None:
            return NOT_FOUND
        if not rules.transport_allowed(request.is_secure(), devmode):
            return text(403, rules.PLAIN_HTTP)
        if not content.download_signed(connector_id, name, expires, signature):
            return text(403, "this download link is not valid (expired or altered)")
    else:
        found = authenticate(request, connector_id)
        if isinstance(found, Answer):
            return found
        device = found
    ip = client_ip(request)
    content.settle_pending(connector_id)
    if not name:
        names = list(content.items(connector_id).values_list("name", flat=True))
        return Answer(200, "".join(f"{n}\n" for n in names), content_type=CSV)
    item = ContentItem.objects.filter(connector_id=connector_id, name=name).first()
    if item is None:
        return text(404, f"no content item named {name}"[:200])
    if device is not None and (query.get("info") or [""])[0].lower() == "true":
        updated = int(item.updated_at.timestamp())
        line = f"{item.content_type},{item.size},{updated},{item.description}"
        return Answer(200, line, content_type=CSV)
    return _bytes(request, item, device, ip)


def _bytes(request: HttpRequest, item: ContentItem, device: DeviceRow | None, ip: str) -> Result:
    etag = content.etag(item)
    modified = http_date(item.updated_at.timestamp())
    headers = [
        ("ETag", etag),
        ("Last-Modified", modified),
        ("Accept-Ranges", "bytes"),
        ("Cache-Control", "private, no-cache"),
    ]
    inm = request.META.get("HTTP_IF_NONE_MATCH")
    if inm is not None and _etag_matches(inm, etag):
        return Answer(304, "", tuple(headers))
    if content.on_s3():
        from connector import s3

        url = s3.presigned_get(item, 300)
        _note(item, device, ip, item.size, redirected=True)
        return Answer(307, "", (("Location", url), ("Cache-Control", "no-store")))
    status, start, length = 200, 0, item.size
    wanted = request.META.get("HTTP_RANGE")
    if wanted is not None and _if_range_holds(request.META.get("HTTP_IF_RANGE"), etag, item):
        found = parse_range(wanted, item.size)
        if found is False:
            return Answer(416, "", (("Content-Range", f"bytes */{item.size}"), *headers))
        if found is not None:
            start, length = found
            status = 206
            end = start + length - 1
            headers.append(("Content-Range", f"bytes {start}-{end}/{item.size}"))
    try:
        file = content.storage().open(item.blob, "rb") if request.method == "GET" else None
    except FileNotFoundError:
        return NOT_FOUND  # deleted (or replaced and cleaned up) since the row was read
    headers.insert(0, ("Content-Type", item.content_type))
    if request.method == "HEAD":
        return Stream(status, tuple(headers), None, start, length)

    def done(sent: int) -> None:
        _note(item, device, ip, sent, complete=sent == length, offset=start)

    return Stream(status, tuple(headers), file, start, length, done)


def _etag_matches(header: str, etag: str) -> bool:
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return "*" in tags or etag in tags


def _if_range_holds(header: str | None, etag: str, item: ContentItem) -> bool:
    """`If-Range`: the range applies only to the version the client has (an ETag or a date);
    for another version it gets the whole file, never a mix of two."""
    if header is None:
        return True
    header = header.strip()
    if header.startswith('"'):
        return header == etag
    when = parse_http_date_safe(header)
    return when is not None and int(item.updated_at.timestamp()) <= when


def _note(
    item: ContentItem,
    device: DeviceRow | None,
    ip: str,
    sent: int,
    *,
    complete: bool = True,
    offset: int = 0,
    redirected: bool = False,
) -> None:
    """The `content_in` event of a download (and the item's count, for a device's)."""
    how = "" if complete else " (incomplete)"
    if offset:
        how += f" from byte {offset}"
    via = " through a signed link" if device is None else ""
    payload = {"id": item.name, "bytes": sent, "complete": complete, "offset": offset}
    if redirected:
        payload["redirected"] = True
    with transaction.atomic():
        _write_note(item, device, ip, sent, complete, payload, f"{via}: {sent} bytes{how}")


def _write_note(item, device, ip, sent, complete, payload, said) -> None:
    events.record(
        item.connector_id,
        EventType.CONTENT_IN,
        f"Downloaded {item.name}{said}",
        identity=device.identity if device else "",
        source_ip=ip,
        payload=payload,
    )
    if device is None:
        return
    if complete:
        content.counted_download(item.pk)
    values = {"id": item.name, "bytes": sent}
    when = now_us()
    payload_json = outbox.payload_json([(when, values)])
    row = outbox.row(
        item.connector_id, "content_in", device.id, device.identity, ip, when, payload_json
    )
    outbox.add([row])
