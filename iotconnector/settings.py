"""Settings, read from the environment (django-environ).

Every variable is listed in `.env.example`. The defaults run the embedded single-machine setup:
SQLite in `DATA_DIR`, secrets generated once into `DATA_DIR` (mode 0600). Production sets
`SECRET_KEY`, `TOKEN_PEPPERS`, `ENCRYPTION_KEY`, `DATABASE_URL`, `ALLOWED_HOSTS` and `HTTPS=true`.
Security settings that are present but wrong stop the process at start-up instead of being ignored.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import secrets
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
if (BASE_DIR / ".env").is_file():
    environ.Env.read_env(BASE_DIR / ".env")

# Relative paths are taken from the project directory, whatever the working directory.
DATA_DIR = BASE_DIR / env.str("DATA_DIR", default="var")


def _private_dir(path: Path) -> None:
    """Create a directory only its owner can read (0700); an existing one is left as it is."""
    if not path.exists():
        path.mkdir(mode=0o700, parents=True, exist_ok=True)


def _local_secret(name: str, generate) -> str:
    """Read a secret kept in DATA_DIR, creating it on first use (embedded default only)."""
    path = DATA_DIR / name
    if not path.exists():
        _private_dir(DATA_DIR)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(generate())
    return path.read_text().strip()


_BOOLS = {
    "true": True,
    "1": True,
    "yes": True,
    "on": True,
    "false": False,
    "0": False,
    "no": False,
    "off": False,
    "": False,
}


def env_bool(name: str, default: bool) -> bool:
    """A boolean variable; anything but a clear yes/no stops the process (no silent False)."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return _BOOLS[raw.strip().lower()]
    except KeyError:
        raise ImproperlyConfigured(f"{name} must be true or false, not {raw!r}.") from None


DEBUG = env_bool("DEBUG", default=False)

SECRET_KEY = env.str("SECRET_KEY", default="") or _local_secret(
    "secret_key", lambda: secrets.token_urlsafe(50)
)
if len(SECRET_KEY) < 50:
    raise ImproperlyConfigured("SECRET_KEY must be at least 50 characters long.")

# Peppers for the keyed hashes (HMAC-SHA256) of device tokens and API tokens, as
# "<key id>:<secret>" entries; the first is used for new hashes, the others still verify
# (rotation). They live outside the database so that a database dump alone cannot be used to
# test guesses.
_peppers_raw = env.list("TOKEN_PEPPERS", default=[]) or [
    "1:" + _local_secret("token_pepper", lambda: secrets.token_urlsafe(48))
]
TOKEN_PEPPERS: dict[str, bytes] = {}
for _entry in _peppers_raw:
    _kid, _sep, _secret = _entry.partition(":")
    if not _sep or not _kid.isalnum() or len(_secret) < 32:
        raise ImproperlyConfigured(
            "TOKEN_PEPPERS entries must be '<alphanumeric key id>:<secret of 32+ characters>'."
        )
    TOKEN_PEPPERS[_kid] = _secret.encode()
TOKEN_PEPPER_CURRENT = _peppers_raw[0].partition(":")[0]

# Fernet key (urlsafe base64 of 32 bytes) encrypting secrets the server must use in clear
# later: vendor API keys, CA private keys.
ENCRYPTION_KEY = env.str("ENCRYPTION_KEY", default="") or _local_secret(
    "encryption_key", lambda: base64.urlsafe_b64encode(os.urandom(32)).decode()
)

HTTPS = env_bool("HTTPS", default=False)
DEVICE_API_DOMAIN = env.str("DEVICE_API_DOMAIN", default="localhost").lower().strip(".")
# Plain-HTTP device requests are refused unless the connector is in developer mode, or this is
# set (local development only).
DEVICE_API_INSECURE = env_bool("DEVICE_API_INSECURE", default=False)

# Threads per server process that run Django (iotconnector.front); waiting long polls use none.
WEB_THREADS = env.int("WEB_THREADS", default=4)
if WEB_THREADS < 1:
    raise ImproperlyConfigured("WEB_THREADS must be at least 1")

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
# The management UI's own names, even when they sit under DEVICE_API_DOMAIN.
MANAGEMENT_HOSTS = frozenset(h.lower().lstrip(".") for h in ALLOWED_HOSTS)
ALLOWED_HOSTS.append("." + DEVICE_API_DOMAIN)
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

