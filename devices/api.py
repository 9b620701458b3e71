"""Management API for identities (SPEC.md section 5): `/api:1/service/<cid>/device2/…`."""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from connector import access, safeinput
from connector.models import now_us
from connector.openapi import ref
from devices import history, listing, services
from devices.importer import import_identities
from devices.models import Device, Status
from devices.serialize import device_json, state_json
from provisioning.digicert import SignerError

TRUE = {"1", "true", "yes", "on"}


Role = access.Role


def _device(request: Request, connector_id: str, identity: str, need: str = Role.VIEWER) -> Device:
    connector = access.connector_for(request, connector_id, need)
    return get_object_or_404(
        listing.with_details(Device.objects.select_related("connector")),
        connector=connector,
        identity=identity,
    )


def _invalid(exc: services.InvalidInput) -> Response:
    return Response(exc.errors, status=400)


def _object(data, allowed: dict[str, type]) -> tuple[dict, dict[str, str]]:
    """Check a JSON body's top-level keys and types; errors keyed by field."""
    if not isinstance(data, dict):
        return {}, {"non_field_errors": "Send a JSON object."}
    errors = {}
    for key, value in data.items():
        if key not in allowed:
            errors[key] = "Unknown field."
        elif not isinstance(value, allowed[key]) or (
            allowed[key] is int and isinstance(value, bool)
        ):
            errors[key] = {
                bool: "Must be true or false.",
                dict: "Must be an object.",
                list: "Must be a list.",
                str: "Must be a string.",
                int: "Must be a whole number.",
            }[allowed[key]]
    return data, errors


class IdentityListView(APIView):
    @extend_schema(
        operation_id="identity_list",
        parameters=[
            OpenApiParameter("limit", int, description=f"1 to {listing.MAX_LIMIT}"),
            OpenApiParameter("before", str, description="identity: the page before it"),
            OpenApiParameter("after", str, description="identity: the page after it"),
            OpenApiParameter("status", str, enum=["", *Status.values], description="empty: any"),
            OpenApiParameter("identity", str, description="identity prefix"),
            OpenApiParameter("tag", str, description="name:value, or name for any value"),
        ],
        responses={200: ref("IdentityPage")},
    )
    def get(self, request: Request, connector_id: str) -> Response:
        connector = access.connector_for(request, connector_id)
        flt, errors = listing.DeviceFilter.from_params(request.query_params, tag_param=True)
        raw_limit = request.query_params.get("limit", str(listing.DEFAULT_LIMIT))
        limit = safeinput.number_or_none(raw_limit, low=1, high=listing.MAX_LIMIT)
        if limit is None:
            errors["limit"] = f"Give a number from 1 to {listing.MAX_LIMIT}."
        if errors:
            return Response(errors, status=400)
        before = request.query_params.get("before", "")
        after = request.query_params.get("after", "")
        rows, more_after, more_before = listing.page(
            listing.filtered(connector, flt).prefetch_related("values"),
            after=after,
            before=before,
            limit=limit,
        )
        now = now_us()
        return Response(
            {
                "mayLoadMore": more_before if before else more_after,
                "devices": [device_json(d, now, state_json(d.values.all())) for d in rows],
            }
        )


class IdentityView(APIView):
    @extend_schema(
        request={"application/json": ref("IdentityPut")},
        responses={
            200: OpenApiResponse(ref("Certificate"), "auth.type csr: the signed certificate"),
            204: None,
            409: OpenApiResponse(ref("FieldErrors"), "the identity exists already"),
            502: OpenApiResponse(ref("Detail"), "the CSR signer failed"),
        },
    )
    def put(self, request: Request, connector_id: str, identity: str) -> Response:
        connector = access.connector_for(request, connector_id, Role.OPERATOR)
        data, errors = _object(request.data, {"auth": dict, "locked": bool, "tags": list})
        auth = data.get("auth") or {}
        if isinstance(auth, dict):
            for key in set(auth) - {"type", "key", "expire"}:
                errors[f"auth.{key}"] = "Unknown field."
            auth_type = auth.get("type")
            if auth_type not in (None, "token", "password", "certificate", "csr"):
                errors["auth.type"] = "Use token, password, certificate or csr."
            elif auth_type in ("certificate", "csr") and not isinstance(auth.get("key"), str):
                errors["auth.key"] = "Give the PEM certificate (or CSR) as auth.key."
            elif auth_type not in ("certificate", "csr") and "key" in auth:
                errors["auth.key"] = "Only certificate (or csr) identities take a key."
            expire = auth.get("expire")
            if expire is not None and (isinstance(expire, bool) or not isinstance(expire, int)):
                errors["auth.expire"] = "Must be a whole number of microseconds since the epoch."
        if errors:
            return Response(errors, status=400)
        if auth.get("type") == "csr":
            return self._enable_with_csr(request, connector, identity, data, auth)
        try:
            services.whitelist_device(
                connector,
                identity,
                actor=request.user,
                expire=auth.get("expire"),
                cert_pem=auth.get("key", ""),
                tags=data.get("tags"),
                locked=data.get("locked", False),
                source_ip=request.META.get("REMOTE_ADDR"),
            )
        except services.InvalidInput as exc:
            return _invalid(exc)
        except services.DeviceExists:
            return Response({"identity": "This identity already exists."}, status=409)
        return Response(status=204)

    def _enable_with_csr(self, request, connector, identity, data, auth) -> Response:
        try:
            certificate = services.enable_with_csr(
                connector,
                identity,
                auth["key"],
                actor=request.user,
                expire=auth.get("expire"),
                tags=data.get("tags"),
                locked=data.get("locked", False),
                source_ip=request.META.get("REMOTE_ADDR"),
            )
        except services.InvalidInput as exc:
            return _invalid(exc)
        except services.DeviceExists:
            return Response({"identity": "This identity already exists."}, status=409)
        except SignerError as exc:  # the signing service failed: not the caller's input
            return Response({"detail": str(exc)}, status=502)
        return Response({"certificate": certificate}, status=200)

    @extend_schema(responses={200: ref("Identity")})
    def get(self, request: Request, connector_id: str, identity: str) -> Response:
        device = _device(request, connector_id, identity)
        return Response(device_json(device, now_us(), state_json(device.values.all())))

    @extend_schema(request={"application/json": ref("IdentityPatch")}, responses={204: None})
    def patch(self, request: Request, connector_id: str, identity: str) -> Response:
        device = _device(request, connector_id, identity, Role.OPERATOR)
        data, errors = _object(
            request.data, {"auth": dict, "locked": bool, "tags": list, "reprovision": bool}
        )
        if data.get("reprovision") is False:
            errors["reprovision"] = "Only true can be set: it revokes the credential."
        auth = data.get("auth") or {}
        if isinstance(auth, dict):
            for key in set(auth) - {"expire"}:
                errors[f"auth.{key}"] = "Only auth.expire can be changed here."
            expire = auth.get("expire")
            if "expire" in auth and (isinstance(expire, bool) or not isinstance(expire, int)):
                errors["auth.expire"] = "Must be a whole number of microseconds (0 revokes)."
        if errors:
            return Response(errors, status=400)
        try:
            services.update_device(
                device,
                actor=request.user,
                locked=data.get("locked"),
                tags=data.get("tags"),
                # The reprovision flag and auth.expire = 0 are Murano's two ways to revoke.
                expire=0 if data.get("reprovision") else auth.get("expire"),
            )
        except services.InvalidInput as exc:
            return _invalid(exc)
        return Response(status=204)

    @extend_schema(responses={205: None})
    def delete(self, request: Request, connector_id: str, identity: str) -> Response:
        device = _device(request, connector_id, identity, Role.ADMIN)
        services.delete_devices(
            device.connector, Device.objects.filter(pk=device.pk), actor=request.user
        )
        return Response(status=205)


