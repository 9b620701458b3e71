import base64
import contextlib
import ipaddress
import os
import shutil
import socket
import threading

import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from connector import services, signin
from connector.models import User

# In CI every test must really run: a missing browser or database is a failure, not a skip.
IN_CI = os.environ.get("CI", "").lower() == "true"
PASSWORD = "correct horse battery staple"

# Live-server request threads must not keep connections open past the test, or PostgreSQL
# refuses to drop the test database at the end.
django_settings.DATABASES["default"]["CONN_MAX_AGE"] = 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def require(condition: bool, reason: str) -> None:
    """Skip on a developer machine that lacks a part; fail in CI, where it must be there."""
    if not condition:
        if IN_CI:
            pytest.fail(f"required in CI: {reason}")
        pytest.skip(reason)


# The tests play the TLS terminator from loopback, as a deployment that configured its nginx
# does (the shipped default trusts no proxy); server subprocesses inherit this.
os.environ.setdefault("TRUSTED_PROXIES", "127.0.0.1/32,::1/128")
# Event delivery tests start their own relay (tests/test_events.py); servers the tests start
# run none, and their receivers are on loopback.
os.environ.setdefault("EVENTS_RELAY", "off")
# The live server listens for MQTT only where a test starts it (tests/test_mqtt.py).
os.environ.setdefault("MQTT_PORT", "0")
os.environ.setdefault("EVENTS_ALLOW_PRIVATE_URLS", "true")


@pytest.fixture(scope="session", autouse=True)
def _no_relay_in_test_servers():
    """The in-process test server starts no outbox relay (tests/test_events.py runs one
    where it is the subject); set before the session's live server starts."""
    from django.conf import settings

    settings.EVENTS_RELAY = "off"
    settings.EVENTS_ALLOW_PRIVATE_URLS = True
    settings.MQTT_PORT = 0  # tests/test_mqtt.py starts the gateway itself


@pytest.fixture(autouse=True)
def _content_dir(settings, tmp_path):
    """Each test's content area is a directory of its own (connector.content)."""
    settings.CONTENT_DIR = tmp_path / "content"
    settings.STORAGES = {
        **settings.STORAGES,
        "content": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": settings.CONTENT_DIR},
        },
    }


@pytest.fixture(autouse=True)
def _fast_test_settings(settings):
    settings.TRUSTED_PROXIES = [
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("::1/128"),
    ]
    # Password hashing is deliberately slow in production; tests check logic, not cost.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    # Production uses hashed names from `collectstatic`; tests render without running it.
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
    settings.EVENTS_RELAY = "off"  # tests/test_events.py starts servers that relay
    # Sign-up tests use fixtures' accounts beside new ones; tests/test_members.py checks the
    # shipped default (invitation only once an account exists) and the other modes.
    settings.SIGNUP = "open"
    settings.EVENTS_ALLOW_PRIVATE_URLS = True  # the receivers are on loopback
    # Each test's database starts empty: no sign-in address is remembered as written.
    signin._recorded.clear()


@pytest.fixture
def alice(db) -> User:
    return User.objects.create_user("alice@example.com", PASSWORD)


@pytest.fixture
def bob(db) -> User:
    return User.objects.create_user("bob@example.com", PASSWORD)


@pytest.fixture
def connector(alice):
    return services.create_connector(alice, "Factory line 1")


@pytest.fixture
def bobs_connector(bob):
    return services.create_connector(bob, "Bob's private line")


def basic(email: str, password: str = PASSWORD) -> str:
    return "Basic " + base64.b64encode(f"{email}:{password}".encode()).decode()


