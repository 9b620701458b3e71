"""The device store (provisioning/store.py and the front's Batcher): many device writes and
activations in one transaction (one statement on PostgreSQL), each answered only once
stored, the rest explained (provisioning/explain.py); and the event loop's own step for
them (provisioning.api.in_loop), with no query."""

import asyncio
import fcntl
import io
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
from django.db import DatabaseError, connection

from connector import keys
from connector.models import Connector, Event, EventType, User
from connector.services import create_connector
from devices import services as device_services
from devices.models import AliasValue, DataPoint, Device, DeviceActivity
from iotconnector.front import Batcher, build_environ
from provisioning import api, auth, connectors, ratelimit, services, store
from provisioning.host import DEVICE_API, route
from provisioning.jobs import ClaimJob, ValueRow, WriteJob
from provisioning.store import STORED, UNSTORED
from tests.conftest import PASSWORD, define, statements_counted
from tests.test_long_poll import (
    Device_,
    activated,
    devmode_connector_for_tests,
    post_activate,
    sqlite_servers,
)

# --- The batcher (pure asyncio) ---------------------------------------------------------------


@dataclass
class Job:
    name: str
    key: str


def run_batcher(execute, submissions, limit=64):
    """Submit jobs as `submissions` says ([(job, delay before it)]), return their results."""

    async def main():
        batcher = Batcher(execute, limit)
        futures = []
        for job, delay in submissions:
            await asyncio.sleep(delay)
            futures.append(batcher.submit(job))
        try:
            return await asyncio.gather(*futures)
        finally:
            batcher.stop()

    return asyncio.run(main())


def test_jobs_arriving_while_a_batch_runs_go_together_in_the_next():
    batches, release = [], threading.Event()

    def execute(jobs):
        batches.append([job.name for job in jobs])
        if len(batches) == 1:
            release.wait(5)  # the first batch is still running when the others arrive
        return [f"{job.name} stored" for job in jobs]

    jobs = [Job("a", "1"), Job("b", "2"), Job("c", "3"), Job("d", "2")]

    async def later_release():
        await asyncio.sleep(0.2)
        release.set()

    submissions = [(jobs[0], 0), (jobs[1], 0.05), (jobs[2], 0), (jobs[3], 0)]

    async def main():
        batcher = Batcher(execute, 64)
        releaser = asyncio.create_task(later_release())
        futures = []
        for job, delay in submissions:
            await asyncio.sleep(delay)
            futures.append(batcher.submit(job))
        results = await asyncio.gather(*futures)
        await releaser
        batcher.stop()
        return results

    results = asyncio.run(main())
    assert results == ["a stored", "b stored", "c stored", "d stored"]
    # "a" went alone at once (nothing waits for a timer); "d" shares its key with "b", so it
    # waits for the batch after.
    assert batches == [["a"], ["b", "c"], ["d"]]


def test_a_batch_never_exceeds_its_limit():
    sizes = []

    def execute(jobs):
        sizes.append(len(jobs))
        time.sleep(0.05)
        return [True] * len(jobs)

    jobs = [(Job(str(n), str(n)), 0) for n in range(7)]
    assert run_batcher(execute, jobs, limit=3) == [True] * 7
    assert max(sizes) <= 3 and sum(sizes) == 7


def test_a_batch_that_raises_answers_false_for_each_job():
    def execute(jobs):
        raise RuntimeError("the database went away")

    assert run_batcher(execute, [(Job("a", "1"), 0), (Job("b", "2"), 0)]) == [False, False]


# --- The batches (one statement on PostgreSQL, one transaction on SQLite) --------------------


def postgresql() -> bool:
    return connection.vendor == "postgresql"


@pytest.fixture
def postgres(transactional_db):
    if not postgresql():
        pytest.skip("needs parallel connections: runs in the PostgreSQL pass of the suite")


@pytest.fixture
def line(transactional_db):
    user = User.objects.create_user("maker@example.com", PASSWORD)
    connector = create_connector(user, "Batch line")
    define(connector, "temp", setpoint={"format": "number", "settable": True})
    connector.refresh_from_db()
    tokens = {}
    for n in range(3):
        identity = f"dev-{n}"
        device_services.whitelist_device(connector, identity)
        tokens[identity] = services.activate_device(
            connector, identity, None, "127.0.0.1", secure=True
        ).body
    connectors.load(connector.pk, "127.0.0.1")
    return connector, tokens


def job_for(connector, token, body, ip="198.51.100.7"):
    entry = connectors.cached(connector.pk)
    return services.token_write(entry, token, body, ip, secure=True).job


