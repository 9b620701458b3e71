"""The content area (SPEC.md section 9): files a manufacturer uploads for its devices.

One service function per change (start an upload, receive its bytes, delete), shared by the
management API, the Content tab and scripts; the rules (names, types, sizes, the quota, who
may fetch what) live here. Bytes live in Django's `content` storage: the filesystem under
CONTENT_DIR by default, an S3-compatible bucket with CONTENT_STORAGE=s3 (`connector.s3`).

Every upload is stored under a name of its own (`blob`) and becomes visible only once its
size and sha256 are checked, by swapping the item's row to it in one transaction: a device
never reads half of one version and half of another, and a failed upload leaves nothing.

Signed URLs (an upload ticket, a download link) carry an HMAC of what they allow and until
when, so checking one needs no query (the server's front checks an upload's ticket before
it reads a byte of the body).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.core.files import File
from django.core.files.storage import storages
from django.core.files.uploadedfile import UploadedFile
from django.core.files.uploadhandler import FileUploadHandler, SkipFile
from django.db import transaction
from django.db.models import Count, F, Sum
from django.utils import timezone

from connector import events
from connector.models import Connector, ContentItem, ContentUpload, EventType

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")
MIME_RE = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
)
SHA256_RE = re.compile(r"[0-9a-f]{64}")
DEFAULT_TYPE = "application/octet-stream"
DEFAULT_EXPIRES_S = 900
MAX_DESCRIPTION = 1000
MAX_TAGS = 20


class ContentError(Exception):
    """A refusal: the HTTP status, the field it is about (or ""), and what is wrong."""

    def __init__(self, status: int, field: str, message: str):
        super().__init__(message)
        self.status, self.field, self.message = status, field, message


class UploadGone(ContentError):
    """The upload was used (or removed) meanwhile: another request settled it."""

    def __init__(self):
        super().__init__(403, "", "this upload link is not valid (already used)")


def storage():
    return storages["content"]


def on_s3() -> bool:
    return settings.CONTENT_STORAGE == "s3"


# --- Signed URLs (pure) -----------------------------------------------------------------------


def _mac(*parts: str) -> str:
    key = hashlib.sha256(b"content-url:" + settings.SECRET_KEY.encode()).digest()
    digest = hmac.new(key, "\n".join(parts).encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:24]).decode().rstrip("=")


def upload_ticket(upload_id: str, expires: int) -> str:
    return f"{upload_id}.{expires}.{_mac('upload', upload_id, str(expires))}"


def ticket_upload_id(ticket: str, now: float | None = None) -> str | None:
    """The upload a ticket names, if it is authentic and not expired; else None."""
    upload_id, _, rest = ticket.partition(".")
    expires, _, mac = rest.partition(".")
    if not (upload_id and expires.isdigit() and mac):
        return None
    if int(expires) < (time.time() if now is None else now):
        return None
    if not hmac.compare_digest(mac, _mac("upload", upload_id, expires)):
        return None
    return upload_id


def download_signature(connector_id: str, name: str, expires: int) -> str:
    return _mac("download", connector_id, name, str(expires))


def download_signed(connector_id: str, name: str, expires: str, signature: str) -> bool:
    """A signed download link of this connector's item, authentic and not expired."""
    if not expires.isdigit() or int(expires) < time.time():
        return False
    return hmac.compare_digest(signature, download_signature(connector_id, name, int(expires)))


# --- Checking what is asked -------------------------------------------------------------------


def check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name or ""):
        raise ContentError(
            400, "name", "a content name is 1-128 characters of A-Z, a-z, 0-9, '.', '_', '-'"
        )
    return name


def name_from_file(filename: str) -> str:
    """An item name from an uploaded file's name: its base name, other characters as '_'."""
    base = os.path.basename(filename.replace("\\", "/"))
    return re.sub(r"[^A-Za-z0-9._-]", "_", base)[:128] or "file"


def check_type(content_type: str | None) -> str:
    content_type = (content_type or DEFAULT_TYPE).strip()
    if not MIME_RE.fullmatch(content_type):
        raise ContentError(400, "type", f"type must be a MIME type such as {DEFAULT_TYPE}")
    return content_type.lower()


