from django.urls import path
from drf_spectacular.views import SpectacularAPIView

from connector import api, content_api, members_api, subscriptions_api
from devices import api as devices_api

urlpatterns = [
    path("token/", api.TokenView.as_view(), name="api-token"),
    path("connector/", api.ConnectorListView.as_view(), name="api-connector-list"),
    path("connector/<str:connector_id>", api.ConnectorDetailView.as_view(), name="api-connector"),
    path(
        "connector/<str:connector_id>/member",
        members_api.MemberListView.as_view(),
        name="api-member-list",
    ),
    path(
        "connector/<str:connector_id>/member/<str:email>",
        members_api.MemberView.as_view(),
        name="api-member",
    ),
    path(
        "connector/<str:connector_id>/invitation",
        members_api.InvitationView.as_view(),
        name="api-invitation",
    ),
    path("service/<str:connector_id>/device2", api.SettingsView.as_view(), name="api-settings"),
    path(
        "service/<str:connector_id>/device2/identity/",
        devices_api.IdentityListView.as_view(),
        name="api-identity-list",
    ),
    path(
        "service/<str:connector_id>/device2/identity/<str:identity>",
        devices_api.IdentityView.as_view(),
        name="api-identity",
    ),
    path(
        "service/<str:connector_id>/device2/identity/<str:identity>/state",
        devices_api.IdentityStateView.as_view(),
        name="api-identity-state",
    ),
    path(
        "service/<str:connector_id>/device2/identity/<str:identity>/history",
        devices_api.IdentityHistoryView.as_view(),
        name="api-identity-history",
    ),
    path(
        "service/<str:connector_id>/device2/identities",
        devices_api.IdentityImportView.as_view(),
        name="api-identity-import",
    ),
    path("service/<str:connector_id>/logs", api.LogsView.as_view(), name="api-logs"),
    path(
        "service/<str:connector_id>/events/subscription",
        subscriptions_api.SubscriptionListView.as_view(),
        name="api-subscriptions",
    ),
    path(
        "service/<str:connector_id>/events/subscription/<str:subscription_id>",
        subscriptions_api.SubscriptionView.as_view(),
        name="api-subscription",
    ),
    path(
        "service/<str:connector_id>/events/subscription/<str:subscription_id>/test",
        subscriptions_api.SubscriptionTestView.as_view(),
        name="api-subscription-test",
    ),
    path(
        "service/<str:connector_id>/events/subscription/<str:subscription_id>/rotate",
        subscriptions_api.SubscriptionRotateView.as_view(),
        name="api-subscription-rotate",
    ),
    path(
        "service/<str:connector_id>/events/subscription/<str:subscription_id>/deliveries",
        subscriptions_api.SubscriptionDeliveriesView.as_view(),
        name="api-subscription-deliveries",
    ),
    path(
        "service/<str:connector_id>/events/subscription/<str:subscription_id>/replay",
        subscriptions_api.SubscriptionReplayView.as_view(),
        name="api-subscription-replay",
    ),
    path(
        "service/<str:connector_id>/events/subscription/<str:subscription_id>/redeliver",
        subscriptions_api.SubscriptionRedeliverView.as_view(),
        name="api-subscription-redeliver",
    ),
    path(
        "service/<str:connector_id>/content/item",
        content_api.ItemListView.as_view(),
        name="api-content-list",
    ),
    path(
        "service/<str:connector_id>/content/item/<str:name>",
        content_api.ItemView.as_view(),
        name="api-content-item",
    ),
    path(
        "service/<str:connector_id>/content/item/<str:name>/upload",
        content_api.ItemUploadView.as_view(),
        name="api-content-upload",
    ),
    path(
        "service/<str:connector_id>/content/item/<str:name>/download",
        content_api.ItemDownloadView.as_view(),
        name="api-content-download",
    ),
    path("content-upload/<str:ticket>", content_api.receive_upload, name="content-upload"),
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
]