def test_writes_of_several_devices_are_stored_in_one_transaction(line, django_assert_num_queries):
    connector, tokens = line
    jobs = [
        job_for(connector, tokens["dev-0"], [("temp", "20")]),
        job_for(connector, tokens["dev-1"], [("temp", "21"), ("setpoint", "5"), ("other", "x")]),
        job_for(connector, tokens["dev-2"], [("setpoint", "7")]),
    ]
    # PostgreSQL: one statement. SQLite: BEGIN, one lookup of the three devices, one
    # statement each for the values, their history, last seen and the events, COMMIT.
    with django_assert_num_queries(1 if postgresql() else 1 + 1 + 4 + 1):
        assert store.execute(jobs) == [STORED, STORED, STORED]
    stored = {
        (d, a): (r, s)
        for d, a, r, s in AliasValue.objects.values_list(
            "device__identity", "alias", "reported", "set"
        )
    }
    assert stored == {
        ("dev-0", "temp"): ("20", None),
        ("dev-1", "temp"): ("21", None),
        ("dev-1", "setpoint"): ("5", "5"),
        ("dev-2", "setpoint"): ("7", "7"),
    }
    # Every stored value is history, at its write's time; the undefined alias is not.
    points = DataPoint.objects.values_list("device__identity", "alias", "value", "timestamp")
    assert sorted(p[:3] for p in points) == [
        ("dev-0", "temp", "20"),
        ("dev-1", "setpoint", "5"),
        ("dev-1", "temp", "21"),
        ("dev-2", "setpoint", "7"),
    ]
    assert {p[3] for p in points} == {job.now for job in jobs}
    writes = Event.objects.filter(type=EventType.DATA_IN).order_by("identity")
    assert [e.identity for e in writes] == ["dev-0", "dev-1", "dev-2"]
    assert writes[1].payload == {
        "values": {"temp": "21", "setpoint": "5", "other": "x"},
        "not_stored": ["other"],
    }
    assert all(str(e.source_ip) == "198.51.100.7" for e in writes)
    seen = DeviceActivity.objects.filter(device__identity__in=["dev-0", "dev-1", "dev-2"])
    assert {a.last_ip for a in seen} == {"198.51.100.7"}


def test_a_batch_larger_than_one_statement_takes_is_stored_whole(line, request):
    """A batch of wide writes needing more parameters than the database takes in one
    statement: the rows go in several statements of the one transaction, none lost."""
    connector, tokens = line
    if connection.vendor == "sqlite":  # as a build with the default limit, but lower
        connection.ensure_connection()
        limit = sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER
        saved = connection.connection.setlimit(limit, 2000)
        request.addfinalizer(lambda: connection.connection.setlimit(limit, saved))
    aliases = [f"a{n:02d}" for n in range(40)]
    define(connector, *aliases)
    connectors.load(connector.pk, "127.0.0.1")
    jobs = [
        job_for(connector, tokens[f"dev-{n % 3}"], [(a, f"{n}") for a in aliases])
        for n in range(180)
    ]  # 7,200 values: 36,000 parameters for their upsert alone
    assert store.execute(jobs) == [STORED] * 180
    assert Event.objects.filter(type=EventType.DATA_IN).count() == 180
    latest = AliasValue.objects.filter(alias__in=aliases)
    assert {(v.device.identity, v.reported) for v in latest} == {
        ("dev-0", "177"),
        ("dev-1", "178"),
        ("dev-2", "179"),
    }


def test_the_batch_lookup_read_in_one_step_gives_the_rows_a_plain_read_gives(line):
    """The writers of a batch are read packed (one step on SQLite, not one per device):
    every column comes back as a plain read gives it, awkward text, NULLs and flags too."""
    from connector.sql import run, run_packed

    connector, _tokens = line
    odd = Device.objects.create(
        connector=connector, identity='q"\\u00e9\u2603\\n\t\U0001f600', state="whitelisted"
    )
    DeviceActivity.objects.create(device=odd, last_ip="::1", last_seen=2**62)
    Device.objects.create(connector=connector, identity="never-seen", state="whitelisted")
    ids = list(Device.objects.filter(connector=connector).values_list("id", flat=True))
    sql = auth.lookup_sql(f"d.id IN ({', '.join(['%s'] * len(ids))})", any_connector=True)
    plain = sorted(run(sql, ids))
    assert len(plain) == len(ids) >= 4
    assert sorted(run_packed(sql, ids, auth.DeviceRow._fields)) == plain
    assert any(row[6] is None for row in plain)  # a device never seen: NULL activity
    assert run_packed(sql, [-1] * len(ids), auth.DeviceRow._fields) == []


def test_a_write_batch_finds_its_devices_by_connector_and_token_in_the_index(line):
    """Regression: a batch's lookup by token hashes alone could not seek the (connector,
    secret hash) index, and SQLite scanned all of it (every token device of every
    connector) for each batch: writes slowed as activations added tokens."""
    from connector import sql

    if connection.vendor != "sqlite":
        pytest.skip("SQLite's planner: PostgreSQL's statement names the connector per job")
    connector, tokens = line
    jobs = [job_for(connector, token, [("temp", "1")]) for token in tokens.values()]
    statements = []
    original = sql.run

    def plan_of(text, params, **kwargs):
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN QUERY PLAN " + text, params)
            statements.append(" ".join(str(row) for row in cursor.fetchall()))
        return original(text, params, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sql, "run", plan_of)
        found = auth.writers(jobs)
    assert len(found) == len(tokens)
    seek = "SEARCH d USING INDEX device_secret (connector_id=? AND secret_hash=?)"
    assert any(seek in plan for plan in statements)
    assert not any("SCAN d" in plan for plan in statements)