try:
    # No proxy is trusted unless configured: otherwise any process on the machine could send
    # a forged X-SSL-Client-Cert or X-Forwarded-Proto straight to the app and be believed.
    # `scripts/serve --tls` configures loopback for the nginx it starts.
    TRUSTED_PROXIES = [
        ipaddress.ip_network(p, strict=False) for p in env.list("TRUSTED_PROXIES", default=[])
    ]
except ValueError as exc:
    raise ImproperlyConfigured(f"TRUSTED_PROXIES: {exc}") from exc

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "connector",
    "devices",
    "provisioning",
]

MIDDLEWARE = [
    # First: decides whether forwarded headers (client address, scheme, client certificate)
    # may be believed, before anything reads them.
    "iotconnector.middleware.TrustedProxyMiddleware",
    # Device API hosts are answered here, before the management stack (sessions, CSRF, …).
    "provisioning.host.DeviceHostMiddleware",
    # Management requests only (device requests are answered above): no NUL reaches a view.
    "iotconnector.middleware.RefuseNulMiddleware",
    "iotconnector.middleware.CrossOriginApiWriteMiddleware",
    "iotconnector.middleware.ContentSecurityPolicyMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "iotconnector.urls"
WSGI_APPLICATION = "iotconnector.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": env.db_url_config(
        env.str("DATABASE_URL", default="") or f"sqlite:///{DATA_DIR / 'db.sqlite3'}"
    ),
}
DATABASES["default"]["CONN_MAX_AGE"] = int(env.str("CONN_MAX_AGE", default="") or 600)
# No health check: it costs an extra round trip (SELECT 1) on every device request. A connection
# broken by a database restart fails one request, is then closed and replaced.
DATABASES["default"]["CONN_HEALTH_CHECKS"] = False
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # Django binds parameters client-side and turns psycopg's statement preparation off
    # (prepare_threshold None), which also silently ignores an explicit `prepare=True`. The
    # device API's few hot statements run on a server-side cursor with `prepare=True`
    # (provisioning.auth.execute_prepared); a threshold nothing else reaches lets them be
    # prepared while Django's own (client-side) queries stay as they are.
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault("prepare_threshold", 2**31 - 1)
    # No JIT: PostgreSQL compiles a plan whose estimated cost passes jit_above_cost, and the
    # store's one-statement batches pass it once their tables hold a few hundred thousand
    # rows (the estimates of JSON-fed rows are generous): the compile, about 40 ms, then
    # came before every batch of a few dozen writes that runs in 3. Nothing here runs long
    # enough for compiled code to pay that back. A DATABASE_URL's own `options` wins.
    DATABASES["default"]["OPTIONS"].setdefault("options", "-c jit=off")
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            # WAL lets readers run beside the single writer; IMMEDIATE takes the write lock at
            # BEGIN so that concurrent writers queue on busy_timeout instead of failing.
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
        }
    )
    if DATABASES["default"]["NAME"] != ":memory:":
        # The database and (SQLite gives them its mode) its WAL and shared-memory files are
        # readable by their owner only: 0600 in a 0700 directory, as the secrets are.
        _database = Path(DATABASES["default"]["NAME"])
        _private_dir(_database.parent)
        if not _database.exists():
            os.close(os.open(_database, os.O_WRONLY | os.O_CREAT, 0o600))

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_USER_MODEL = "connector.User"
AUTHENTICATION_BACKENDS = ["connector.auth.EmailBackend"]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "connector-list"
LOGOUT_REDIRECT_URL = "login"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / env.str("STATIC_ROOT", default="staticfiles")
# The content area (SPEC.md section 9): files for devices. The embedded default keeps them
# under DATA_DIR/content; CONTENT_STORAGE=s3 keeps them in an S3-compatible bucket, where
# uploads and downloads go straight to the store with presigned URLs.
CONTENT_STORAGE = env.str("CONTENT_STORAGE", default="filesystem")
CONTENT_DIR = Path(env.str("CONTENT_DIR", default=str(DATA_DIR / "content")))
CONTENT_S3_BUCKET = env.str("CONTENT_S3_BUCKET", default="")
CONTENT_S3_ENDPOINT_URL = env.str("CONTENT_S3_ENDPOINT_URL", default="")
CONTENT_S3_REGION = env.str("CONTENT_S3_REGION", default="us-east-1")
CONTENT_S3_ACCESS_KEY = env.str("CONTENT_S3_ACCESS_KEY", default="")
CONTENT_S3_SECRET_KEY = env.str("CONTENT_S3_SECRET_KEY", default="")
# The largest item, and all of a connector's items together (bytes).
CONTENT_MAX_BYTES = env.int("CONTENT_MAX_BYTES", default=64 * 1024 * 1024)
CONTENT_CONNECTOR_MAX_BYTES = env.int("CONTENT_CONNECTOR_MAX_BYTES", default=1024 * 1024 * 1024)
# The longest an upload descriptor or a signed download URL stays valid (seconds).
CONTENT_URL_MAX_SECONDS = env.int("CONTENT_URL_MAX_SECONDS", default=3600)
if CONTENT_STORAGE not in ("filesystem", "s3"):
    raise ImproperlyConfigured("CONTENT_STORAGE is filesystem or s3")