@pytest.fixture
def api(alice) -> APIClient:
    """Management API client signed in as alice with HTTP Basic, as `curl -u` does."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=basic(alice.email))
    return client


@pytest.fixture
def browser_client(client, alice):
    client.force_login(alice)
    return client


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    require(os.path.exists(path), "Debian's chromium is not installed (apt-get install chromium)")
    return path


class FrontServer:
    """The production server stack in a thread: uvicorn (httptools) running
    `iotconnector.front.Front` around Django, on a free loopback port.

    Replaces pytest-django's `live_server` (a plain WSGI server), so every live test (gdc,
    curl, the browser) goes through the same front as production, long polls included.
    """

    def __init__(self):
        import uvicorn
        from django.contrib.staticfiles.handlers import StaticFilesHandler
        from django.core.wsgi import get_wsgi_application
        from django.db import connections
        from django.test.utils import modify_settings

        from iotconnector.front import Front
        from provisioning.host import DEVICE_API

        # An in-memory SQLite test database lives in the test thread's connection: share it.
        shared = {
            c.alias: c for c in connections.all() if c.vendor == "sqlite" and c.is_in_memory_db()
        }
        for conn in shared.values():
            conn.inc_thread_sharing()

        def use_shared_connections():
            for alias, conn in shared.items():
                connections[alias] = conn

        self._shared = shared
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        app = Front(
            StaticFilesHandler(get_wsgi_application()),
            4,
            use_shared_connections,
            device_api=DEVICE_API,
        )
        self.app = app
        from iotconnector.worker import Worker

        http = Worker.CONFIG_KWARGS["http"]  # the production protocol, with its guards
        config = uvicorn.Config(
            app, http=http, lifespan="on", proxy_headers=False, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )
        self.thread.start()
        for _ in range(200):
            if self.server.started:
                break
            threading.Event().wait(0.025)
        else:
            raise RuntimeError("the test server did not start")
        self._live_server_modified_settings = modify_settings(ALLOWED_HOSTS={"append": "127.0.0.1"})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __str__(self) -> str:
        return self.url

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        # An exception in the app's lifespan shutdown is only logged by uvicorn.
        assert not self.server.lifespan.error_occurred, "the lifespan shutdown failed"
        for conn in self._shared.values():
            conn.dec_thread_sharing()


@pytest.fixture(scope="session")
def live_server(django_db_setup, django_db_blocker, live_server_db_cleanup):
    with django_db_blocker.unblock():
        server = FrontServer()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def live_server_db_cleanup(django_db_setup, django_db_blocker):
    """After the session, end database sessions left by live-server request threads.

    A request thread of the live server may still hold its PostgreSQL connection when the
    session ends, and PostgreSQL refuses to drop a database that is in use.
    """
    yield
    from django.db import connection

    if connection.vendor == "postgresql":
        with django_db_blocker.unblock(), connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )


def store_item(connector, name: str, data: bytes) -> None:
    """A content item, stored through the service's own upload path (no HTTP)."""
    import hashlib

    from connector import content

    upload = content.start_upload(
        connector, name, content_type=None, sha256=hashlib.sha256(data).hexdigest(), upload_url=str
    ).upload
    received = content.HashingWriter(upload.max_size)
    received.write(data)
    content.receive_upload(upload, received, None)


def define(connector, *aliases: str, **definitions: dict) -> None:
    """Give the connector resources: plain string aliases, or full definitions by keyword."""
    from devices.resources import check_definitions

    resources = dict(connector.resources or {})
    resources.update(check_definitions({alias: {} for alias in aliases}))
    resources.update(check_definitions(definitions))
    connector.resources = resources
    connector.resources_version += 1
    connector.save(update_fields=["resources", "resources_version"])


TRANSACTION_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE SAVEPOINT")


@contextlib.contextmanager
def statements_counted():
    """The statements run on this thread's connection inside the block, without transaction
    control (BEGIN, COMMIT, savepoints): the list is filled when the block ends."""
    done: list[str] = []
    with CaptureQueriesContext(connection) as captured:
        yield done
    done.extend(
        q["sql"] for q in captured.captured_queries if not q["sql"].startswith(TRANSACTION_CONTROL)
    )
