from django.urls import path

from devices import views

urlpatterns = [
    path("", views.device_list, name="device-list"),
    path("bulk/", views.device_bulk, name="device-bulk"),
    path("export.csv", views.device_export, name="device-export"),
    path("new/", views.device_add, name="device-add"),
    path("check/", views.identity_check, name="device-check"),
    path("import/", views.device_import, name="device-import"),
    path("d/<str:identity>/", views.device_detail, name="device-detail"),
    path("d/<str:identity>/delete/", views.device_delete, name="device-delete"),
    path("d/<str:identity>/history.csv", views.device_history_csv, name="device-history-csv"),
]
