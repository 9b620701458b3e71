from django.core.management.base import BaseCommand, CommandError

from connector import logs, subscriptions
from connector.models import Subscription


class Command(BaseCommand):
    help = (
        "Deliver a subscription's events again from a time on (those the outbox still holds: "
        "EVENTS_OUTBOX_RETENTION_DAYS), in order per device and under their own ids; the "
        "same as POST …/events/subscription/<id>/redeliver."
    )

    def add_arguments(self, parser):
        parser.add_argument("subscription", help="the subscription id (sub_…)")
        parser.add_argument(
            "--since", required=True, help="ISO date/time (UTC), e.g. 2026-05-01T12:00, or µs"
        )

    def handle(self, *args, subscription, since, **options):
        found = Subscription.objects.filter(pk=subscription).first()
        if found is None:
            raise CommandError(f"No subscription {subscription}.")
        try:
            since_us = logs.parse_time(since)
        except ValueError:
            raise CommandError("--since: give a date/time like 2026-05-01T12:00 or µs") from None
        result = subscriptions.redeliver(found, since_us)
        self.stdout.write(f"{result['owed']} events will be delivered again.")
