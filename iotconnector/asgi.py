"""The application the server runs (see `iotconnector.front` and deploy/gunicorn.conf.py)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "iotconnector.settings")
django_app = get_wsgi_application()

from django.conf import settings  # noqa: E402  (after Django is set up)

from iotconnector.front import Front  # noqa: E402
from provisioning.host import DEVICE_API  # noqa: E402

application = Front(django_app, threads=settings.WEB_THREADS, device_api=DEVICE_API)
