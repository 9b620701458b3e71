from django.core.management.base import BaseCommand

from connector import outbox
from connector.logs import prune


class Command(BaseCommand):
    help = (
        "Delete events past LOG_RETENTION_DAYS and beyond LOG_MAX_ROWS_PER_CONNECTOR, and "
        "delivered outbox rows past EVENTS_OUTBOX_RETENTION_DAYS."
    )

    def add_arguments(self, parser):
        parser.add_argument("--days", type=int, help="override LOG_RETENTION_DAYS")
        parser.add_argument("--max-rows", type=int, help="override LOG_MAX_ROWS_PER_CONNECTOR")

    def handle(self, *args, days=None, max_rows=None, **options):
        deleted = prune(days=days, max_rows=max_rows)
        self.stdout.write(f"Deleted {deleted} event{'s' if deleted != 1 else ''}.")
        delivered = outbox.prune()
        self.stdout.write(
            f"Deleted {delivered} delivered outbox row{'s' if delivered != 1 else ''}."
        )
