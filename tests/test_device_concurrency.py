"""One-time steps under concurrency, on PostgreSQL with real parallel connections."""

import threading

import pytest
from django.db import connection, connections

from devices import services as device_services
from devices.models import Device
from tests.device_client import DeviceClient


@pytest.fixture
def postgres_only(transactional_db):
    if connection.vendor != "postgresql":
        pytest.skip("needs parallel connections: runs in the PostgreSQL pass of the suite")


def race(n, func):
    barrier = threading.Barrier(n)
    results = [None] * n

    def run(i):
        try:
            barrier.wait()
            results[i] = func(i)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_concurrent_activations_of_one_identity_yield_exactly_one_token(postgres_only, connector):
    device_services.whitelist_device(connector, "racer-1")
    statuses = race(
        8,
        lambda i: DeviceClient(connector, ip=f"203.0.113.{i + 1}").activate("racer-1").status_code,
    )
    assert sorted(statuses) == [200] + [409] * 7
    assert Device.objects.get().status == "provisioned"


def test_concurrent_self_registrations_yield_exactly_one(postgres_only, connector):
    connector.presenter_identity = True
    connector.save()
    statuses = race(
        8,
        lambda i: DeviceClient(connector, ip=f"203.0.113.{i + 1}").activate("newcomer").status_code,
    )
    assert sorted(statuses) == [200] + [409] * 7
    assert Device.objects.count() == 1
