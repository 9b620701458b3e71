"""Management API (`/api:1/…`): tokens, connectors and connector settings."""

from __future__ import annotations

from django.contrib.auth import authenticate
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    inline_serializer,
)
from rest_framework import serializers, status
from rest_framework.exceptions import PermissionDenied
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from connector import access, logs, members, safeinput, services, signin
from connector.forms import ConnectorNameForm
from connector.models import ApiToken, Connector, EventType
from connector.openapi import ref
from connector.settings_json import form_errors_to_json, form_from_patch, settings_to_json

Role = access.Role


def connector_json(connector: Connector) -> dict:
    return {"id": connector.id, "name": connector.name, "fqdn": connector.fqdn}


def form_errors(form) -> dict[str, str]:
    return {field: " ".join(str(m) for m in msgs) for field, msgs in form.errors.items()}


def name_body_errors(data) -> dict[str, str]:
    """A `{"name": "…"}` body: an object, its name a string, no other field (a number is
    not quietly taken for its digits)."""
    if not isinstance(data, dict):
        return {"name": 'Send a JSON object: {"name": "…"}.'}
    errors = {key: "Unknown field." for key in data if key != "name"}
    if "name" in data and not isinstance(data["name"], str):
        errors["name"] = "Must be a string."
    return errors


CONNECTOR_FIELDS = {
    "id": serializers.CharField(),
    "name": serializers.CharField(),
    "fqdn": serializers.CharField(),
}
ConnectorOut = inline_serializer("Connector", CONNECTOR_FIELDS)
NameIn = inline_serializer("ConnectorName", {"name": serializers.CharField(max_length=100)})


TOKEN_FIELDS = {"email", "password", "connector", "role", "name", "ttl"}


class TokenView(APIView):
    """POST {email, password} -> {token, expires}; DELETE revokes the token used to call it."""

    def _issuing(self) -> bool:
        return getattr(self.request, "method", None) == "POST"

    def get_permissions(self):
        return [AllowAny()] if self._issuing() else super().get_permissions()

    def get_authenticators(self):
        # Credentials come in the body; an Authorization header must not get in the way.
        return [] if self._issuing() else super().get_authenticators()

    @extend_schema(
        request=inline_serializer(
            "TokenRequest",
            {
                "email": serializers.EmailField(),
                "password": serializers.CharField(),
                "connector": serializers.CharField(
                    required=False, help_text="scope: this connector only"
                ),
                "role": serializers.ChoiceField(
                    access.RANK, required=False, help_text="at most this role (needs connector)"
                ),
                "name": serializers.CharField(required=False, max_length=100),
                "ttl": serializers.IntegerField(required=False, help_text="seconds"),
            },
        ),
        responses={
            201: inline_serializer(
                "Token", {"token": serializers.CharField(), "expires": serializers.DateTimeField()}
            ),
            400: OpenApiResponse(ref("FieldErrors"), "a scope field is wrong: no token"),
            401: OpenApiResponse(ref("Detail"), description="Wrong email or password"),
        },
    )
    def post(self, request: Request) -> Response:
        if not isinstance(request.data, dict):  # `null`, a list, a number
            return Response({"detail": 'Send a JSON object: {"email": …, "password": …}.'}, 400)
        data = request.data
        if unknown := set(data) - TOKEN_FIELDS:
            return Response({field: "Unknown field." for field in sorted(unknown)}, status=400)
        email, password = data.get("email"), data.get("password")
        user = None
        if isinstance(email, str) and isinstance(password, str):
            user = authenticate(request._request, username=email, password=password)
        if user is None and (retry := signin.retry_after_of(request._request)) is not None:
            return Response(
                {"detail": signin.message(retry)}, status=429, headers={"Retry-After": str(retry)}
            )
        if user is None:
            return Response(
                {"detail": "Invalid email or password."},
                status=status.HTTP_401_UNAUTHORIZED,
                headers={"WWW-Authenticate": 'Basic realm="api"'},
            )
        try:
            clear, token = members.create_token(
                user,
                name=data.get("name", ""),
                connector_id=data.get("connector"),
                role=data.get("role"),
                ttl=data.get("ttl"),
                ip=request.META.get("REMOTE_ADDR"),
            )
        except members.MemberError as exc:
            return Response({exc.field: exc.message}, status=exc.status)
        return Response({"token": clear, "expires": token.expires_at}, status=201)

    @extend_schema(request=None, responses={204: None})
    def delete(self, request: Request) -> Response:
        if not isinstance(request.auth, ApiToken):
            return Response(
                {"detail": "Call this with the token to revoke (Authorization: token …)."},
                status=400,
            )
        members.revoke_token(request.auth, ip=request.META.get("REMOTE_ADDR"))
        return Response(status=204)


