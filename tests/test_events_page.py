"""The Settings tab's Events section (issue #15): add a webhook subscription (its secret shown
once), see its health, send a test event to a real receiver, replay, delete."""

import json
import re

from django.urls import reverse

from connector.models import Subscription
from tests.test_events import Receiver


def settings_page(client, connector) -> str:
    return client.get(reverse("connector-settings", args=[connector.id])).content.decode()


def test_add_a_subscription_see_it_test_it_and_delete_it(browser_client, connector):
    receiver = Receiver()
    try:
        created = browser_client.post(
            reverse("subscription-create", args=[connector.id]),
            {"url": receiver.url, "types": ["data_in", "provisioned"], "batch": "1"},
            follow=True,
        )
        html = created.content.decode()
        secret = re.search(r"shown this once: (whsec_[A-Za-z0-9+/=]+)", html).group(1)
        subscription = Subscription.objects.get()
        assert subscription.types == ["data_in", "provisioned"]
        again = settings_page(browser_client, connector)
        assert secret not in again  # once only
        assert receiver.url in again and "Backlog" in again and "data_in, provisioned" in again
        tested = browser_client.post(
            reverse("subscription-test", args=[connector.id, subscription.id]), follow=True
        )
        assert "Test event delivered: the receiver answered 204." in tested.content.decode()
        assert receiver.events()[0]["type"] == "test"
        receiver.status = 500
        failed = browser_client.post(
            reverse("subscription-test", args=[connector.id, subscription.id]), follow=True
        )
        assert "Test event not delivered" in failed.content.decode()
        browser_client.post(reverse("subscription-delete", args=[connector.id, subscription.id]))
        assert not Subscription.objects.exists()
        connector.refresh_from_db()
        assert connector.events_enabled is False
    finally:
        receiver.close()


def test_a_bad_subscription_says_what_is_wrong_and_creates_nothing(
    browser_client, connector, settings
):
    settings.EVENTS_ALLOW_PRIVATE_URLS = False
    response = browser_client.post(
        reverse("subscription-create", args=[connector.id]),
        {"url": "https://10.0.0.1/hook", "batch": "500"},
        follow=True,
    )
    html = response.content.decode()
    assert "URL: 10.0.0.1 is a private" in html and "Batch: Events per delivery" in html
    assert not Subscription.objects.exists()


def test_another_users_subscription_is_404(browser_client, bobs_connector):
    from connector import subscriptions

    theirs, _secret = subscriptions.create(
        bobs_connector, {"webhook": {"url": "https://hooks.example.com/x"}}
    )
    names = ("subscription-test", "subscription-delete", "subscription-replay")
    for name in names + ("subscription-rotate", "subscription-redeliver"):
        url = reverse(name, args=[bobs_connector.id, theirs.id])
        assert browser_client.post(url).status_code == 404
    assert Subscription.objects.filter(pk=theirs.pk).exists()


def test_a_broker_subscription_from_the_page_keeps_its_password_unshown(browser_client, connector):
    response = browser_client.post(
        reverse("subscription-create", args=[connector.id]),
        {
            "destination": "amqp",
            "amqp_url": "amqp://app:s3cret-pw@127.0.0.1:5672/%2F",
            "amqp_exchange": "iot.events",
            "amqp_routing_key": "{connector}.{type}",
            "types": ["data_in"],
        },
        follow=True,
    )
    html = response.content.decode()
    subscription = Subscription.objects.get()
    assert subscription.kind == Subscription.Kind.AMQP and subscription.types == ["data_in"]
    assert "amqp://app@127.0.0.1:5672/%2F" in html and "iot.events" in html
    assert "s3cret-pw" not in html and "s3cret-pw" not in settings_page(browser_client, connector)
    assert "Rotate secret" not in settings_page(browser_client, connector)  # no signing secret
    bad = browser_client.post(
        reverse("subscription-create", args=[connector.id]),
        {"destination": "amqp", "amqp_url": "http://nope", "amqp_exchange": "x"},
        follow=True,
    )
    assert "Broker URL:" in bad.content.decode() and Subscription.objects.count() == 1


def test_rotating_the_secret_and_delivering_again_from_the_page(browser_client, connector):
    from connector import subscriptions

    found, old = subscriptions.create(
        connector, {"webhook": {"url": "https://hooks.example.com/x"}}
    )
    rotated = browser_client.post(
        reverse("subscription-rotate", args=[connector.id, found.id]), follow=True
    ).content.decode()
    new = re.search(r"new signing secret, shown this once: (whsec_[A-Za-z0-9+/=]+)", rotated)
    assert new and new.group(1) != old
    assert new.group(1) not in settings_page(browser_client, connector)
    again = browser_client.post(
        reverse("subscription-redeliver", args=[connector.id, found.id]),
        {"since": "2026-05-01T12:00"},
        follow=True,
    ).content.decode()
    assert "0 events will be delivered again, in order." in again
    bad = browser_client.post(
        reverse("subscription-redeliver", args=[connector.id, found.id]),
        {"since": "last tuesday"},
        follow=True,
    ).content.decode()
    assert "Deliver again since: give a date/time" in bad


def test_dead_letters_show_the_last_answer_and_replay_one_by_one(browser_client, connector):
    from connector import subscriptions
    from connector.models import DeadLetter

    found, _secret = subscriptions.create(
        connector, {"webhook": {"url": "https://hooks.example.com/x"}}
    )
    letters = [
        DeadLetter.objects.create(
            subscription=found,
            event_id=n,
            body=json.dumps({"id": f"evt_{n}", "type": "data_in", "identity": f"dev-{n}"}),
            attempts=7,
            last_status=500 + n,
            last_response=f"broken <b>{n}</b>",
        )
        for n in (1, 2)
    ]
    html = settings_page(browser_client, connector)
    assert "evt_1" in html and "HTTP 502" in html and "7 attempts" in html
    assert "broken &lt;b&gt;2&lt;/b&gt;" in html  # the receiver's answer, escaped
    browser_client.post(
        reverse("subscription-replay", args=[connector.id, found.id]), {"letter": letters[1].id}
    )
    asked = {d.pk: d.replay_requested_at for d in DeadLetter.objects.all()}
    assert asked[letters[1].pk] is not None and asked[letters[0].pk] is None  # that one only
    assert "replay asked" in settings_page(browser_client, connector)
    bad = browser_client.post(
        reverse("subscription-replay", args=[connector.id, found.id]), {"letter": "x"}, follow=True
    )
    assert "No such dead letter." in bad.content.decode()
    assert DeadLetter.objects.get(pk=letters[0].pk).replay_requested_at is None
