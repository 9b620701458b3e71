from django.urls import path
from drf_spectacular.views import SpectacularAPIView

from connector import api

urlpatterns = [
    path("token/", api.TokenView.as_view(), name="api-token"),
    path("connector/", api.ConnectorListView.as_view(), name="api-connector-list"),
    path("connector/<str:connector_id>", api.ConnectorDetailView.as_view(), name="api-connector"),
    path("service/<str:connector_id>/device2", api.SettingsView.as_view(), name="api-settings"),
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
]