def test_a_write_the_statement_refuses_stores_nothing_and_the_others_are_stored(line):
    connector, tokens = line
    Device.objects.filter(identity="dev-1").update(locked=True)
    unknown = "A" * 40
    stale = job_for(connector, tokens["dev-2"], [("temp", "1")])
    stale.resources_version -= 1  # checked against definitions that have changed since
    jobs = [
        job_for(connector, tokens["dev-0"], [("temp", "20")]),
        job_for(connector, tokens["dev-1"], [("temp", "21")]),
        job_for(connector, unknown, [("temp", "22")]),
        stale,
    ]
    assert store.execute(jobs) == [STORED, UNSTORED, UNSTORED, UNSTORED]
    assert list(AliasValue.objects.values_list("device__identity", "reported")) == [("dev-0", "20")]
    assert list(Event.objects.filter(type=EventType.DATA_IN).values_list("identity")) == [
        ("dev-0",)
    ]


def test_an_address_over_the_failure_limit_stops_no_authenticated_device(line, settings):
    """Its neighbours' failures never refuse a device that proved who it is; a password is
    judged before (by its own identity's failures, `test_throttling`)."""
    connector, tokens = line
    settings.DEVICE_AUTH_FAILURE_LIMIT = 2
    for _ in range(2):
        ratelimit.note_failure(connector.pk, "198.51.100.9")
    Device.objects.filter(identity="dev-2").update(auth_type="password")
    password_device = auth.by_id(
        connector.pk, "198.51.100.9", Device.objects.get(identity="dev-2").pk
    )
    guessable = services.device_write(
        password_device, [("temp", "3")], "198.51.100.9", secure=True
    ).job
    token = job_for(connector, tokens["dev-0"], [("temp", "1")], ip="198.51.100.9")
    other = job_for(connector, tokens["dev-1"], [("temp", "2")], ip="198.51.100.10")
    assert store.execute([guessable, token, other]) == [STORED, STORED, STORED]


def test_a_failing_batch_stores_nothing_and_leaves_the_connection_usable(line):
    connector, tokens = line
    good = job_for(connector, tokens["dev-0"], [("temp", "20")])
    bad = job_for(connector, tokens["dev-1"], [("temp", "21")])
    bad.now = None  # a value without a timestamp: the batch fails as a whole
    assert store.execute([good, bad]) == [UNSTORED, UNSTORED]
    assert not AliasValue.objects.exists()
    assert store.execute([good]) == [STORED]


def claim_for(connector, identity, entry=None):
    entry = entry or connectors.load(connector.pk, "198.51.100.7")[0]
    pending = services.activation(entry, identity, None, "198.51.100.7", secure=True)
    assert pending.answer.status == 200 and isinstance(pending.job, ClaimJob)
    return pending.job


def test_activations_are_claimed_in_one_transaction(
    transactional_db, connector, django_assert_num_queries
):
    for identity in ("a-1", "a-2", "a-3"):
        device_services.whitelist_device(connector, identity)
    device_services.whitelist_device(connector, "a-4")
    Device.objects.filter(identity="a-4").update(locked=True)
    jobs = [claim_for(connector, identity) for identity in ("a-1", "a-2", "a-3", "a-4", "a-5")]
    # PostgreSQL: one statement. SQLite: BEGIN, the settings and failure counts, a claim per
    # identity, last seen and the events, COMMIT.
    with django_assert_num_queries(1 if postgresql() else 1 + 2 + 5 + 2 + 1):
        assert store.execute(jobs) == [STORED] * 3 + [UNSTORED] * 2
    provisioned = Device.objects.filter(state="provisioned").order_by("identity")
    assert [d.identity for d in provisioned] == ["a-1", "a-2", "a-3"]
    events = Event.objects.filter(type=EventType.PROVISIONED).order_by("identity")
    assert [e.identity for e in events] == ["a-1", "a-2", "a-3"]
    assert DeviceActivity.objects.count() == 3
    # Claimed once: the same jobs again claim nothing.
    assert store.execute(jobs[:3]) == [UNSTORED] * 3


def test_a_claim_holds_only_while_the_connector_settings_are_those_checked(
    transactional_db, connector
):
    for identity in ("b-1", "b-2"):
        device_services.whitelist_device(connector, identity)
    loaded, _failures = connectors.load(connector.pk, "198.51.100.7")
    assert connectors.cached(connector.pk) is loaded and loaded.fingerprint
    first, second = claim_for(connector, "b-1", loaded), claim_for(connector, "b-2", loaded)
    Connector.objects.filter(pk=connector.pk).update(provisioning_enabled=False)
    assert store.execute([first]) == [UNSTORED]  # checked against settings since changed
    assert Device.objects.get(identity="b-1").state == "whitelisted"
    Connector.objects.filter(pk=connector.pk).update(provisioning_enabled=True)
    assert store.execute([first, second]) == [STORED, STORED]  # the settings checked, again
    Connector.objects.filter(pk=connector.pk).update(ip_allowed=["10.0.0.0/8"])
    device_services.whitelist_device(connector, "b-3")
    assert store.execute([claim_for(connector, "b-3", loaded)]) == [UNSTORED]


