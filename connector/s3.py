"""The content area on an S3-compatible store (CONTENT_STORAGE=s3): uploads and downloads go
straight between the client and the store with presigned requests; the app never streams a
file to anyone.

An upload is the store's own presigned POST of the upload's blob, limited in size and type.
The store answers the client; the item appears once the app has checked what arrived
(`settle`): its size, and its sha256 (the store's own checksum when it keeps one, else the
object read once and hashed). What fails the check is deleted and logged. Pending uploads
are settled whenever the connector's content is looked at (management API, Content tab, a
device's list or download), so no callback from the store is needed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
from functools import lru_cache

from django.conf import settings
from django.utils import timezone

from connector.models import ContentItem, ContentUpload

log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def _client_for(endpoint: str, region: str, key: str, secret: str):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint or None,
        region_name=region,
        aws_access_key_id=key or None,
        aws_secret_access_key=secret or None,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )


def client():
    return _client_for(
        settings.CONTENT_S3_ENDPOINT_URL,
        settings.CONTENT_S3_REGION,
        settings.CONTENT_S3_ACCESS_KEY,
        settings.CONTENT_S3_SECRET_KEY,
    )


def presigned_post(upload: ContentUpload, expires_in: int) -> tuple[str, dict[str, str]]:
    checksum = base64.b64encode(binascii.unhexlify(upload.sha256)).decode()
    fields = {
        "Content-Type": upload.content_type,
        "x-amz-checksum-algorithm": "SHA256",
        "x-amz-checksum-sha256": checksum,  # the store refuses other bytes (where it checks)
        "success_action_status": "201",
    }
    conditions = [
        {"Content-Type": upload.content_type},
        {"x-amz-checksum-algorithm": "SHA256"},
        {"x-amz-checksum-sha256": checksum},
        {"success_action_status": "201"},
        ["content-length-range", 0, upload.max_size],
    ]
    found = client().generate_presigned_post(
        settings.CONTENT_S3_BUCKET,
        upload.blob,
        Fields=fields,
        Conditions=conditions,
        ExpiresIn=expires_in,
    )
    return found["url"], found["fields"]


def presigned_get(item: ContentItem, seconds: int) -> str:
    return client().generate_presigned_url(
        "get_object",
        Params={
            "Bucket": settings.CONTENT_S3_BUCKET,
            "Key": item.blob,
            "ResponseContentType": item.content_type,
        },
        ExpiresIn=seconds,
    )


def settle(connector_id: str) -> None:
    """Make the connector's finished uploads items (or refuse them); cheap when none wait."""
    from connector import content

    pending = list(ContentUpload.objects.filter(connector_id=connector_id).order_by("created_at"))
    for upload in pending:
        try:
            _settle_one(upload, content)
        except content.UploadGone:
            pass  # settled by another request meanwhile
        except content.ContentError as exc:
            _refuse(upload, exc.message)
        except Exception:
            log.exception("content: could not settle upload %s", upload.pk)


def _settle_one(upload: ContentUpload, content) -> None:
    from botocore.exceptions import ClientError

    s3, bucket = client(), settings.CONTENT_S3_BUCKET
    try:
        head = s3.head_object(Bucket=bucket, Key=upload.blob, ChecksumMode="ENABLED")
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            if upload.expires_at < timezone.now():
                upload.delete()  # never came
            return
        raise
    size = head["ContentLength"]
    if size > upload.max_size:
        raise content.ContentError(413, "file", "the file is larger than CONTENT_MAX_BYTES")
    kept = head.get("ChecksumSHA256")
    if kept and "-" not in kept:
        digest = base64.b64decode(kept).hex()
    else:  # a store that keeps no checksum: read it once
        digest = _hash_object(s3, bucket, upload.blob)
    if not hmac.compare_digest(digest, upload.sha256):
        raise content.ContentError(400, "sha256", f"the file's sha256 is {digest}")
    content.settle_stored(upload, size, digest)


def _hash_object(s3, bucket: str, key: str) -> str:
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    digest = hashlib.sha256()
    for chunk in body.iter_chunks(1024 * 1024):
        digest.update(chunk)
    return digest.hexdigest()


def _refuse(upload: ContentUpload, reason: str) -> None:
    from connector import content

    content.delete_blobs([upload.blob])
    if ContentUpload.objects.filter(pk=upload.pk).delete()[0]:
        content.refused(upload, reason)