class ConnectorListView(APIView):
    @extend_schema(responses={200: inline_serializer("ConnectorList", CONNECTOR_FIELDS, many=True)})
    def get(self, request: Request) -> Response:
        return Response([connector_json(c) for c in access.visible_connectors(request)])

    @extend_schema(request=NameIn, responses={201: ConnectorOut})
    def post(self, request: Request) -> Response:
        if not access.may_create_connectors(request):
            raise PermissionDenied("A token scoped to one connector cannot create connectors.")
        if errors := name_body_errors(request.data):
            return Response(errors, status=400)
        form = ConnectorNameForm(data=request.data)
        if not form.is_valid():
            return Response(form_errors(form), status=400)
        connector = services.create_connector(request.user, form.cleaned_data["name"])
        return Response(connector_json(connector), status=201)


class ConnectorDetailView(APIView):
    @extend_schema(responses={200: ConnectorOut})
    def get(self, request: Request, connector_id: str) -> Response:
        return Response(connector_json(access.connector_for(request, connector_id)))

    @extend_schema(request=NameIn, responses={200: ConnectorOut})
    def patch(self, request: Request, connector_id: str) -> Response:
        connector = access.connector_for(request, connector_id, Role.ADMIN)
        if errors := name_body_errors(request.data):
            return Response(errors, status=400)
        form = ConnectorNameForm(data=request.data, instance=connector)
        if not form.is_valid():
            return Response(form_errors(form), status=400)
        services.rename_connector(connector, request.user, form.cleaned_data["name"])
        return Response(connector_json(connector))

    @extend_schema(responses={204: None})
    def delete(self, request: Request, connector_id: str) -> Response:
        connector = access.connector_for(request, connector_id, Role.OWNER)
        services.delete_connector(connector, request.user)
        return Response(status=204)


class SettingsView(APIView):
    """`/api:1/service/<id>/device2`: the connector's settings in Murano's JSON shape."""

    @extend_schema(responses={200: OpenApiResponse(ref("Settings"), "Settings JSON (SPEC.md §5)")})
    def get(self, request: Request, connector_id: str) -> Response:
        connector = access.connector_for(request, connector_id)
        return Response(settings_to_json(connector, full=connector.can.administer))

    @extend_schema(
        request={"application/json": ref("SettingsPatch")},
        responses={
            204: None,
            400: OpenApiResponse(ref("FieldErrors"), '{"<json.path>": "message"}: nothing saved'),
        },
    )
    def patch(self, request: Request, connector_id: str) -> Response:
        connector = access.connector_for(request, connector_id, Role.ADMIN)
        form, errors = form_from_patch(connector, request.data)
        if form is not None and not form.is_valid():
            errors = form_errors_to_json(form)
        if errors:
            return Response(errors, status=400)
        services.update_settings(connector, request.user, form.cleaned_data)
        return Response(status=204)


class LogsView(APIView):
    """`/api:1/service/<id>/logs`: the connector's events, newest first, keyset pages."""

    @extend_schema(
        parameters=[
            OpenApiParameter("type", str, enum=["", *EventType.values], description="empty: any"),
            OpenApiParameter("identity", str),
            OpenApiParameter("since", str, description="ISO date/time (UTC) or µs"),
            OpenApiParameter("until", str, description="ISO date/time (UTC) or µs"),
            OpenApiParameter("before", int, description="id of the previous page's oldest"),
            OpenApiParameter("limit", int),
        ],
        responses={200: ref("EventPage")},
    )
    def get(self, request: Request, connector_id: str) -> Response:
        connector = access.connector_for(request, connector_id)
        flt, errors = logs.LogFilter.from_params(request.query_params)
        before = request.query_params.get("before", "")
        raw_limit = request.query_params.get("limit", str(logs.DEFAULT_LIMIT))
        before_id = limit = None
        try:
            before_id = safeinput.whole_number(before, "before") if before else None
        except safeinput.InputError:
            errors["before"] = "Give the id of the oldest event of the previous page."
        try:
            limit = safeinput.whole_number(raw_limit, "limit", low=1, high=logs.MAX_LIMIT)
        except safeinput.InputError:
            errors["limit"] = f"Give a number from 1 to {logs.MAX_LIMIT}."
        if errors:
            return Response(errors, status=400)
        events, more = logs.page(logs.filtered(connector, flt), before=before_id, limit=limit)
        return Response({"mayLoadMore": more, "events": [logs.event_json(e) for e in events]})