# --- Through the server ----------------------------------------------------------------------


@pytest.fixture
def devmode_connector(live_server, transactional_db):
    return devmode_connector_for_tests("Batch line")


@pytest.fixture
def slow_batches(live_server):
    """The server's batchers, with a first batch that takes 0.3 s: requests sent meanwhile
    must be stored together by the next. Records every batch's size."""
    saved = dict(live_server.app.batchers)
    sizes: dict[str, list[int]] = {"write": [], "claim": []}

    def slowed(kind):
        def execute(jobs):
            sizes[kind].append(len(jobs))
            if len(sizes[kind]) == 1:
                time.sleep(0.3)
            return store.execute(jobs)

        return execute

    for kind in sizes:
        live_server.app.batchers[kind] = Batcher(slowed(kind), 64, failed=UNSTORED)
    yield sizes
    for kind in sizes:
        live_server.app.batchers.pop(kind).stop()
    live_server.app.batchers.update(saved)


def test_concurrent_writes_are_stored_in_batches_and_each_answered(
    live_server, postgres, devmode_connector, slow_batches
):
    devices = [activated(live_server, devmode_connector, f"w-{n:02d}") for n in range(16)]
    assert devices[0].write("temp=first").status_code == 204
    slow_batches["write"].clear()
    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(lambda d: d.write(f"temp={d.token[:4]}").status_code, devices))
    assert statuses == [204] * 16
    stored = dict(AliasValue.objects.values_list("device__identity", "reported"))
    assert stored == {f"w-{n:02d}": devices[n].token[:4] for n in range(16)}
    assert Event.objects.filter(type=EventType.DATA_IN).count() == 17
    sizes = slow_batches["write"]
    assert sum(sizes) == 16 and max(sizes) > 1  # stored together, not one by one
    # The activations went through the same batcher, one claim per request.
    assert sum(slow_batches["claim"]) == 16


def test_writes_the_batch_does_not_store_are_explained_and_logged_once(
    live_server, devmode_connector
):
    device = activated(live_server, devmode_connector, "locked-1")
    Device.objects.filter(identity="locked-1").update(locked=True)
    assert device.write("temp=1").status_code == 403
    stranger = Device_(live_server, devmode_connector, "B" * 40)
    assert stranger.write("temp=1").status_code == 401
    assert not AliasValue.objects.exists()
    assert not Event.objects.filter(type=EventType.DATA_IN).exists()
    failed = Event.objects.filter(type=EventType.AUTH_FAILED)
    assert failed.count() == 1  # logged once, by the explanation


def test_a_failed_batch_is_explained_and_its_job_stored_on_its_own(live_server, devmode_connector):
    device = activated(live_server, devmode_connector, "retry-1")
    saved = live_server.app.batchers.pop("write", None)

    def broken(jobs):
        raise DatabaseError("connection lost")

    live_server.app.batchers["write"] = Batcher(broken, 64, failed=UNSTORED)
    try:
        assert device.write("temp=42").status_code == 204
    finally:
        live_server.app.batchers.pop("write").stop()
        if saved is not None:
            live_server.app.batchers["write"] = saved
    assert AliasValue.objects.get().reported == "42"
    assert Event.objects.filter(type=EventType.DATA_IN).count() == 1


def test_concurrent_activations_of_one_identity_through_the_server_yield_one_token(
    live_server, postgres, devmode_connector, slow_batches
):
    device_services.whitelist_device(devmode_connector, "racer-1")
    device_services.whitelist_device(devmode_connector, "warm-up")
    assert post_activate(live_server, devmode_connector, "warm-up").status_code == 200
    with ThreadPoolExecutor(8) as pool:
        responses = list(
            pool.map(lambda _: post_activate(live_server, devmode_connector, "racer-1"), range(8))
        )
    # One winner. The losers are refused 409, and beyond the identity's own limit from one
    # address (DEVICE_IDENTITY_FAILURE_LIMIT, 5) 429: one device retrying its identity.
    assert sorted(r.status_code for r in responses) == [200] + [409] * 5 + [429] * 2
    token = next(r.text for r in responses if r.status_code == 200)
    racer = Device.objects.get(identity="racer-1")
    assert keys.hashes_match(racer.secret_hash, token)
    provisioned = Event.objects.filter(type=EventType.PROVISIONED, identity="racer-1")
    assert provisioned.count() == 1
    refused = Event.objects.filter(type=EventType.PROVISION_FAILED, identity="racer-1")
    assert refused.count() == 5  # the 429s are not logged again


