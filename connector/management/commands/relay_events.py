import signal
import threading

from django.core.management.base import BaseCommand

from connector.relay import Relay


class Command(BaseCommand):
    help = (
        "Relay the outbox to event subscriptions until stopped (SIGTERM, Ctrl-C): for "
        "deployments that run relays as processes of their own (EVENTS_RELAY=false)."
    )

    def handle(self, *args, **options):
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        relay = Relay().start()
        self.stdout.write(f"relaying as {relay.owner}")
        stop.wait()
        relay.stop()