def check_sha256(value: str | None, *, required: bool) -> str:
    value = (value or "").strip().lower()
    if not value and not required:
        return ""
    if not SHA256_RE.fullmatch(value):
        raise ContentError(400, "sha256", "sha256 must be the file's SHA-256 as 64 hex digits")
    return value


def check_expires_in(value: str | int | None) -> int:
    if value in (None, ""):
        return DEFAULT_EXPIRES_S
    text = str(value).strip()
    top = settings.CONTENT_URL_MAX_SECONDS
    if not text.isdigit() or not 1 <= int(text) <= top:
        raise ContentError(400, "expires_in", f"expires_in must be 1 to {top} seconds")
    return int(text)


def check_description(value: str | None) -> str:
    value = value or ""
    if len(value) > MAX_DESCRIPTION or any(c in value for c in "\r\n\x00"):
        raise ContentError(
            400, "description", f"description is one line of at most {MAX_DESCRIPTION} characters"
        )
    return value


def check_tags(value) -> dict[str, str]:
    """Tags as a JSON object of strings (`{"hw": "rev2"}`), given as text or parsed."""
    if value in (None, ""):
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            value = None
    if (
        not isinstance(value, dict)
        or len(value) > MAX_TAGS
        or not all(
            isinstance(k, str) and isinstance(v, str) and 0 < len(k) <= 64 and len(v) <= 256
            for k, v in value.items()
        )
    ):
        raise ContentError(
            400, "tags", f'tags must be a JSON object of at most {MAX_TAGS} strings: {{"hw": "r2"}}'
        )
    return value


# --- Reading ----------------------------------------------------------------------------------


def items(connector: Connector | str):
    connector_id = connector if isinstance(connector, str) else connector.pk
    return ContentItem.objects.filter(connector_id=connector_id).order_by("name")


def find(connector: Connector | str, name: str) -> ContentItem:
    connector_id = connector if isinstance(connector, str) else connector.pk
    item = ContentItem.objects.filter(connector_id=connector_id, name=name).first()
    if item is None:
        raise ContentError(404, "name", f"no content item named {name}")
    return item


def item_json(item: ContentItem) -> dict:
    """Murano's content item object."""
    return _item_json(
        item.name,
        item.content_type,
        item.size,
        item.updated_at,
        item.description,
        item.tags,
        item.sha256,
    )


ITEM_FIELDS = ("name", "content_type", "size", "updated_at", "description", "tags", "sha256")


def items_json(connector: Connector | str) -> list[dict]:
    """Every item's object, without building a model instance each (10,000 items)."""
    return [_item_json(*row) for row in items(connector).values_list(*ITEM_FIELDS)]


def _item_json(name, content_type, size, updated_at, description, tags, sha256) -> dict:
    return {
        "id": name,
        "type": content_type,
        "length": size,
        "last_modified": updated_at.isoformat().replace("+00:00", "Z"),
        "description": description,
        "tags": tags,
        "sha256": sha256,
    }


def etag(item: ContentItem) -> str:
    """Strong: the bytes' own hash, so the same file uploaded again keeps its ETag."""
    return f'"{item.sha256}"'


@dataclass(frozen=True)
class Usage:
    items: int
    bytes: int
    limit: int

    @property
    def percent(self) -> int:
        return min(100, round(100 * self.bytes / self.limit)) if self.limit else 0


def usage(connector: Connector | str) -> Usage:
    found = items(connector).aggregate(total=Sum("size"), count=Count("id"))
    return Usage(found["count"], found["total"] or 0, settings.CONTENT_CONNECTOR_MAX_BYTES)


# --- Uploading --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Descriptor:
    upload: ContentUpload
    url: str
    inputs: dict[str, str]

    def json(self) -> dict:
        return {
            "method": "POST",
            "enctype": "multipart/form-data",
            "url": self.url,
            "inputs": self.inputs,
            "field": "file",
            "expires_at": self.upload.expires_at.isoformat().replace("+00:00", "Z"),
            "max_size": self.upload.max_size,
        }