if CONTENT_STORAGE == "s3" and not CONTENT_S3_BUCKET:
    raise ImproperlyConfigured("CONTENT_STORAGE=s3 needs CONTENT_S3_BUCKET")

STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "content": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": CONTENT_DIR, "file_permissions_mode": 0o600},
    }
    if CONTENT_STORAGE == "filesystem"
    else {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": CONTENT_S3_BUCKET,
            "endpoint_url": CONTENT_S3_ENDPOINT_URL or None,
            "region_name": CONTENT_S3_REGION,
            "access_key": CONTENT_S3_ACCESS_KEY or None,
            "secret_key": CONTENT_S3_SECRET_KEY or None,
            "default_acl": None,
            "file_overwrite": True,
            "querystring_expire": 300,
            "addressing_style": "path",
        },
    },
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = DEBUG

# Uploads: the CSV import streams its file, so large files go to disk, not memory.
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("DATA_UPLOAD_MAX_MEMORY_SIZE", default=2 * 1024 * 1024)

# Forwarded scheme: believed only because TrustedProxyMiddleware strips the header from
# requests that do not come from TRUSTED_PROXIES.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SESSION_COOKIE_SECURE = HTTPS
CSRF_COOKIE_SECURE = HTTPS
SESSION_COOKIE_HTTPONLY = True
SECURE_SSL_REDIRECT = HTTPS
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000 if HTTPS else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = HTTPS
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", default=False)
# Preloading commits the whole domain to HTTPS in browsers for good: the operator opts in.
SILENCED_SYSTEM_CHECKS = [] if SECURE_HSTS_PRELOAD else ["security.W021"]
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"


# The pages' only script is static/js/app.js and their only styles static/css/app.css.
def _content_store_origin() -> str:
    """Where the Content tab's script sends uploads on S3 (the bucket's endpoint)."""
    if CONTENT_STORAGE != "s3":
        return ""
    from urllib.parse import urlsplit

    url = urlsplit(CONTENT_S3_ENDPOINT_URL or f"https://s3.{CONTENT_S3_REGION}.amazonaws.com")
    return f" {url.scheme}://{url.netloc}"


CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    f" connect-src 'self'{_content_store_origin()}; object-src 'none'; base-uri 'none';"
    " form-action 'self'; frame-ancestors 'none'"
)

# Failed device activations/authentications allowed per connector and client address in one
# window (seconds) before answering 429 with Retry-After. They refuse what can be guessed from
# that address: unknown tokens, activations, certificates; never a valid token, certificate or
# the right password of a device whose own identity is under its limits below.
DEVICE_AUTH_FAILURE_LIMIT = env.int("DEVICE_AUTH_FAILURE_LIMIT", default=30)
DEVICE_AUTH_FAILURE_WINDOW = env.int("DEVICE_AUTH_FAILURE_WINDOW", default=60)
# Per identity, per window: failed passwords or refused activations from one address (beyond:
# 429 for that identity only, no longer counted against the address), and failed passwords
# from all addresses together (beyond: 429 except from the address the device was last seen at).
DEVICE_IDENTITY_FAILURE_LIMIT = env.int("DEVICE_IDENTITY_FAILURE_LIMIT", default=5)
DEVICE_IDENTITY_FAILURE_LIMIT_ALL = env.int("DEVICE_IDENTITY_FAILURE_LIMIT_ALL", default=20)

