"""Management API of a connector's members (SPEC.md section 11):
`GET /api:1/connector/<id>/member`, `POST …/invitation`, `PATCH|DELETE …/member/<email>`."""

from __future__ import annotations

from django.http import HttpRequest
from django.urls import reverse
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from connector import access, members
from connector.openapi import ref

Role = access.Role
ROLE = serializers.ChoiceField(access.RANK)


def link_maker(request: HttpRequest):
    """The absolute link of an invitation token on the host the caller reached."""
    return lambda token: request.build_absolute_uri(reverse("invitation", args=[token]))


def _refusal(exc: members.MemberError) -> Response:
    field = exc.field if exc.status == 400 else "detail"
    return Response({field: exc.message}, status=exc.status)


def _object(data, allowed: set[str]) -> dict[str, str]:
    if not isinstance(data, dict):
        return {"non_field_errors": "Send a JSON object."}
    return {field: "Unknown field." for field in sorted(set(data) - allowed)}


class MemberListView(APIView):
    @extend_schema(
        operation_id="connector_member_list",
        responses={
            200: inline_serializer(
                "Member", {"email": serializers.EmailField(), "role": ROLE}, many=True
            )
        },
    )
    def get(self, request: Request, connector_id: str) -> Response:
        connector = access.connector_for(request, connector_id)
        return Response(
            [{"email": m.user.email, "role": m.role} for m in members.members(connector)]
        )


class InvitationView(APIView):
    @extend_schema(
        operation_id="connector_invitation_create",
        request=inline_serializer(
            "InvitationRequest", {"email": serializers.EmailField(), "role": ROLE}
        ),
        responses={
            201: inline_serializer(
                "Invitation",
                {"url": serializers.URLField(), "expires": serializers.DateTimeField()},
            ),
            400: OpenApiResponse(ref("FieldErrors"), "a field is wrong: nobody invited"),
            409: OpenApiResponse(ref("Detail"), "a member already"),
        },
    )
    def post(self, request: Request, connector_id: str) -> Response:
        connector = access.connector_for(request, connector_id, Role.OWNER)
        if errors := _object(request.data, {"email", "role"}):
            return Response(errors, status=400)
        try:
            invited = members.invite(
                connector,
                request.user,
                request.data.get("email"),
                request.data.get("role"),
                link_for=link_maker(request),
                ip=request.META.get("REMOTE_ADDR"),
            )
        except members.MemberError as exc:
            return _refusal(exc)
        return Response(
            {"url": link_maker(request)(invited.token), "expires": invited.invitation.expires_at},
            status=201,
        )


class MemberView(APIView):
    @extend_schema(
        operation_id="connector_member_update",
        request=inline_serializer("MemberPatch", {"role": ROLE}),
        responses={
            204: None,
            400: OpenApiResponse(ref("FieldErrors"), "not a role"),
            404: OpenApiResponse(ref("Detail"), "no such member"),
            409: OpenApiResponse(ref("Detail"), "the last owner"),
        },
    )
    def patch(self, request: Request, connector_id: str, email: str) -> Response:
        connector = access.connector_for(request, connector_id, Role.OWNER)
        if errors := _object(request.data, {"role"}):
            return Response(errors, status=400)
        try:
            members.change_role(
                connector,
                request.user,
                email,
                request.data.get("role"),
                ip=request.META.get("REMOTE_ADDR"),
            )
        except members.MemberError as exc:
            return _refusal(exc)
        return Response(status=204)

    @extend_schema(
        operation_id="connector_member_remove",
        responses={
            204: None,
            404: OpenApiResponse(ref("Detail"), "no such member"),
            409: OpenApiResponse(ref("Detail"), "the last owner"),
        },
    )
    def delete(self, request: Request, connector_id: str, email: str) -> Response:
        # Anyone may leave (remove themselves); removing someone else is an owner's.
        own = request.user.is_authenticated and request.user.email == email.strip().lower()
        connector = access.connector_for(request, connector_id, Role.VIEWER if own else Role.OWNER)
        try:
            members.remove(connector, request.user, email, ip=request.META.get("REMOTE_ADDR"))
        except members.MemberError as exc:
            return _refusal(exc)
        return Response(status=204)
