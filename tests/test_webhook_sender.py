"""The relay's HTTP client (connector.webhooks.Sender) against raw TCP receivers: whatever a
receiver answers, the relay reads at most RESPONSE_CAP bytes of it, within EVENTS_TIMEOUT,
reuses a connection only when the answer allows it, and never hangs or crashes."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from connector import webhooks


class RawReceiver:
    """Accepts connections and answers each request with `answer(request_bytes)` (bytes to
    send, or None to close); records every request and every connection."""

    def __init__(self, answer, tls=None):
        self.answer, self.tls = answer, tls
        self.requests: list[bytes] = []
        self.connections = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook?x=1"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            self._exchange(conn)
        except OSError:
            pass  # the sender went away mid-answer (it read as much as it wanted)

    def _exchange(self, conn):
        buffer = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, _, rest = buffer.partition(b"\r\n\r\n")
                length = int(
                    next(
                        line.split(b":", 1)[1]
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    )
                )
                while len(rest) < length:
                    rest += conn.recv(65536)
                self.requests.append(head + b"\r\n\r\n" + rest[:length])
                buffer = rest[length:]
                reply = self.answer(self.requests[-1])
                if reply is None:
                    return
                for part in reply if isinstance(reply, list) else [reply]:
                    if part is None:
                        return
                    if isinstance(part, float):
                        time.sleep(part)
                    else:
                        conn.sendall(part)

    def close(self):
        self.sock.close()


@pytest.fixture
def receiver_of(settings):
    settings.EVENTS_ALLOW_PRIVATE_URLS = True
    settings.EVENTS_TIMEOUT = 1.0
    made = []

    def make(answer, tls=None):
        made.append(RawReceiver(answer, tls))
        return made[-1]

    yield make
    for receiver in made:
        receiver.close()


NO_CONTENT = b"HTTP/1.1 204 No Content\r\n\r\n"


def test_one_request_in_one_piece_with_host_length_and_the_given_headers(receiver_of):
    receiver = receiver_of(lambda request: NO_CONTENT)
    sender = webhooks.Sender(receiver.url)
    reply = sender.post(b'{"a": 1}', {"webhook-id": "evt_1", "X-Extra": "yes"})
    assert reply == webhooks.Reply(204, None, "")
    head, _, body = receiver.requests[0].partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /hook?x=1 HTTP/1.1"
    port = receiver.sock.getsockname()[1]
    assert f"Host: 127.0.0.1:{port}" in lines and "Content-Length: 8" in lines
    assert "webhook-id: evt_1" in lines and "X-Extra: yes" in lines
    assert "Content-Type: application/json" in lines and body == b'{"a": 1}'
    sender.close()


def test_a_kept_alive_connection_carries_every_delivery_of_a_sender(receiver_of):
    receiver = receiver_of(lambda request: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    sender = webhooks.Sender(receiver.url)
    replies = [sender.post(b"{}", {}) for _ in range(5)]
    sender.close()
    assert [r.status for r in replies] == [200] * 5 and replies[0].excerpt == "ok"
    assert receiver.connections == 1 and len(receiver.requests) == 5


def test_connection_close_or_http_1_0_opens_a_new_connection_next_time(receiver_of):
    answers = iter([b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"] * 2)
    receiver = receiver_of(lambda request: next(answers))
    sender = webhooks.Sender(receiver.url)
    assert [sender.post(b"{}", {}).status for _ in range(2)] == [200, 200]
    sender.close()
    assert receiver.connections == 2


def test_a_receiver_closing_a_kept_alive_connection_is_tried_once_more_anew(receiver_of):
    count = [0]

    def answer(request):
        count[0] += 1
        return None if count[0] == 2 else NO_CONTENT  # the second: closed unanswered

    receiver = receiver_of(answer)
    sender = webhooks.Sender(receiver.url)
    assert sender.post(b"{}", {}).status == 204
    assert sender.post(b"{}", {}).status == 204  # the third request, on a new connection
    sender.close()
    assert receiver.connections == 2


def test_retry_after_chunked_bodies_and_interim_answers(receiver_of):
    chunked = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 503 Busy\r\nRetry-After: 7\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4\r\nslow\r\n5\r\n down\r\n0\r\n\r\n"
    )
    receiver = receiver_of(lambda request: chunked)
    reply = webhooks.post(receiver.url, b"{}", {})
    assert reply == webhooks.Reply(503, 7.0, "slow down")


def test_a_body_ending_with_the_connection_is_read(receiver_of):
    receiver = receiver_of(lambda request: [b"HTTP/1.0 200 OK\r\n\r\nthanks", None])
    assert webhooks.post(receiver.url, b"{}", {}) == webhooks.Reply(200, None, "thanks")


def test_a_huge_answer_is_read_only_up_to_the_cap_and_the_connection_dropped(receiver_of):
    size = 50 * 1024 * 1024
    big = [b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size, b"x" * 65536] + [0.5]
    receiver = receiver_of(lambda request: big)
    sender = webhooks.Sender(receiver.url)
    started = time.monotonic()
    reply = sender.post(b"{}", {})
    assert time.monotonic() - started < 0.5  # did not wait for the 50 MiB
    assert reply.status == 200 and reply.excerpt == "x" * webhooks.RESPONSE_CAP
    assert sender.connection is None  # not reused: the rest of the body was not read


def test_a_receiver_dripping_its_answer_is_cut_off_at_the_timeout(receiver_of):
    drip = [b"HTTP/1.1 200 OK\r\n"] + [0.2, b"X-Drip: 1\r\n"] * 20
    receiver = receiver_of(lambda request: drip)
    started = time.monotonic()
    with pytest.raises(webhooks.DeliveryError, match="TimeoutError"):
        webhooks.post(receiver.url, b"{}", {})
    assert time.monotonic() - started < 2.0  # EVENTS_TIMEOUT is 1 s for the whole answer


@pytest.mark.parametrize(
    "answer",
    [b"SMTP ready\r\n\r\n", b"HTTP/1.1 abc Nope\r\n\r\n", None],
    ids=["not-http", "bad-status", "closed-unanswered"],
)
def test_what_is_not_an_answer_is_a_delivery_error(receiver_of, answer):
    receiver = receiver_of(lambda request: answer)
    with pytest.raises(webhooks.DeliveryError):
        webhooks.post(receiver.url, b"{}", {})


def test_a_body_after_a_204_does_not_poison_the_next_delivery(receiver_of):
    stray = b"HTTP/1.1 204 No Content\r\nContent-Length: 2\r\n\r\nok"
    receiver = receiver_of(lambda request: stray)
    sender = webhooks.Sender(receiver.url)
    assert [sender.post(b"{}", {}).status for _ in range(3)] == [204] * 3
    assert receiver.connections == 3  # afresh: the stray bytes are not the next answer


def test_a_header_with_a_line_break_is_never_sent(receiver_of):
    receiver = receiver_of(lambda request: NO_CONTENT)
    with pytest.raises(webhooks.DeliveryError, match="line break"):
        webhooks.post(receiver.url, b"{}", {"X-Evil": "a\r\nX-Injected: 1"})
    assert receiver.requests == []


@pytest.fixture
def tls_receiver(receiver_of, tmp_path):
    """A receiver speaking TLS with a certificate for `localhost` from a CA of the test's own."""
    import ssl

    from provisioning import tlsstack

    cert, key = tlsstack.server_certificate(tmp_path, ["localhost"])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nyes"
    receiver = receiver_of(lambda request: answer, tls=context)
    return receiver, receiver.sock.getsockname()[1], tmp_path / "ca.pem"


def test_https_to_a_receiver_whose_ca_is_trusted(tls_receiver, settings):
    receiver, port, ca = tls_receiver
    settings.EVENTS_CA_FILE = str(ca)
    sender = webhooks.Sender(f"https://localhost:{port}/hook")
    assert [sender.post(b"{}", {}).excerpt for _ in range(3)] == ["yes"] * 3
    sender.close()
    assert receiver.connections == 1  # one handshake, kept alive


def test_https_refuses_an_untrusted_certificate_and_a_wrong_name(tls_receiver, settings):
    receiver, port, ca = tls_receiver
    with pytest.raises(webhooks.DeliveryError, match="CERTIFICATE_VERIFY_FAILED"):
        webhooks.post(f"https://localhost:{port}/hook", b"{}", {})  # the system CAs only
    settings.EVENTS_CA_FILE = str(ca)
    with pytest.raises(webhooks.DeliveryError, match="CERTIFICATE_VERIFY_FAILED"):
        webhooks.post(f"https://127.0.0.1:{port}/hook", b"{}", {})  # not the name it is for
    assert receiver.requests == []