# Long polls waiting at once, per server process (beyond: 503 + Retry-After) and per device
# (beyond: 429 + Retry-After): each holds an open connection, so a runaway client (or a
# stolen token) cannot take them all.
LONG_POLL_MAX_WAITING = env.int("LONG_POLL_MAX_WAITING", default=20_000)
# Seconds a request body may go without any part of it arriving before it is answered 408.
REQUEST_BODY_TIMEOUT = env.float("REQUEST_BODY_TIMEOUT", default=30.0)
# Seconds from a connection opening (or its previous response) to the end of the request's
# headers, else 408 and closed; the most bytes of request line and headers, else 431.
REQUEST_HEADER_TIMEOUT = env.float("REQUEST_HEADER_TIMEOUT", default=10.0)
MAX_REQUEST_HEADER_BYTES = env.int("MAX_REQUEST_HEADER_BYTES", default=64 * 1024)
# Connections open at once per server process (beyond: 503 and closed). 0: as many as the
# process's file descriptor limit allows (raised to the hard limit at start) minus 128.
MAX_CONNECTIONS = env.int("MAX_CONNECTIONS", default=0)
LONG_POLL_MAX_PER_DEVICE = env.int("LONG_POLL_MAX_PER_DEVICE", default=8)

# Device events to applications (connector.outbox, connector.relay; SPEC.md section 10).
# Partitions: one device's events are delivered in order within one, partitions in parallel.
EVENTS_PARTITIONS = env.int("EVENTS_PARTITIONS", default=8)
# Who relays the outbox. "process" (default): the server starts one relay process beside
# its workers (and restarts it if it dies), so delivery costs the workers' event loops and
# GIL nothing; "worker": a relay thread in every worker; "off": run `manage.py relay_events`
# yourself (any number: leases keep one relay per partition). true/false mean process/off.
EVENTS_RELAY = {"true": "process", "false": "off", "1": "process", "0": "off"}.get(
    env.str("EVENTS_RELAY", default="process").lower(),
    env.str("EVENTS_RELAY", default="process").lower(),
)
if EVENTS_RELAY not in ("process", "worker", "off"):
    raise ImproperlyConfigured("EVENTS_RELAY: use process, worker or off")
EVENTS_POLL_INTERVAL = env.float("EVENTS_POLL_INTERVAL", default=0.05)  # seconds
EVENTS_RELAY_THREADS = env.int("EVENTS_RELAY_THREADS", default=4)
# The relay process's CPU niceness: device requests come first when the machine is busy (the
# relay catches up on the idle CPU; the outbox holds what it has not delivered yet).
EVENTS_RELAY_NICE = env.int("EVENTS_RELAY_NICE", default=10)
# How long a failing event is retried (backoff with jitter) before it is dead-lettered.
EVENTS_RETRY_SECONDS = env.int("EVENTS_RETRY_SECONDS", default=3 * 86400)
EVENTS_TIMEOUT = env.float("EVENTS_TIMEOUT", default=10.0)  # connect and read, seconds
# A PEM bundle of CAs trusted for webhook TLS besides the system's (receivers behind a
# private CA); certificates and host names are always verified.
EVENTS_CA_FILE = env.str("EVENTS_CA_FILE", default="")
# Webhooks to private, loopback or link-local addresses (and plain http) are refused unless
# this is on (development, tests); checked again after DNS resolution at each delivery.
EVENTS_ALLOW_PRIVATE_URLS = env.bool("EVENTS_ALLOW_PRIVATE_URLS", default=False)
# Delivered outbox rows older than this are pruned by `prune_events`.
EVENTS_OUTBOX_RETENTION_DAYS = env.int("EVENTS_OUTBOX_RETENTION_DAYS", default=7)

# Event log retention, applied by `manage.py prune_events` (0 turns a limit off).
LOG_RETENTION_DAYS = env.int("LOG_RETENTION_DAYS", default=30)
# Device value history (writes and records) kept by `prune_events` (0: kept forever).
HISTORY_RETENTION_DAYS = env.int("HISTORY_RETENTION_DAYS", default=90)
LOG_MAX_ROWS_PER_CONNECTOR = env.int("LOG_MAX_ROWS_PER_CONNECTOR", default=1_000_000)

# DigiCert ONE, the CSR signer a connector may choose (Enterprise PKI Manager REST API).
DIGICERT_API_URL = env.str("DIGICERT_API_URL", default="https://one.digicert.com")

# CSV whitelisting: largest file and most devices per import.
IMPORT_MAX_BYTES = env.int("IMPORT_MAX_BYTES", default=128 * 1024 * 1024)
IMPORT_MAX_ROWS = env.int("IMPORT_MAX_ROWS", default=200_000)

