"""SQLite: long-poll wake-ups between the server processes that share one DATA_DIR.

PostgreSQL carries wake-ups itself (NOTIFY). With SQLite, each server process that holds polls
binds a Linux abstract Unix datagram socket and leaves a marker file named by its pid in
`DATA_DIR/wake/`; a process that committed a change sends one small datagram to every other
marked process. Like a notification, a datagram is only a hint: the woken poll re-reads the
value, and a poll registers before its re-read, so a process that starts listening just after a
write still sees that write.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

Key = tuple[int, str]
MAX_DATAGRAM = 60_000
SEND_TIMEOUT_S = 0.1  # a receiver whose queue is full: wait this long, then drop the hint


def encode(keys: list[Key]) -> list[bytes]:
    """The keys as datagrams of whole lines, each at most MAX_DATAGRAM bytes."""
    datagrams, lines, size = [], [], 0
    for pk, alias in keys:
        line = f"{pk}:{alias}".encode()[:MAX_DATAGRAM]
        if lines and size + len(line) + 1 > MAX_DATAGRAM:
            datagrams.append(b"\n".join(lines))
            lines, size = [], 0
        lines.append(line)
        size += len(line) + 1
    if lines:
        datagrams.append(b"\n".join(lines))
    return datagrams


def decode(data: bytes) -> list[Key]:
    keys = []
    for line in data.decode("utf-8", "replace").split("\n"):
        device, sep, alias = line.partition(":")
        if sep and device.isascii() and device.isdigit() and alias:
            keys.append((int(device), alias))
    return keys


class WakeBus:
    def __init__(self, data_dir: Path):
        self.dir = Path(data_dir) / "wake"
        tag = hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()[:16]
        self.prefix = f"\0iot-wake-{tag}-".encode()
        self.receiver: socket.socket | None = None
        self.sender: socket.socket | None = None
        self.lock = threading.Lock()
        self.seen_mtime: int | None = None
        self.peers: list[int] = []

    def address(self, pid: int) -> bytes:
        return self.prefix + str(pid).encode()

    def listen(self, loop, on_keys: Callable[[list[Key]], None]) -> None:
        """Receive in `loop` (once per process). Bound before the marker appears, so a writer
        that lists the marker can always reach the socket."""
        if self.receiver is not None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        receiver.bind(self.address(os.getpid()))
        receiver.setblocking(False)
        marker = self.dir / str(os.getpid())
        marker.touch()
        atexit.register(marker.unlink, missing_ok=True)
        loop.add_reader(receiver.fileno(), self._receive, receiver, on_keys)
        self.receiver, self.loop = receiver, loop

    def close(self) -> None:
        """Stop receiving (in the loop) and stop being listed."""
        if self.receiver is not None:
            self.loop.remove_reader(self.receiver.fileno())
            self.receiver.close()
            self.receiver = None
            (self.dir / str(os.getpid())).unlink(missing_ok=True)
        with self.lock:
            if self.sender is not None:
                self.sender.close()
                self.sender = None

    @staticmethod
    def _receive(receiver: socket.socket, on_keys) -> None:
        while True:
            try:
                data = receiver.recv(65_536)
            except (BlockingIOError, InterruptedError):
                return
            on_keys(decode(data))

    def send(self, keys: list[Key]) -> None:
        """Tell every other listening process (any thread, after the commit)."""
        if not keys:
            return
        datagrams = encode(keys)
        own = os.getpid()
        for pid in self._listeners():
            if pid == own:
                continue
            try:
                for datagram in datagrams:
                    self._sender().sendto(datagram, self.address(pid))
            except ConnectionRefusedError:  # that process is gone: forget it
                (self.dir / str(pid)).unlink(missing_ok=True)
            except OSError as exc:  # timeout or full queue: a lost hint
                log.warning("long polls: wake-up to process %s dropped: %s", pid, exc)

    def _listeners(self) -> list[int]:
        """The marked pids, listed again only when the folder changed (one stat per write)."""
        try:
            mtime = os.stat(self.dir).st_mtime_ns
        except FileNotFoundError:
            return []
        with self.lock:
            if mtime != self.seen_mtime:
                self.peers = [int(name) for name in os.listdir(self.dir) if name.isdigit()]
                self.seen_mtime = mtime
            return self.peers

    def _sender(self) -> socket.socket:
        with self.lock:
            if self.sender is None:
                self.sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self.sender.settimeout(SEND_TIMEOUT_S)
            return self.sender
