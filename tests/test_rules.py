"""The device API's rules (provisioning/rules.py), case by case through the pure predicate and
through what the database runs: the SQL encoding on its own, and the store's statement that
acts on it (PostgreSQL's one statement, SQLite's transaction). On SQLite and PostgreSQL."""

import itertools

import pytest
from django.utils import timezone

from connector import keys
from connector.models import Connector, now_us
from connector.sql import run as sql_run
from connector.sql import tables
from devices.models import Device, DeviceActivity, DeviceAuthType, Status
from provisioning import auth, connectors, ratelimit, rules, services, store
from provisioning.models import AuthFailure

NOW = 1_800_000_000_000_000
STATES = [Status.WHITELISTED, Status.PROVISIONED, Status.DEVMODE, Status.REPROVISION]
EXPIRES = [None, NOW - 1, NOW, NOW + 1]
CLAIM_CASES = list(itertools.product(STATES, [False, True], EXPIRES))


def make_device(connector, identity, **fields) -> Device:
    return Device.objects.create(connector=connector, identity=identity, **fields)


@pytest.mark.parametrize(("state", "locked", "expire"), CLAIM_CASES)
def test_claimable_in_python_and_in_sql(connector, state, locked, expire):
    device = make_device(connector, "c-1", state=state, locked=locked, expire=expire)
    expected = rules.claimable(state, locked, expire, NOW)
    claimable = rules.sql_claimable(state="d.state", locked="d.locked", expire="d.expire", now="%s")
    sql = f"SELECT {claimable} FROM {tables(Device)[0]} d WHERE d.id = %s"  # noqa: S608
    assert bool(sql_run(sql, [NOW, device.pk])[0][0]) is expected
    # By hand, the rule as SPEC §3 words it.
    window = expire is None or expire >= NOW
    assert expected is (
        not locked and (state == Status.REPROVISION or (state == "whitelisted" and window))
    )


@pytest.mark.parametrize(("state", "locked", "expire"), CLAIM_CASES)
def test_the_store_claims_exactly_what_the_rule_calls_claimable(
    transactional_db, connector, state, locked, expire
):
    now = now_us()
    expire = None if expire is None else expire - NOW + now  # the same case, around now
    make_device(connector, "c-1", state=state, locked=locked, expire=expire)
    entry, _failures = connectors.load(connector.pk, "198.51.100.7")
    pending = services.activation(entry, "c-1", None, "198.51.100.7", secure=True)
    pending.job.now = now
    claimed = store.execute([pending.job]) == [store.STORED]
    assert claimed is rules.claimable(state, locked, expire, now)
    assert (Device.objects.get(identity="c-1").secret_hash != "") is claimed


IPS = [None, "198.51.100.7", "203.0.113.9"]
SEEN = [None, NOW - rules.ACTIVITY_EVERY_US, NOW - rules.ACTIVITY_EVERY_US + 1, NOW - 1]


@pytest.mark.parametrize(("last_ip", "last_seen"), list(itertools.product(IPS, SEEN)))
def test_activity_due_in_python_and_in_sql(connector, last_ip, last_seen):
    device = make_device(connector, "a-1")
    if last_ip is not None or last_seen is not None:
        DeviceActivity.objects.create(device=device, last_ip=last_ip, last_seen=last_seen)
    expected = rules.activity_due(last_ip, last_seen, "198.51.100.7", NOW)
    due = rules.sql_activity_due(last_ip="a.last_ip", last_seen="a.last_seen", ip="%s", now="%s")
    device_table, activity = tables(Device, DeviceActivity)
    sql = (
        f"SELECT {due} FROM {device_table} d LEFT JOIN {activity} a"  # noqa: S608
        " ON a.device_id = d.id WHERE d.id = %s"
    )
    params = ["198.51.100.7", NOW, rules.ACTIVITY_EVERY_US, device.pk]
    assert bool(sql_run(sql, params)[0][0]) is expected


DEVICE_CASES = list(
    itertools.product(
        [False, True],  # TLS
        [False, True],  # the connector's developer mode
        [False, True],  # DEVICE_API_INSECURE
        [None, 1, 2],  # failures of other clients at the address (the limit is 2)
        [False, True],  # locked
        [DeviceAuthType.TOKEN, DeviceAuthType.PASSWORD],
    )
)