def test_an_activation_is_checked_against_settings_changed_since_they_were_read(
    live_server, devmode_connector
):
    for identity in ("s-1", "s-2"):
        device_services.whitelist_device(devmode_connector, identity)
    assert post_activate(live_server, devmode_connector, "s-1").status_code == 200  # cached
    Connector.objects.filter(pk=devmode_connector.pk).update(provisioning_enabled=False)
    refused = post_activate(live_server, devmode_connector, "s-2")
    assert refused.status_code == 403 and "disabled" in refused.text
    assert Device.objects.get(identity="s-2").state == "whitelisted"
    failed = Event.objects.filter(type=EventType.PROVISION_FAILED, identity="s-2")
    assert failed.get().payload["status"] == 403


# --- Taken in the event loop (provisioning.api.in_loop) --------------------------------------


def answer_in_loop(environ):
    """What the front does in its loop: route the request, run the device API's no-query
    step. (answer, job), or None: a thread decides."""
    routed = route(environ)
    if routed is None:
        return None
    pending = api.in_loop(*routed)
    return None if pending is None else (pending.answer, pending.job)


def loop_environ(connector, path="/provision/activate", body=b"id=e-1", **headers):
    """The environ the front builds for a request from `peer` (default loopback)."""
    peer = headers.pop("peer", "127.0.0.1")
    query = headers.pop("query", b"")
    method = headers.pop("method", "POST")
    raw = {
        "host": f"{connector.id}.localhost",
        "content-type": "application/x-www-form-urlencoded",
        "content-length": str(len(body)),
        **{name.replace("_", "-"): value for name, value in headers.items()},
    }
    scope = {
        "method": method,
        "path": path,
        "query_string": query,
        "http_version": "1.1",
        "client": (peer, 40000),
        "headers": [(k.encode(), v.encode()) for k, v in raw.items() if v is not None],
    }
    return build_environ(scope, io.BytesIO(body))


@pytest.fixture
def cached_line(line):
    """`line`, in developer mode, its settings read (and kept) by this process."""
    connector, tokens = line
    Connector.objects.filter(pk=connector.pk).update(devmode=True)
    connectors.load(connector.pk, "127.0.0.1")
    return connector, tokens


def test_the_loop_takes_an_activation_with_the_address_seen_through_trusted_proxies(
    cached_line, django_assert_num_queries
):
    connector, _tokens = cached_line
    device_services.whitelist_device(connector, "e-1")
    environ = loop_environ(connector, x_forwarded_for="203.0.113.5")
    before = dict(environ)
    with django_assert_num_queries(0):
        response, job = answer_in_loop(environ)
    assert response.status == 200 and len(response.content) == 40
    assert isinstance(job, ClaimJob) and job.identity == "e-1"
    assert job.ip == "203.0.113.5"  # the loopback proxy is trusted
    assert environ == before  # a thread, if needed, starts from the request as sent
    assert keys.hashes_match(job.secret_hash, response.content.decode())
    # From an untrusted peer, the forwarded address is not believed.
    _response, job = answer_in_loop(
        loop_environ(connector, peer="198.51.100.20", x_forwarded_for="203.0.113.5")
    )
    assert job.ip == "198.51.100.20"


def test_the_loop_takes_a_token_write(cached_line, django_assert_num_queries):
    connector, tokens = cached_line
    environ = loop_environ(
        connector, "/onep:v1/stack/alias", b"temp=20", x_exosite_cik=tokens["dev-0"]
    )
    with django_assert_num_queries(0):
        response, job = answer_in_loop(environ)
    assert response.status == 204
    assert isinstance(job, WriteJob) and job.rows == [ValueRow("temp", "20", None)]
    # The store's share: one statement on PostgreSQL; on SQLite the lookup, the value, its
    # history point and the event (last seen is not due: the activation wrote it), in one
    # transaction.
    with statements_counted() as done:
        assert store.execute([job]) == [STORED]
    assert len(done) == (1 if postgresql() else 4), done
    assert AliasValue.objects.get().reported == "20"
    assert DataPoint.objects.get().value == "20"


@pytest.mark.parametrize(
    "change",
    [
        {"method": "GET"},
        {"path": "/timestamp"},
        {"host": "localhost"},  # the management host
        {"host": "unknown-host.example"},  # not in ALLOWED_HOSTS: Django answers 400
        {"host": "nosuchconnector00.localhost"},  # not known here: a thread answers 404
        {"query": b"temp"},  # a hybrid write-read
        {"body": b""},
        {"body": b"temp=%zz"},
        {"body": b"setpoint=x"},  # refused by its definition, after authentication
        {"content_type": "text/plain"},
        {"x_exosite_cik": "short"},
        {"x_exosite_cik": None, "authorization": "Basic ZGV2LTA6c2VjcmV0"},  # identity:password
    ],
)
def test_the_loop_leaves_every_other_write_to_a_thread(cached_line, change):
    connector, tokens = cached_line
    fields = {"method": "POST", "path": "/onep:v1/stack/alias", "body": b"temp=20"}
    fields |= {"x_exosite_cik": tokens["dev-0"], **change}
    environ = loop_environ(connector, fields.pop("path"), fields.pop("body"), **fields)
    assert answer_in_loop(environ) is None