class IdentityImportView(APIView):
    parser_classes = [MultiPartParser]

    @extend_schema(
        request={
            "multipart/form-data": {
                "type": "object",
                "properties": {
                    "identities": {"type": "string", "format": "binary"},
                    "update": {"type": "boolean"},
                    "dry_run": {"type": "boolean"},
                },
            }
        },
        responses={
            200: ref("ImportReport"),
            400: OpenApiResponse(ref("ImportErrors"), "nothing imported: each bad line"),
        },
    )
    def post(self, request: Request, connector_id: str) -> Response:
        connector = access.connector_for(request, connector_id, Role.OPERATOR)
        upload = request.FILES.get("identities")
        if upload is None:
            return Response(
                {
                    "errors": [
                        {
                            "line": None,
                            "message": "Send the CSV file as the multipart field “identities”.",
                        }
                    ]
                },
                status=400,
            )
        report = import_identities(
            connector,
            upload,
            actor=request.user,
            update=request.data.get("update", "").lower() in TRUE,
            dry_run=request.data.get("dry_run", "").lower() in TRUE,
            source_ip=request.META.get("REMOTE_ADDR"),
        )
        return Response(report.as_json(), status=200 if report.ok else 400)


class IdentityStateView(APIView):
    """`…/identity/<id>/state`: GET the latest value of every alias; PATCH `{alias: value}`
    sets settable aliases (a cloud set)."""

    @extend_schema(responses={200: ref("State")})
    def get(self, request: Request, connector_id: str, identity: str) -> Response:
        device = _device(request, connector_id, identity)
        return Response(state_json(device.values.order_by("alias")))

    @extend_schema(request={"application/json": ref("StatePatch")}, responses={204: None})
    def patch(self, request: Request, connector_id: str, identity: str) -> Response:
        device = _device(request, connector_id, identity, Role.OPERATOR)
        if not isinstance(request.data, dict):
            return Response({"non_field_errors": "Send a JSON object of alias: value."}, status=400)
        try:
            services.set_state(device, request.data, actor=request.user)
        except services.InvalidInput as exc:
            return _invalid(exc)
        return Response(status=204)


class IdentityHistoryView(APIView):
    """`…/identity/<id>/history?alias=&since=&until=&limit=&before=`: the alias's stored
    values (writes and records), newest first, in keyset pages (`before` = the previous
    page's oldest timestamp)."""

    @extend_schema(
        operation_id="identity_history",
        parameters=[
            OpenApiParameter("alias", str, required=True),
            OpenApiParameter("since", str, description="µs since the epoch or ISO (UTC)"),
            OpenApiParameter("until", str, description="µs since the epoch or ISO (UTC)"),
            OpenApiParameter("before", str, description="the previous page's oldest timestamp"),
            OpenApiParameter("limit", int, description=f"1 to {history.MAX_LIMIT}"),
        ],
        responses={
            200: ref("History"),
            400: OpenApiResponse(ref("FieldErrors"), "a bad parameter, named"),
        },
    )
    def get(self, request: Request, connector_id: str, identity: str) -> Response:
        device = _device(request, connector_id, identity)
        try:
            query = history.parse(request.query_params)
        except history.HistoryError as exc:
            return Response(exc.errors, status=400)
        return Response(history.page(device, query))
