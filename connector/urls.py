from django.contrib.auth import views as auth_views
from django.urls import include, path

from connector import views

urlpatterns = [
    path("", views.connector_list, name="connector-list"),
    path("signup/", views.signup, name="signup"),
    path("login/", views.SignInView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("tokens/", views.token_list, name="token-list"),
    path("tokens/<int:token_id>/revoke/", views.token_revoke, name="token-revoke"),
    path("invitation/<str:token>/", views.invitation, name="invitation"),
    path("c/<str:connector_id>/", views.connector_settings, name="connector-settings"),
    path("c/<str:connector_id>/overview/", views.connector_overview, name="connector-overview"),
    path("c/<str:connector_id>/rename/", views.connector_rename, name="connector-rename"),
    path("c/<str:connector_id>/delete/", views.connector_delete, name="connector-delete"),
    path("c/<str:connector_id>/devices/", include("devices.urls")),
    path("c/<str:connector_id>/resources/", views.connector_resources, name="connector-resources"),
    path("c/<str:connector_id>/content/", views.connector_content, name="connector-content"),
    path(
        "c/<str:connector_id>/content/upload/",
        views.content_upload_form,
        name="content-upload-form",
    ),
    path(
        "c/<str:connector_id>/content/descriptor/",
        views.content_descriptor,
        name="content-descriptor",
    ),
    path(
        "c/<str:connector_id>/content/<str:name>/delete/",
        views.content_delete,
        name="content-delete",
    ),
    path("c/<str:connector_id>/members/", views.connector_members, name="connector-members"),
    path("c/<str:connector_id>/members/invite/", views.member_invite, name="member-invite"),
    path("c/<str:connector_id>/members/leave/", views.member_leave, name="member-leave"),
    path(
        "c/<str:connector_id>/members/<int:member_id>/role/",
        views.member_role,
        name="member-role",
    ),
    path(
        "c/<str:connector_id>/members/<int:member_id>/remove/",
        views.member_remove,
        name="member-remove",
    ),
    path(
        "c/<str:connector_id>/invitations/<int:invitation_id>/revoke/",
        views.invitation_revoke,
        name="invitation-revoke",
    ),
    path("c/<str:connector_id>/logs/", views.connector_logs, name="connector-logs"),
    path("c/<str:connector_id>/logs/feed/", views.connector_logs_feed, name="connector-logs-feed"),
    path("c/<str:connector_id>/events/", views.subscription_create, name="subscription-create"),
    path(
        "c/<str:connector_id>/events/<str:subscription_id>/test/",
        views.subscription_test,
        name="subscription-test",
    ),
    path(
        "c/<str:connector_id>/events/<str:subscription_id>/replay/",
        views.subscription_replay,
        name="subscription-replay",
    ),
    path(
        "c/<str:connector_id>/events/<str:subscription_id>/rotate/",
        views.subscription_rotate,
        name="subscription-rotate",
    ),
    path(
        "c/<str:connector_id>/events/<str:subscription_id>/redeliver/",
        views.subscription_redeliver,
        name="subscription-redeliver",
    ),
    path(
        "c/<str:connector_id>/events/<str:subscription_id>/delete/",
        views.subscription_delete,
        name="subscription-delete",
    ),
]