def test_the_loop_leaves_activations_it_cannot_decide_to_a_thread(line):
    connector, _tokens = line
    device_services.whitelist_device(connector, "e-1")
    connectors.forget(connector.pk)
    assert answer_in_loop(loop_environ(connector)) is None  # settings not read yet
    connectors.load(connector.pk, "127.0.0.1")
    assert answer_in_loop(loop_environ(connector)) is None  # plain HTTP, not developer mode
    secure = loop_environ(connector, x_forwarded_proto="https")
    assert answer_in_loop(secure) is not None  # from the trusted proxy, over TLS
    assert answer_in_loop(loop_environ(connector, x_forwarded_proto="https", body=b"")) is None
    # An identity the format refuses: the handler on a thread refuses it and logs why.
    assert (
        answer_in_loop(loop_environ(connector, x_forwarded_proto="https", body=b"id=a b")) is None
    )
    Connector.objects.filter(pk=connector.pk).update(provisioning_enabled=False)
    connectors.load(connector.pk, "127.0.0.1")
    assert answer_in_loop(loop_environ(connector, x_forwarded_proto="https")) is None


@pytest.fixture
def thread_runs(live_server, monkeypatch):
    """The device API requests the server hands to a thread (the rest it took in its loop)."""
    runs = []
    run_sync = live_server.app.run_sync

    def counted(function, *args):
        if function is DEVICE_API.handle:
            runs.append(args[0].path_info)
        return run_sync(function, *args)

    monkeypatch.setattr(live_server.app, "run_sync", counted)
    return runs


def test_a_write_taken_in_the_loop_looks_like_one_answered_on_a_thread(
    live_server, devmode_connector, thread_runs
):
    device = activated(live_server, devmode_connector, "same-1")  # reads the settings
    assert thread_runs == ["/provision/activate"]
    in_loop = device.write("temp=1")  # no warm-up: the activation's read serves the write
    assert len(thread_runs) == 1
    connectors.forget(devmode_connector.pk)  # as in a process that has not read them yet
    on_thread = device.write("temp=2")
    assert thread_runs == ["/provision/activate", "/onep:v1/stack/alias"]
    assert (on_thread.status_code, in_loop.status_code) == (204, 204)
    assert in_loop.content == on_thread.content == b""

    def headers(response) -> dict:  # but the Date, which may have ticked on in between
        return {k: v for k, v in response.headers.items() if k.lower() != "date"}

    assert headers(in_loop) == headers(on_thread) and "date" in in_loop.headers
    assert AliasValue.objects.get().reported == "2"
    assert Event.objects.filter(type=EventType.DATA_IN).count() == 2
    # An activation, once the settings are known, is taken in the loop too.
    device_services.whitelist_device(devmode_connector, "same-2")
    assert post_activate(live_server, devmode_connector, "same-2").status_code == 200
    assert len(thread_runs) == 2
    assert Device.objects.get(identity="same-2").state == "devmode"


# --- SQLite under the production server, two processes on one file ---------------------------


@pytest.fixture
def sqlite_pair(tmp_path):
    servers, connector, tokens = sqlite_servers(tmp_path, devices=12, whitelisted=("racer-1",))
    yield servers, connector, tokens, tmp_path / "db.sqlite3"
    for server in servers:
        server.stop()


def test_sqlite_concurrent_writes_to_two_server_processes_are_each_stored_once(sqlite_pair):
    servers, connector, tokens, database = sqlite_pair
    devices = [Device_(servers[n % 2], connector, token) for n, token in enumerate(tokens)]

    def write_five(device):
        return [device.write(f"temp={device.token[:6]}-{n}").status_code for n in range(5)]

    with ThreadPoolExecutor(12) as pool:
        statuses = [status for written in pool.map(write_five, devices) for status in written]
    assert statuses == [204] * 60
    with sqlite3.connect(database) as db:
        stored = dict(
            db.execute(
                "SELECT d.secret_hash, v.reported FROM devices_aliasvalue v"
                " JOIN devices_device d ON d.id = v.device_id"
            )
        )
        events = db.execute(
            "SELECT count(*) FROM connector_event WHERE type = ?", [str(EventType.DATA_IN)]
        ).fetchone()[0]
    assert sorted(stored.values()) == sorted(f"{d.token[:6]}-4" for d in devices)
    assert events == 60


