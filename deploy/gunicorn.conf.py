"""gunicorn settings for the IoT Connector. Override any of them on the command line.

    gunicorn iotconnector.asgi -c deploy/gunicorn.conf.py --bind 127.0.0.1:8000

Each worker is one uvicorn event loop (iotconnector.worker) that owns the sockets and parks
waiting long polls, plus WEB_THREADS threads that run Django.
"""

import multiprocessing
import os
import signal
import sys
import threading
import time

worker_class = "iotconnector.worker.Worker"


def _database_is_sqlite() -> bool:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "iotconnector.settings")
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from django.conf import settings

    return settings.DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3"


# Workers: one per core on PostgreSQL. Each worker is an event loop with its own threads
# already; with two per core the no-op view answered fewer requests (7,300 against 7,900/s)
# and device writes were stored in smaller batches (provisioning.store). SQLite has a single
# writer, and the embedded default runs one process unless WEB_CONCURRENCY says otherwise:
# device writes and activations then never wait on another process. With two, the device
# API answered a third more, the processes' batches taking turns on a file lock (see the
# README's benchmarks); other writes (reads' events, records, imports) still wait on
# SQLite's own lock, whose busy handler sleeps. Long-poll wake-ups reach
# every worker either way: PostgreSQL NOTIFY, or datagrams between the workers of one
# DATA_DIR (provisioning.wakebus).
default_workers = 1 if _database_is_sqlite() else multiprocessing.cpu_count()
workers = int(os.environ.get("WEB_CONCURRENCY") or default_workers)
# A worker that stops answering its heartbeat is replaced. Waiting long polls do not count:
# they are parked in the event loop, not in a thread.
timeout = 60
graceful_timeout = 30
keepalive = 5
# Request headers are parsed by uvicorn (httptools) through iotconnector.protocol, which
# limits their time (REQUEST_HEADER_TIMEOUT), size (MAX_REQUEST_HEADER_BYTES) and the
# connections per worker (MAX_CONNECTIONS); gunicorn's limit_request_* settings do not apply.
accesslog = "-"
errorlog = "-"


# --- The event relay (EVENTS_RELAY=process, the default) ------------------------------------
# One relay process beside the workers, started when the server is ready and started again
# within a second if it dies (kill -9 included: the outbox keeps every event, the new relay
# takes the partitions over when the old one's leases run out). It exits when the master
# does, also when the master was killed (it checks its parent). Delivering in a process of
# its own costs the workers' event loops and GIL nothing: in one SQLite worker, a relay
# thread halved the device writes (scripts/bench_events.py).
_relay: dict = {"process": None, "stopping": False}


def _relay_mode() -> str:
    from django.conf import settings

    return settings.EVENTS_RELAY


def when_ready(server):
    if _relay_mode() != "process":
        return
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    manage = os.path.join(root, "manage.py")
    command = [sys.executable, manage, "relay_events", "--parent", str(os.getpid())]

    def keep_relaying():
        while not _relay["stopping"]:
            pid = _relay["process"]
            if pid is None or not _alive(pid):
                if pid is not None:
                    server.log.warning("event relay (pid %d) exited: starting it again", pid)
                # posix_spawn, not subprocess: Popen waits on a pipe for the exec, and a
                # worker gunicorn forks meanwhile inherits that pipe and never execs, so the
                # wait (and the relay) would hang for as long as that worker lives.
                _relay["process"] = os.posix_spawn(sys.executable, command, os.environ)
            time.sleep(1)

    threading.Thread(target=keep_relaying, name="relay-keeper", daemon=True).start()


def _alive(pid: int) -> bool:
    """Whether the relay still runs. gunicorn's master reaps every child it has, the relay
    included, so a child already reaped is gone too."""
    try:
        found, _status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False
    return found == 0


def on_exit(server):
    _relay["stopping"] = True
    pid = _relay["process"]
    if pid is None or not _alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
