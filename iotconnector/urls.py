from django.http import HttpResponse
from django.urls import include, path

from provisioning import longpoll


def healthz(request):
    """Liveness for load balancers and scripts/serve, with the long polls this process holds."""
    return HttpResponse(f"ok\nwaiting_polls {len(longpoll.hub)}\n", content_type="text/plain")


urlpatterns = [
    path("api:1/", include("connector.api_urls")),
    path("healthz", healthz, name="healthz"),
    path("", include("connector.urls")),
]