def test_sqlite_concurrent_activations_across_two_server_processes_yield_one_token(
    sqlite_pair,
):
    servers, connector, _tokens, database = sqlite_pair
    with ThreadPoolExecutor(8) as pool:
        responses = list(
            pool.map(lambda n: post_activate(servers[n % 2], connector, "racer-1"), range(8))
        )
    # One winner. The losers are refused 409, and beyond the identity's own limit from one
    # address (DEVICE_IDENTITY_FAILURE_LIMIT, 5) 429: one device retrying its identity.
    assert sorted(r.status_code for r in responses) == [200] + [409] * 5 + [429] * 2
    token = next(r.text for r in responses if r.status_code == 200)
    for server in servers:  # the token the one winner got is the one stored
        assert Device_(server, connector, token).write("temp=1").status_code == 204
    with sqlite3.connect(database) as db:
        logged = dict(
            db.execute(
                "SELECT type, count(*) FROM connector_event WHERE identity = 'racer-1'"
                " GROUP BY type"
            )
        )
    assert logged[str(EventType.PROVISIONED)] == 1
    assert logged[str(EventType.PROVISION_FAILED)] == 5


def test_sqlite_batches_take_turns_on_a_file_lock_beside_the_database(sqlite_pair):
    servers, connector, tokens, database = sqlite_pair
    device = Device_(servers[0], connector, tokens[0])
    assert device.write("temp=first").status_code == 204
    with open(f"{database}.batch-lock", "a") as lock, ThreadPoolExecutor(1) as pool:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as another process's batch would
        writing = pool.submit(device.write, "temp=second")
        time.sleep(0.3)
        assert not writing.done()  # the batch waits for the lock
        fcntl.flock(lock, fcntl.LOCK_UN)
        assert writing.result(timeout=10).status_code == 204
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT reported FROM devices_aliasvalue").fetchall() == [("second",)]


# --- MQTT sessions: opened and ended in batches ------------------------------------------------


def test_sessions_open_and_end_in_one_batch_with_the_set_values_each_missed(line):
    """A batch of MQTT session opens: one statement per step whatever the number of
    sessions, each device's set values stored since its last session ended (SPEC.md §8),
    its `connect` logged, its other sessions told to close; ends in job order after."""
    from devices.models import DeviceSession
    from provisioning.auth import Credentials, authenticate_credentials
    from provisioning.jobs import Opened
    from provisioning.mqtt.device import session_job

    connector, tokens = line
    rows = {
        identity: authenticate_credentials(
            connector.pk, "127.0.0.1", Credentials(token=token), secure=True
        )
        for identity, token in tokens.items()
    }
    ids = {identity: row.id for identity, row in rows.items()}
    for identity in rows:
        device_services.set_state(Device.objects.get(pk=ids[identity]), {"setpoint": "7"})
    stamps = dict(
        AliasValue.objects.filter(alias="setpoint").values_list("device__identity", "timestamp")
    )
    set_at = stamps["dev-0"]
    # dev-0's last session ended after that set; dev-1 never connected; dev-2's process
    # died while it was connected, before the set: it has missed it.
    DeviceSession.objects.create(
        device_id=ids["dev-0"],
        node="n",
        connection="old0",
        connected_at=set_at - 10,
        disconnected_at=set_at + 5,
    )
    DeviceSession.objects.create(
        device_id=ids["dev-2"],
        node="n",
        connection="old2",
        connected_at=set_at - 20,
        disconnected_at=set_at - 30,
    )

    def opening(identity):
        return session_job(
            rows[identity],
            "198.51.100.7",
            f"c-{identity}",
            "node-1",
            opening=True,
            settable=("setpoint",),
        )

    with statements_counted() as one:
        store.execute([opening("dev-1")])
    DeviceSession.objects.filter(device_id=ids["dev-1"]).delete()
    with statements_counted() as three:
        results = store.execute([opening(identity) for identity in ("dev-0", "dev-1", "dev-2")])
    assert len(three) == len(one)  # per batch, not per session
    assert results == [
        Opened(set_at + 5, []),
        Opened(0, [("setpoint", "7", stamps["dev-1"])]),
        Opened(set_at - 20, [("setpoint", "7", stamps["dev-2"])]),
    ]
    sessions = {s.device_id: s for s in DeviceSession.objects.all()}
    assert {i: sessions[i].connection for i in ids.values()} == {
        ids["dev-0"]: "c-dev-0",
        ids["dev-1"]: "c-dev-1",
        ids["dev-2"]: "c-dev-2",
    }
    assert all(s.connected_at and s.node == "node-1" for s in sessions.values())
    assert sessions[ids["dev-0"]].disconnected_at == set_at + 5  # the last session's end, kept
    connects = Event.objects.filter(type=EventType.CONNECT, identity="dev-1")
    assert connects.count() == 2
    assert connects.first().payload == {"connection_id": "c-dev-1"}

    # dev-0's stale connection ends: dev-0 stays connected; dev-1's own ends it.
    ends = [
        session_job(
            rows["dev-0"], "198.51.100.7", "old0", "node-1", opening=False, reason="the client left"
        ),
        session_job(
            rows["dev-1"],
            "198.51.100.7",
            "c-dev-1",
            "node-1",
            opening=False,
            reason="the connection was lost",
        ),
    ]
    assert store.execute(ends) == [STORED, STORED]
    sessions = {s.device_id: s for s in DeviceSession.objects.all()}
    assert sessions[ids["dev-0"]].connected_at is not None
    assert sessions[ids["dev-1"]].connected_at is None
    assert sessions[ids["dev-1"]].disconnected_at == ends[1].now
    lost = Event.objects.get(type=EventType.DISCONNECT, identity="dev-1")
    assert lost.payload == {"connection_id": "c-dev-1", "reason": "the connection was lost"}