# Password sign-ins (page, HTTP Basic, token requests), per window of SIGNIN_FAILURE_WINDOW
# seconds: failures for one account from one address (beyond: 429 for that account there);
# for one account from all addresses (beyond: 429 except where the account signed in before);
# from one address for all accounts (beyond: one try per account per window from it). The
# right password from an address where only other accounts failed is never refused.
SIGNIN_FAILURE_WINDOW = env.int("SIGNIN_FAILURE_WINDOW", default=900)
SIGNIN_FAILURE_LIMIT = env.int("SIGNIN_FAILURE_LIMIT", default=5)
SIGNIN_ACCOUNT_FAILURE_LIMIT = env.int("SIGNIN_ACCOUNT_FAILURE_LIMIT", default=20)
SIGNIN_ADDRESS_FAILURE_LIMIT = env.int("SIGNIN_ADDRESS_FAILURE_LIMIT", default=50)
# Addresses an account signed in from are remembered this long (exempt from the account limit).
SIGNIN_KNOWN_ADDRESS_DAYS = env.int("SIGNIN_KNOWN_ADDRESS_DAYS", default=30)
# Sign-up attempts per address per hour.
SIGNUP_LIMIT_PER_HOUR = env.int("SIGNUP_LIMIT_PER_HOUR", default=10)

API_TOKEN_LIFETIME_DAYS = env.int("API_TOKEN_LIFETIME_DAYS", default=30)

# Who may create an account: `open` (anyone), `invite` (only with an invitation, for its
# address), `closed` (nobody; `manage.py createsuperuser` still works). Unset: open until the
# first account exists, then invite, so a public server does not hand out accounts.
SIGNUP = env.str("SIGNUP", default="")
if SIGNUP not in ("", "open", "invite", "closed"):
    raise ImproperlyConfigured("SIGNUP must be open, invite or closed.")
# Invitations to a connector: links valid this long, used once.
INVITATION_TTL_HOURS = env.int("INVITATION_TTL_HOURS", default=7 * 24)
# Email (invitations): EMAIL_URL such as smtp+tls://user:password@mail.example.com:587;
# unset, nothing is sent and the Members page shows each invitation link once to copy.
EMAIL_CONFIGURED = bool(env.str("EMAIL_URL", default=""))
if EMAIL_CONFIGURED:
    vars().update(env.email_url("EMAIL_URL"))
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="iot-connector@localhost")

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "connector.auth.BasicAuthentication",
        "connector.auth.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": [
        "connector.parsers.JSONParser",
        "rest_framework.parsers.MultiPartParser",
        "rest_framework.parsers.FormParser",
    ],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "IoT Connector management API",
    "DESCRIPTION": "Whitelist, provision and manage devices (Murano-compatible `/api:1`).",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "connector.schema.complete",
    ],
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "filters": {"one_line": {"()": "iotconnector.logfilters.OneLineWarning"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain"},
        "one_line": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "filters": ["one_line"],
        },
    },
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {
        "django.db.backends": {"level": "INFO"},
        # Anyone can send a bad Host header: one line each, not an error with a traceback.
        "django.security.DisallowedHost": {"handlers": ["one_line"], "propagate": False},
    },
}

# MQTT Device API (SPEC.md section 8): MQTT 3.1.1 over TLS in every server process (the port
# is shared, SO_REUSEPORT). 0 turns it off. The server certificate must name the connectors'
# device hosts (`*.DEVICE_API_DOMAIN`); the default is the local TLS stack's
# (`manage.py tls_stack`), re-read when it changes.
MQTT_PORT = env.int("MQTT_PORT", default=8883)
MQTT_BIND = env.str("MQTT_BIND", default="127.0.0.1")
MQTT_TLS_CERT = env.str("MQTT_TLS_CERT", default=str(DATA_DIR / "tls" / "server.pem"))
MQTT_TLS_KEY = env.str("MQTT_TLS_KEY", default=str(DATA_DIR / "tls" / "server.key"))
MQTT_BACKLOG = env.int("MQTT_BACKLOG", default=4096)
# A connection must send its CONNECT within this (seconds, TLS handshake included).
MQTT_CONNECT_TIMEOUT = env.float("MQTT_CONNECT_TIMEOUT", default=10.0)
# The longest keepalive honoured (s): a CONNECT asking for none or more gets this.
MQTT_MAX_KEEPALIVE = env.int("MQTT_MAX_KEEPALIVE", default=3600)
# Connections from one address to one server process; more are closed at once.
MQTT_MAX_PER_IP = env.int("MQTT_MAX_PER_IP", default=1000)
# A device's PUBLISH rate (per second) and burst: beyond it the session reads no more
# until there is room (the device is slowed, nothing is lost).
MQTT_PUBLISH_RATE = env.float("MQTT_PUBLISH_RATE", default=100.0)
MQTT_PUBLISH_BURST = env.int("MQTT_PUBLISH_BURST", default=200)
