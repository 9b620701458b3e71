"""gunicorn settings for the IoT Connector (WSGI). Override any of them on the command line."""

import multiprocessing
import os

# Threads per worker: the device API is short requests dominated by small database queries.
worker_class = "gthread"
workers = int(os.environ.get("WEB_CONCURRENCY") or multiprocessing.cpu_count() * 2)
threads = int(os.environ.get("GUNICORN_THREADS") or 4)
# Requests that take longer are killed; long polls are not served by this process.
timeout = 60
graceful_timeout = 30
keepalive = 5
# Headers: the forwarded client certificate can be a few KiB.
limit_request_field_size = 16384
# Behind nginx on loopback only; forwarded headers are checked by the app (TRUSTED_PROXIES).
forwarded_allow_ips = "127.0.0.1,::1"
accesslog = "-"
errorlog = "-"