def test_a_batch_plan_never_pairs_every_job_with_every_job(line):
    """PostgreSQL, statistics analysed as on a live database: the write statement of a full
    batch finds each job's device by an index probe, never by comparing each job with every
    other (a nested loop on the job number took 5 s for 1,000 writes), and runs without a
    JIT compile first."""
    import json

    from django.db import transaction

    if not postgresql():
        pytest.skip("PostgreSQL's planner: runs in its pass of the suite")
    connector, _tokens = line
    tokens = [keys.new_token(40) for _ in range(300)]
    Device.objects.bulk_create(
        Device(
            connector=connector,
            identity=f"bulk-{n}",
            state="provisioned",
            auth_type="token",
            secret_hash=keys.keyed_hash(token),
        )
        for n, token in enumerate(tokens)
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    jobs = [job_for(connector, token, [("temp", "1")]) for token in tokens]
    captured = {}

    def capture(sql, params, **kwargs):
        captured.update(sql=sql, params=params)
        return []

    from provisioning import store_pg

    original, store_pg.sql_run = store_pg.sql_run, capture
    try:
        store_pg.write(jobs)
    finally:
        store_pg.sql_run = original
    with transaction.atomic():
        with connection.cursor() as cursor:
            # However costly the plan looks, it is not compiled first (JIT took 40 ms
            # before each batch of a few dozen writes once the tables had grown).
            cursor.execute("SET LOCAL jit_above_cost = 0")
            cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + captured["sql"], captured["params"])
            (plan,) = cursor.fetchone()
        transaction.set_rollback(True)
    plan = plan if isinstance(plan, list) else json.loads(plan)
    assert "JIT" not in plan[0]

    def nodes(node):
        yield node
        for child in node.get("Plans", ()):
            yield from nodes(child)

    walked = list(nodes(plan[0]["Plan"]))
    assert plan[0]["Plan"]["Actual Rows"] == 300  # every write stored
    # Linear in the jobs (the paired plan went through 300 × 300 rows).
    assert sum(n.get("Rows Removed by Join Filter", 0) for n in walked) <= 5 * 300
    assert max(n["Actual Rows"] * n["Actual Loops"] for n in walked) <= 5 * 300


def test_a_write_plan_made_while_a_table_was_small_is_made_again_once_it_has_grown(
    line, monkeypatch
):
    """PostgreSQL keeps a prepared statement's generic plan until a table it reads is
    analysed. Once the plans are PLAN_MAX_AGE old they are made again for the tables as
    they are, and a write batch then reads each job's last-seen row by one index probe
    however much the table grew since it was analysed (activations took it from 200 rows
    to 89,000 before autovacuum came, and the batches' plan scanned it whole)."""
    from django.db import transaction

    from connector import sql

    if not postgresql():
        pytest.skip("PostgreSQL's planner: runs in its pass of the suite")
    connector, tokens = line
    device, activity = Device._meta.db_table, DeviceActivity._meta.db_table

    def seen_devices(count: int, prefix: str) -> None:
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {device} (connector_id, identity, state, locked, auth_type,"  # noqa: S608
                " secret_hash, cert_pem, cert_fingerprint, created_at) SELECT %s,"
                " %s || n, 'provisioned', false, 'token', '', '', '', now()"
                " FROM generate_series(1, %s) AS n",
                [connector.pk, prefix, count],
            )
            cursor.execute(
                f"INSERT INTO {activity} (device_id, last_ip, last_seen) SELECT id,"  # noqa: S608
                f" '192.0.2.1', 0 FROM {device} WHERE identity LIKE %s",
                [prefix + "%"],
            )

    def rows_scanned() -> int:
        jobs = [job_for(connector, token, [("temp", "2")]) for token in tokens.values()]
        with transaction.atomic():
            assert store.execute(jobs) == [STORED] * 3
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT coalesce(seq_tup_read, 0) FROM pg_stat_xact_user_tables"
                    " WHERE relname = %s",
                    [activity],
                )
                return cursor.fetchone()[0]

    with connection.cursor() as cursor:
        cursor.execute("SET plan_cache_mode = force_generic_plan")  # as after 5 uses
    seen_devices(200, "small-")
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    rows_scanned()  # prepared, and planned for a table of 200 rows
    seen_devices(30_000, "grown-")  # not analysed yet: autovacuum takes its time
    monkeypatch.setattr(sql, "PLAN_MAX_AGE", 0.0)  # the plans are due to be made again
    assert rows_scanned() < 1000  # a scan of it reads 30,203 rows