@pytest.mark.parametrize(
    ("secure", "devmode", "insecure", "failures", "locked", "auth_type"), DEVICE_CASES
)
def test_device_refusal_in_python_in_sql_and_in_the_store(
    transactional_db, connector, settings, secure, devmode, insecure, failures, locked, auth_type
):
    settings.DEVICE_AUTH_FAILURE_LIMIT = 2
    settings.DEVICE_API_INSECURE = insecure
    Connector.objects.filter(pk=connector.pk).update(devmode=devmode)
    token = keys.new_token(40)
    device = make_device(
        connector,
        "r-1",
        state=Status.PROVISIONED,
        locked=locked,
        auth_type=auth_type,
        secret_hash=keys.keyed_hash(token),
    )
    ip = "198.51.100.7"
    if failures:
        window = ratelimit.current_window()
        AuthFailure.objects.create(
            connector_id=connector.pk, ip=ip, window_start=window, count=failures
        )
    refusal = rules.device_refusal(secure=secure, devmode=devmode, locked=locked)
    # By hand: plain HTTP (unless allowed), then locked. The address's failures never count.
    expected = None
    if not (secure or devmode or insecure):
        expected = 403, rules.PLAIN_HTTP
    elif locked:
        expected = 403, rules.LOCKED
    assert (refusal and (refusal.status, refusal.reason)) == expected
    allowed = rules.sql_device_allowed(locked="d.locked", devmode="c.devmode", secure="%s")
    device_table, conn = tables(Device, Connector)
    sql = (
        f"SELECT {allowed} FROM {device_table} d JOIN {conn} c ON c.id = d.connector_id"  # noqa: S608
        " WHERE d.id = %s"
    )
    assert bool(sql_run(sql, [rules.tls_or_insecure(secure), device.pk])[0][0]) is (refusal is None)
    # The store: a write stored exactly when nothing refuses it, found by its token or (as
    # a password device is, once authenticated) by its id.
    entry, _failures = connectors.load(connector.pk, ip)
    if auth_type == DeviceAuthType.TOKEN:
        pending = services.token_write(entry, token, [("temp", "1")], ip, secure=secure)
    else:
        row = auth.by_id(connector.pk, ip, device.pk)
        pending = services.device_write(row, [("temp", "1")], ip, secure=secure)
    assert (store.execute([pending.job]) == [store.STORED]) is (refusal is None)


GUESS_CASES = list(
    itertools.product(
        [0, 1, 2, 3],  # failures of the subject from this address (limit 3)
        [0, 4, 5, 9],  # failures of the subject from everywhere (limit 5)
        [False, True],  # the address the subject is known at
    )
)


@pytest.mark.parametrize(("here", "everywhere", "known"), GUESS_CASES)
def test_a_guessable_secret_is_refused_by_its_own_subjects_failures(here, everywhere, known):
    counts = ratelimit.Guesses(here, max(here, everywhere))
    refused = ratelimit.guess_refused(counts, known=known, here_limit=3, everywhere_limit=5)
    # By hand: three from here always; five from everywhere unless it is known here.
    assert refused is (here >= 3 or (max(here, everywhere) >= 5 and not known))


def test_every_refusal_of_an_unclaimed_identity_is_explained():
    """`unclaimed_refusal` gives each row that is not claimable its refusal, and none to one
    that is (the explanation retries those)."""
    for state, locked, expire in CLAIM_CASES:
        refusal = rules.unclaimed_refusal(state, locked, expire, NOW, register=False)
        assert (refusal is None) is rules.claimable(state, locked, expire, NOW)
        if locked:
            assert (refusal.status, refusal.reason) == (403, "device is locked")
        elif refusal is not None and state == Status.WHITELISTED:
            assert (refusal.status, refusal.event) == (409, "expired")
        elif refusal is not None:
            assert (refusal.status, refusal.reason) == (409, "identity already provisioned")
    assert rules.unclaimed_refusal(None, False, None, NOW, register=False).status == 404
    assert rules.unclaimed_refusal(None, False, None, NOW, register=True) is None


def test_rotation_needs_pki_a_stored_certificate_and_a_newer_one():
    earlier, later = timezone.now(), timezone.now() + timezone.timedelta(days=1)
    assert rules.may_rotate(True, "ab", earlier, later)
    assert not rules.may_rotate(False, "ab", earlier, later)
    assert not rules.may_rotate(True, "", earlier, later)
    assert not rules.may_rotate(True, "ab", None, later)
    assert not rules.may_rotate(True, "ab", later, earlier)
