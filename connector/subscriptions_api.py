"""Management API for event subscriptions (SPEC.md section 10):
`/api:1/service/<connector-id>/events/subscription[/<id>[/test|/rotate|/deliveries|/replay
|/redeliver]]`."""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from connector import access, logs, safeinput, subscriptions
from connector.models import DeadLetter, Subscription
from connector.openapi import ref


def _subscription(request: Request, connector_id: str, subscription_id: str) -> Subscription:
    connector = access.connector_for(request, connector_id, access.Role.ADMIN)
    return get_object_or_404(Subscription, connector=connector, pk=subscription_id)


def _ip(request: Request) -> str | None:
    return request.META.get("REMOTE_ADDR")


def _invalid(exc: subscriptions.InvalidSubscription) -> Response:
    return Response(exc.errors, status=400)


class SubscriptionListView(APIView):
    @extend_schema(operation_id="subscription_list", responses={200: ref("SubscriptionList")})
    def get(self, request: Request, connector_id: str) -> Response:
        connector = access.connector_for(request, connector_id, access.Role.ADMIN)
        found = Subscription.objects.filter(connector=connector)
        return Response([subscriptions.as_json(s) for s in found])

    @extend_schema(
        request={"application/json": ref("SubscriptionIn")},
        responses={201: OpenApiResponse(ref("SubscriptionCreated"), "the secret, shown once")},
    )
    def post(self, request: Request, connector_id: str) -> Response:
        connector = access.connector_for(request, connector_id, access.Role.ADMIN)
        try:
            subscription, secret = subscriptions.create(
                connector,
                request.data,
                actor=request.user,
                source_ip=_ip(request),
            )
        except subscriptions.InvalidSubscription as exc:
            return _invalid(exc)
        return Response({"id": subscription.id, "secret": secret}, status=201)


class SubscriptionView(APIView):
    @extend_schema(responses={200: ref("Subscription")})
    def get(self, request: Request, connector_id: str, subscription_id: str) -> Response:
        subscription = _subscription(request, connector_id, subscription_id)
        return Response(subscriptions.as_json(subscription))

    @extend_schema(
        request={"application/json": ref("SubscriptionPatch")},
        responses={200: ref("Subscription")},
    )
    def patch(self, request: Request, connector_id: str, subscription_id: str) -> Response:
        subscription = _subscription(request, connector_id, subscription_id)
        try:
            subscriptions.update(
                subscription,
                request.data,
                actor=request.user,
                source_ip=_ip(request),
            )
        except subscriptions.InvalidSubscription as exc:
            return _invalid(exc)
        subscription.refresh_from_db()
        return Response(subscriptions.as_json(subscription))

    @extend_schema(responses={204: None})
    def delete(self, request: Request, connector_id: str, subscription_id: str) -> Response:
        subscription = _subscription(request, connector_id, subscription_id)
        subscriptions.delete(subscription, actor=request.user, source_ip=_ip(request))
        return Response(status=204)


class SubscriptionTestView(APIView):
    @extend_schema(request=None, responses={200: ref("TestDelivery")})
    def post(self, request: Request, connector_id: str, subscription_id: str) -> Response:
        subscription = _subscription(request, connector_id, subscription_id)
        return Response(subscriptions.send_test(subscription))


class SubscriptionRotateView(APIView):
    @extend_schema(
        request=None,
        responses={200: OpenApiResponse(ref("SubscriptionCreated"), "the new secret, shown once")},
    )
    def post(self, request: Request, connector_id: str, subscription_id: str) -> Response:
        subscription = _subscription(request, connector_id, subscription_id)
        secret = subscriptions.rotate_secret(subscription, actor=request.user)
        return Response({"id": subscription.id, "secret": secret})


class SubscriptionDeliveriesView(APIView):
    @extend_schema(
        parameters=[OpenApiParameter("status", str, enum=["dead", "failed"], required=True)],
        responses={200: ref("Deliveries")},
    )
    def get(self, request: Request, connector_id: str, subscription_id: str) -> Response:
        subscription = _subscription(request, connector_id, subscription_id)
        status = request.query_params.get("status", "")
        if status == "dead":
            letters = DeadLetter.objects.filter(subscription=subscription).order_by("-id")[:500]
            return Response({"dead": [subscriptions.dead_letter_json(d) for d in letters]})
        if status == "failed":
            return Response({"failed": subscriptions.failing_json(subscription)})
        return Response({"status": "Use status=dead or status=failed."}, status=400)


class SubscriptionReplayView(APIView):
    @extend_schema(
        request={"application/json": ref("ReplayIn")},
        responses={202: ref("ReplayAccepted")},
    )
    def post(self, request: Request, connector_id: str, subscription_id: str) -> Response:
        subscription = _subscription(request, connector_id, subscription_id)
        data = request.data if isinstance(request.data, dict) else None
        ids = None if data is None else data.get("ids")
        if (
            data is None
            or set(data) - {"ids"}
            or not (
                ids is None
                or (
                    isinstance(ids, list)
                    and all(isinstance(i, int) and not isinstance(i, bool) for i in ids)
                )
            )
        ):
            return Response({"ids": "Give a list of dead letter ids, or none for all."}, 400)
        count = subscriptions.request_replay(subscription, ids, actor=request.user)
        return Response({"replaying": count}, status=202)


class SubscriptionRedeliverView(APIView):
    @extend_schema(
        request={"application/json": ref("RedeliverIn")},
        responses={202: ref("RedeliverAccepted")},
    )
    def post(self, request: Request, connector_id: str, subscription_id: str) -> Response:
        subscription = _subscription(request, connector_id, subscription_id)
        data = request.data if isinstance(request.data, dict) else {}
        since, error = data.get("since"), None
        if set(data) - {"since"}:
            error = "Only since is taken."
        else:
            try:
                since = logs.parse_time(since) if isinstance(since, str) else since
            except (ValueError, safeinput.InputError):
                since = None
            if not isinstance(since, int) or isinstance(since, bool) or not 0 <= since < 2**62:
                error = "Give a date/time like 2026-05-01T12:00 (UTC) or µs since the epoch."
        if error:
            return Response({"since": error}, status=400)
        found = subscriptions.redeliver(
            subscription, since, actor=request.user, source_ip=_ip(request)
        )
        return Response(found, status=202)