def start_upload(
    connector: Connector,
    name: str,
    *,
    content_type: str | None,
    sha256: str | None,
    description: str | None = "",
    tags=None,
    expires_in=None,
    actor=None,
    upload_url,
    sha256_required: bool = True,
) -> Descriptor:
    """The descriptor of a short-lived upload of `name` (SPEC.md section 9). `upload_url`
    makes the URL of a ticket (the management host's, as the caller was reached). The
    Content tab may leave the sha256 to the server (`sha256_required=False`) when the
    browser cannot compute it (no crypto.subtle outside HTTPS)."""
    name = check_name(name)
    content_type = check_type(content_type)
    sha256 = check_sha256(sha256, required=sha256_required or on_s3())
    description = check_description(description)
    tags = check_tags(tags)
    expires_in = check_expires_in(expires_in)
    upload_id = secrets.token_hex(16)
    expires_at = timezone.now() + timedelta(seconds=expires_in)
    upload = ContentUpload.objects.create(
        id=upload_id,
        connector=connector,
        name=name,
        content_type=content_type,
        sha256=sha256,
        description=description,
        tags=tags,
        max_size=settings.CONTENT_MAX_BYTES,
        blob=f"{connector.pk}/{name}.{upload_id}",
        expires_at=expires_at,
        created_by=actor if actor is not None and actor.is_authenticated else None,
    )
    if on_s3():
        from connector import s3

        url, inputs = s3.presigned_post(upload, expires_in)
        return Descriptor(upload, url, inputs)
    ticket = upload_ticket(upload_id, int(expires_at.timestamp()))
    return Descriptor(upload, upload_url(ticket), {})


def upload_of(ticket: str) -> ContentUpload:
    """The pending upload an authentic, unexpired ticket names."""
    upload_id = ticket_upload_id(ticket)
    upload = ContentUpload.objects.filter(pk=upload_id).first() if upload_id else None
    if upload is None or upload.expires_at < timezone.now():
        raise ContentError(403, "", "this upload link is not valid (expired or already used)")
    return upload


class HashingWriter:
    """The bytes of an upload as they arrive: written to a temporary file beside the content
    storage (so the finished file is renamed into place, not copied), hashed and counted on
    the way, refused as soon as they pass the limit. Never all in memory."""

    def __init__(self, limit: int):
        import tempfile

        directory = settings.CONTENT_DIR / ".incoming"
        directory.mkdir(parents=True, exist_ok=True)
        self.file = tempfile.NamedTemporaryFile(dir=directory, delete=False)  # noqa: SIM115
        self.hash = hashlib.sha256()
        self.size = 0
        self.limit = limit
        self.over = False

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            self.over = True
            return
        self.hash.update(chunk)
        self.file.write(chunk)

    def discard(self) -> None:
        self.file.close()
        try:
            os.unlink(self.file.name)
        except FileNotFoundError:
            pass


class UploadHandler(FileUploadHandler):
    """Django's multipart parser hands the file field's bytes here as it parses the body:
    into a `HashingWriter`, any other file field skipped."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit
        self.writer: HashingWriter | None = None

    def new_file(self, field_name, *args, **kwargs) -> None:
        super().new_file(field_name, *args, **kwargs)
        if field_name != "file" or self.writer is not None:
            raise SkipFile()
        self.writer = HashingWriter(self.limit)

    def receive_data_chunk(self, raw_data: bytes, start: int) -> None:
        self.writer.write(raw_data)

    def file_complete(self, file_size: int) -> UploadedFile:
        return UploadedFile(self.writer.file, self.file_name, self.content_type, file_size)

    def discard(self) -> None:
        if self.writer is not None:
            self.writer.discard()


def receive_upload(upload: ContentUpload, received: HashingWriter, ip: str | None) -> ContentItem:
    """Make the received bytes the item named by the upload, or refuse them (nothing kept,
    the refusal logged): 413 past the size limit, 400 when the sha256 differs, 507 past the
    connector's quota. The descriptor stays valid until it expires, for another try."""
    try:
        return _receive(upload, received, ip)
    except UploadGone:
        raise
    except ContentError as exc:
        refused(upload, exc.message, ip)
        raise


