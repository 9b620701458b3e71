from django.core.management.base import BaseCommand

from connector import content, outbox, overview
from connector.logs import prune
from devices import history


class Command(BaseCommand):
    help = (
        "Delete events past LOG_RETENTION_DAYS and beyond LOG_MAX_ROWS_PER_CONNECTOR, and "
        "delivered outbox rows past EVENTS_OUTBOX_RETENTION_DAYS, content uploads past their"
        " expiry, stored content files nothing refers to, and device value history past"
        " HISTORY_RETENTION_DAYS."
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
        counts = overview.prune()
        self.stdout.write(f"Deleted {counts} overview hour count{'s' if counts != 1 else ''}.")
        points = history.prune()
        self.stdout.write(f"Deleted {points} history point{'s' if points != 1 else ''}.")
        uploads = content.prune_uploads()
        orphans = content.sweep_orphans()
        self.stdout.write(
            f"Deleted {uploads} expired content upload{'s' if uploads != 1 else ''} and "
            f"{orphans} orphaned content file{'s' if orphans != 1 else ''}."
        )
