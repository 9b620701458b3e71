"""Management API of the content area (SPEC.md section 9), as Murano's:
`/api:1/service/<connector-id>/content/item[/<name>[/upload|/download]]`, and the URL an
upload descriptor points at on the filesystem store (`/api:1/content-upload/<ticket>`)."""

from __future__ import annotations

import time

from django.http import HttpRequest, JsonResponse
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from connector import access, content
from connector.models import Connector, ContentItem
from connector.openapi import ref


def _ip(request) -> str | None:
    return request.META.get("REMOTE_ADDR")


def refusal(exc: content.ContentError) -> Response:
    """400 names the field (FieldErrors); anything else is a Detail."""
    field = exc.field if exc.status == 400 and exc.field else "detail"
    return Response({field: exc.message}, status=exc.status)


def upload_url_maker(request: HttpRequest):
    """The URL of an upload ticket on the host the caller reached."""
    return lambda ticket: request.build_absolute_uri(reverse("content-upload", args=[ticket]))


def download_url(request: HttpRequest, connector: Connector, item: ContentItem, seconds: int):
    """A short-lived link that fetches this item with no device credential: the store's own
    presigned URL on S3, else the device API's download, signed."""
    if content.on_s3():
        from connector import s3

        return s3.presigned_get(item, seconds)
    expires = int(time.time()) + seconds
    signature = content.download_signature(connector.pk, item.name, expires)
    query = f"id={item.name}&expires={expires}&signature={signature}"
    return f"{device_base_url(request, connector)}/provision/download?{query}"


def device_base_url(request: HttpRequest, connector: Connector) -> str:
    """The connector's device API as reached from where this request came: its host with
    the scheme and port of this one (`http://<id>.localhost:8000` locally)."""
    port = request.get_port()
    scheme = "https" if request.is_secure() else "http"
    default = {"http": "80", "https": "443"}[scheme]
    return f"{scheme}://{connector.fqdn}" + ("" if port == default else f":{port}")


FULL = OpenApiParameter("full", bool, description="true: the item objects, not their names")


class ItemListView(APIView):
    @extend_schema(
        operation_id="content_item_list",
        parameters=[FULL],
        responses={200: ref("ContentList")},
    )
    def get(self, request: Request, connector_id: str) -> Response:
        connector = access.connector_for(request, connector_id)
        content.settle_pending(connector)
        full = request.query_params.get("full", "").lower()
        if full not in ("", "true", "false"):
            return Response({"full": "full is true or false"}, status=400)
        if full == "true":
            return Response(content.items_json(connector))
        return Response(list(content.items(connector).values_list("name", flat=True)))

    @extend_schema(operation_id="content_item_delete_all", responses={204: None})
    def delete(self, request: Request, connector_id: str) -> Response:
        connector = access.connector_for(request, connector_id, access.Role.ADMIN)
        content.delete_all(connector, actor=request.user, ip=_ip(request))
        return Response(status=204)


class ItemView(APIView):
    @extend_schema(operation_id="content_item", responses={200: ref("ContentItem")})
    def get(self, request: Request, connector_id: str, name: str) -> Response:
        connector = access.connector_for(request, connector_id)
        content.settle_pending(connector)
        try:
            return Response(content.item_json(content.find(connector, name)))
        except content.ContentError as exc:
            return refusal(exc)

    @extend_schema(operation_id="content_item_delete", responses={204: None})
    def delete(self, request: Request, connector_id: str, name: str) -> Response:
        connector = access.connector_for(request, connector_id, access.Role.ADMIN)
        try:
            content.delete_item(connector, name, actor=request.user, ip=_ip(request))
        except content.ContentError as exc:
            return refusal(exc)
        return Response(status=204)


class ItemUploadView(APIView):
    @extend_schema(
        operation_id="content_item_upload",
        parameters=[
            OpenApiParameter("type", str, description="MIME type (application/octet-stream)"),
            OpenApiParameter("sha256", str, required=True, description="64 hex digits"),
            OpenApiParameter("expires_in", int, description="seconds the descriptor is valid"),
            OpenApiParameter("description", str),
            OpenApiParameter("tags", str, description='JSON object: {"hw": "rev2"}'),
        ],
        responses={200: ref("UploadDescriptor")},
    )
    def get(self, request: Request, connector_id: str, name: str) -> Response:
        connector = access.connector_for(request, connector_id, access.Role.ADMIN)
        q = request.query_params
        try:
            descriptor = content.start_upload(
                connector,
                name,
                content_type=q.get("type"),
                sha256=q.get("sha256"),
                description=q.get("description"),
                tags=q.get("tags"),
                expires_in=q.get("expires_in"),
                actor=request.user,
                upload_url=upload_url_maker(request),
            )
        except content.ContentError as exc:
            return refusal(exc)
        return Response(descriptor.json())


class ItemDownloadView(APIView):
    @extend_schema(
        operation_id="content_item_download",
        parameters=[OpenApiParameter("expires_in", int, description="seconds the URL is valid")],
        responses={200: ref("DownloadLink")},
    )
    def get(self, request: Request, connector_id: str, name: str) -> Response:
        connector = access.connector_for(request, connector_id)
        content.settle_pending(connector)
        try:
            item = content.find(connector, name)
            seconds = content.check_expires_in(request.query_params.get("expires_in"))
        except content.ContentError as exc:
            return refusal(exc)
        return Response({"method": "GET", "url": download_url(request, connector, item, seconds)})


@csrf_exempt  # the ticket in the URL is the credential (as a presigned S3 POST); no cookie
def receive_upload(request: HttpRequest, ticket: str) -> JsonResponse:
    """The POST an upload descriptor points at: the file in field `file`, hashed and counted
    as it is read from the spooled body, kept only if it is what the descriptor declared."""
    if request.method != "POST":
        return JsonResponse(
            {"detail": "POST the file (multipart/form-data, field file)"}, status=405
        )
    try:
        upload = content.upload_of(ticket)
    except content.ContentError as exc:
        return JsonResponse({"detail": exc.message}, status=exc.status)
    handler = content.UploadHandler(upload.max_size)
    request.upload_handlers = [handler]
    try:
        received = request.FILES.get("file")
    except content.ContentError as exc:
        handler.discard()
        return JsonResponse({exc.field or "detail": exc.message}, status=exc.status)
    except Exception as exc:  # noqa: BLE001 - a malformed multipart body
        handler.discard()
        return JsonResponse({"detail": f"not a multipart/form-data body: {exc}"[:300]}, status=400)
    if received is None or handler.writer is None:
        handler.discard()
        return JsonResponse({"file": "send the file in the multipart field 'file'"}, status=400)
    try:
        item = content.receive_upload(upload, handler.writer, _ip(request))
    except content.ContentError as exc:
        return JsonResponse({exc.field or "detail": exc.message}, status=exc.status)
    return JsonResponse(content.item_json(item), status=201)