def refused(upload: ContentUpload, reason: str, ip: str | None = None) -> None:
    events.record(
        upload.connector_id,
        EventType.CONTENT_REFUSED,
        f"Upload of {upload.name} refused: {reason}"[:300],
        source_ip=ip,
        actor=upload.created_by,
        payload={"id": upload.name, "reason": reason},
    )


def settle_stored(upload: ContentUpload, size: int, digest: str) -> ContentItem:
    """An upload whose bytes the store already holds under its blob (S3), checked."""
    return _settle(upload, size, digest, None, None)


def settle_pending(connector: Connector | str) -> None:
    """On S3, turn the connector's finished uploads into items before its content is read
    (one indexed query when none are pending)."""
    if not on_s3():
        return
    connector_id = connector if isinstance(connector, str) else connector.pk
    if ContentUpload.objects.filter(connector_id=connector_id).exists():
        from connector import s3

        s3.settle(connector_id)


def _receive(upload: ContentUpload, received: HashingWriter, ip: str | None) -> ContentItem:
    try:
        if received.over:
            raise ContentError(
                413,
                "file",
                f"the file is larger than {human_size(upload.max_size)} (CONTENT_MAX_BYTES)",
            )
        digest = received.hash.hexdigest()
        if upload.sha256 and not hmac.compare_digest(digest, upload.sha256):
            raise ContentError(
                400, "sha256", f"the file's sha256 is {digest}, not {upload.sha256} as declared"
            )
        received.file.flush()
        received.file.close()
        return _settle(upload, received.size, digest, received.file.name, ip)
    finally:
        received.discard()  # moved into place when it was kept


def _settle(upload: ContentUpload, size: int, digest: str, path: str | None, ip) -> ContentItem:
    """In one transaction: the upload used, the quota checked, the item created or swapped
    to the new bytes (stored under their own name first), the event written. The old bytes
    are deleted once that commits; a download under way keeps the file it opened."""
    store = storage()
    stored = False
    try:
        with transaction.atomic():
            locked = ContentUpload.objects.select_for_update().filter(pk=upload.pk).first()
            if locked is None:
                raise UploadGone()
            connector = Connector.objects.select_for_update().get(pk=upload.connector_id)
            current = ContentItem.objects.filter(connector=connector, name=upload.name).first()
            others = (
                items(connector).exclude(name=upload.name).aggregate(total=Sum("size"))["total"]
                or 0
            )
            limit = settings.CONTENT_CONNECTOR_MAX_BYTES
            if others + size > limit:
                raise ContentError(
                    507,
                    "file",
                    f"the connector's content would take {human_size(others + size)}, over its "
                    f"{human_size(limit)} (CONTENT_CONNECTOR_MAX_BYTES)",
                )
            if path is not None:
                with open(path, "rb") as source:
                    saved = store.save(upload.blob, _Finished(source))
                if saved != upload.blob:  # the storage chose another name: keep its
                    upload.blob = saved
                stored = True
            old_blob = current.blob if current else None
            fields = {
                "content_type": upload.content_type,
                "size": size,
                "sha256": digest,
                "description": upload.description,
                "tags": upload.tags,
                "blob": upload.blob,
                "updated_at": timezone.now(),
                "uploaded_by": upload.created_by,
                "uploaded_by_email": upload.created_by.email if upload.created_by else "",
            }
            if current is None:
                item = ContentItem.objects.create(connector=connector, name=upload.name, **fields)
            else:
                ContentItem.objects.filter(pk=current.pk).update(**fields)
                item = ContentItem.objects.get(pk=current.pk)
            locked.delete()
            events.record(
                connector,
                EventType.CONTENT_UPLOADED,
                f"{'Replaced' if current else 'Uploaded'} content {item.name} ({human_size(size)})",
                source_ip=ip,
                actor=upload.created_by,
                payload={
                    "id": item.name,
                    "bytes": size,
                    "sha256": digest,
                    "type": item.content_type,
                },
            )
            if old_blob and old_blob != item.blob:
                transaction.on_commit(lambda: delete_blobs([old_blob]))
    except BaseException:
        if stored:
            delete_blobs([upload.blob])
        raise
    return item


