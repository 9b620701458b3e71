import os
import signal
import threading

from django.conf import settings
from django.core.management.base import BaseCommand

from connector import outbox
from connector.relay import Relay


class Command(BaseCommand):
    help = (
        "Relay the outbox to event subscriptions until stopped (SIGTERM, Ctrl-C): for "
        "deployments that run relays as processes of their own (EVENTS_RELAY=false)."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--parent", type=int, help="stop when this process (the server) is gone"
        )

    def handle(self, *args, parent=None, **options):
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        if settings.EVENTS_RELAY_NICE > 0:
            # Device requests first: the relay delivers with the CPU the workers leave.
            os.nice(settings.EVENTS_RELAY_NICE)
        outbox.listen_for_wakes()
        relay = Relay().start()
        self.stdout.write(f"relaying as {relay.owner}")
        while not stop.wait(1.0):
            if parent is not None and os.getppid() != parent:
                self.stderr.write(f"the server (pid {parent}) is gone: the relay stops")
                break
        relay.stop()
