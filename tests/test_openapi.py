"""The management API against its own OpenAPI description, fuzzed by schemathesis (issue #14).

Every operation of the served description is called on a live server, signed in, with the
path pointing at a real connector and at real (and unknown) identities, with examples
generated from its declared bodies and parameters (positive) and with data that breaks them
(negative). Each answer must be no 5xx and must match what the description says of its
status, content type, headers and body. `FUZZ_EXAMPLES` bounds the examples per operation and
mode (default 20).
"""

import os
import re

import pytest
import schemathesis
from drf_spectacular.generators import SchemaGenerator
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from connector import services, subscriptions
from connector.models import Membership, User
from devices import services as device_services
from tests.conftest import PASSWORD, basic, define, store_item

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "20"))
AUTH = {"Authorization": basic("fuzz@example.com")}
# The description as the server serves it, read once when the tests are collected.
DESCRIPTION = SchemaGenerator().get_schema(request=None, public=True)
SCHEMA = schemathesis.openapi.from_dict(DESCRIPTION)
MODES = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
# Each operation in both modes; those about one identity for a known and an unknown one.
CASES = [
    (method.upper(), path, identity, mode)
    for path, item in DESCRIPTION["paths"].items()
    for method in item
    for identity in (["00000001", "unknown-1"] if "{identity}" in path else ["00000001"])
    for mode in MODES
]


def test_every_body_and_answer_is_described():
    """No free-form object is left where a real shape exists (what fuzzers need to reach
    the real fields): every JSON request body and 2xx JSON answer names its schema."""
    for path, item in DESCRIPTION["paths"].items():
        for method, operation in item.items():
            body = operation.get("requestBody", {}).get("content", {})
            for media, content in body.items():
                assert "$ref" in content["schema"] or media == "multipart/form-data", (
                    method,
                    path,
                    media,
                )
            for code, answer in operation["responses"].items():
                for media, content in answer.get("content", {}).items():
                    if media == "text/plain":
                        continue  # the HTTP parser's own one-line refusal
                    schema = content["schema"]
                    assert "$ref" in schema or "items" in schema, (method, path, code)
    components = DESCRIPTION["components"]["schemas"]
    assert components["SettingsPatch"]["additionalProperties"] is False


@pytest.fixture
def line(live_server, transactional_db, settings):
    # schemathesis also checks that wrong credentials are refused, many times over: here
    # that is a 401 each time, not the throttle's 429 (tests/test_throttling.py).
    settings.SIGNIN_FAILURE_LIMIT = settings.SIGNIN_ACCOUNT_FAILURE_LIMIT = 10**9
    settings.SIGNIN_ADDRESS_FAILURE_LIMIT = 10**9
    user = User.objects.create_user("fuzz@example.com", PASSWORD)
    connector = services.create_connector(user, "Fuzzed line")
    colleague = User.objects.create_user("colleague@example.com", PASSWORD)
    Membership.objects.create(user=colleague, connector=connector, role=Membership.Role.VIEWER)
    define(connector, "temp", setpoint={"format": "number", "settable": True})
    device_services.whitelist_device(connector, "00000001")
    # A subscription to a closed port: its test sends get an answer, none is delivered.
    subscription, _secret = subscriptions.create(
        connector, {"webhook": {"url": "http://127.0.0.1:9/events"}}
    )
    store_item(connector, "fw.bin", b"firmware image")  # for the content operations
    return live_server, connector, subscription


@pytest.mark.parametrize(
    ("method", "path", "identity", "mode"),
    CASES,
    ids=[f"{m} {p} {i} {mode}" for m, p, i, mode in CASES],
)
def test_every_operation_answers_as_described_and_never_5xx(line, method, path, identity, mode):
    server, connector, subscription = line
    values = {
        "connector_id": connector.pk,
        "identity": identity,
        "subscription_id": subscription.pk,
        "name": "fw.bin",
        "email": "colleague@example.com",
    }
    names = re.findall(r"{(\w+)}", path)
    strategy = SCHEMA[path][method].as_strategy(
        mode, path_parameters={name: values[name] for name in names}
    )

    @given(strategy)
    @hypothesis_settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def call(case):
        case.call_and_validate(
            base_url=server.url, headers=AUTH, excluded_checks=[positive_data_acceptance]
        )

    call()