class _Finished(File):
    """A finished upload's file, which FileSystemStorage renames into place rather than
    copying (it moves anything with a `temporary_file_path`)."""

    def temporary_file_path(self) -> str:
        return self.file.name


# --- Deleting ---------------------------------------------------------------------------------


def delete_item(connector: Connector, name: str, actor=None, ip: str | None = None) -> None:
    with transaction.atomic():
        item = (
            ContentItem.objects.select_for_update().filter(connector=connector, name=name).first()
        )
        if item is None:
            raise ContentError(404, "name", f"no content item named {name}")
        item.delete()
        events.record(
            connector,
            EventType.CONTENT_DELETED,
            f"Deleted content {name}",
            source_ip=ip,
            actor=actor,
            payload={"ids": [name]},
        )
        blob = item.blob
        transaction.on_commit(lambda: delete_blobs([blob]))


def delete_all(connector: Connector, actor=None, ip: str | None = None) -> int:
    with transaction.atomic():
        found = list(items(connector).select_for_update().values_list("name", "blob"))
        if not found:
            return 0
        items(connector).delete()
        names = [name for name, _ in found]
        events.record(
            connector,
            EventType.CONTENT_DELETED,
            f"Deleted all content ({len(found)} item{'s' if len(found) != 1 else ''})",
            source_ip=ip,
            actor=actor,
            payload={"ids": names[:100], "count": len(names)},
        )
        blobs = [blob for _, blob in found]
        transaction.on_commit(lambda: delete_blobs(blobs))
    return len(found)


def forget_connector(connector_id: str) -> None:
    """A deleted connector's bytes (its rows go with it by cascade)."""
    blobs = list(
        ContentItem.objects.filter(connector_id=connector_id).values_list("blob", flat=True)
    )
    blobs += list(
        ContentUpload.objects.filter(connector_id=connector_id).values_list("blob", flat=True)
    )
    transaction.on_commit(lambda: delete_blobs(blobs))


def prune_uploads(now=None) -> int:
    """Expired uploads nobody finished, and whatever bytes of theirs reached the store."""
    now = now or timezone.now()
    if on_s3():  # a finished one not yet looked at is settled, not dropped
        for connector_id in set(
            ContentUpload.objects.filter(expires_at__lt=now).values_list("connector_id", flat=True)
        ):
            settle_pending(connector_id)
    expired = list(ContentUpload.objects.filter(expires_at__lt=now).values_list("pk", "blob"))
    ContentUpload.objects.filter(pk__in=[pk for pk, _ in expired]).delete()
    delete_blobs([blob for _, blob in expired])
    return len(expired)


# Files younger than this are never swept: an upload may be settling them right now.
SWEEP_GRACE = timedelta(hours=1)


def sweep_orphans(now=None) -> int:
    """Delete stored files no item or pending upload names (left by a crash between storing
    and committing, or a delete whose hook did not run), past SWEEP_GRACE."""
    now = now or timezone.now()
    store = storage()
    known = set(ContentItem.objects.values_list("blob", flat=True))
    known |= set(ContentUpload.objects.values_list("blob", flat=True))
    removed = 0
    try:
        directories, _files = store.listdir("")
    except FileNotFoundError:
        return 0  # nothing was ever stored
    for directory in directories:
        _sub, files = store.listdir(directory)
        for name in files:
            blob = f"{directory}/{name}"
            if blob in known:
                continue
            if directory != ".incoming" and store.get_modified_time(blob) > now - SWEEP_GRACE:
                continue
            if directory == ".incoming" and store.get_modified_time(blob) > now - timedelta(days=1):
                continue
            delete_blobs([blob])
            removed += 1
    return removed


def delete_blobs(blobs) -> None:
    store = storage()
    for blob in blobs:
        try:
            store.delete(blob)
        except Exception:  # noqa: BLE001 - the bytes stay; prune_events tries again
            log.warning("content: could not delete %s", blob, exc_info=True)


def counted_download(item_id: int) -> None:
    ContentItem.objects.filter(pk=item_id).update(downloads=F("downloads") + 1)


def human_size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}".replace(".0 ", " ")
    return f"{n} bytes"
