from django.http import HttpResponse
from django.urls import include, path


def healthz(request):
    return HttpResponse("ok", content_type="text/plain")


urlpatterns = [
    path("api:1/", include("connector.api_urls")),
    path("healthz", healthz, name="healthz"),
    path("", include("connector.urls")),
]
