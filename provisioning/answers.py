"""What a device API handler returns: the typed contract between the handlers and whoever
serves them (the ASGI front, the Django middleware for runserver and the test client, and
the MQTT gateway).

- `Answer`: the response, final.
- `Pending`: a job for the store (`provisioning.store`) and the answer that holds once it is
  committed. When the store does not store it, `store.explain` gives the answer instead.
- `Wait`: a long poll to park until its alias changes or its time runs out.
- `Stream`: a file's bytes (a content download), sent in chunks as the client takes them;
  `done(sent)` is called on a thread once it ends, with the bytes sent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

from django.http import HttpResponse, StreamingHttpResponse

from provisioning import ratelimit

if TYPE_CHECKING:
    from provisioning.longpoll import PollWait

TEXT = "text/plain; charset=utf-8"
FORM = "application/x-www-form-urlencoded; charset=utf-8"


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: str | bytes = ""
    headers: tuple[tuple[str, str], ...] = ()
    content_type: str = TEXT

    @property
    def content(self) -> bytes:
        return self.body if isinstance(self.body, bytes) else self.body.encode()

    def header_list(self) -> list[tuple[str, str]]:
        """Every header the answer is sent with, the same on every path."""
        content = self.content
        return [
            ("Content-Type", self.content_type),
            ("Content-Length", str(len(content))),
            *self.headers,
        ]

    def to_response(self) -> HttpResponse:
        response = HttpResponse(self.content, status=self.status, content_type=self.content_type)
        for name, value in self.headers:
            response[name] = value
        response["Content-Length"] = str(len(self.content))
        return response


@dataclass(slots=True, eq=False)
class Pending:
    job: Any  # one of provisioning.jobs' jobs
    answer: Answer


@dataclass(slots=True, eq=False)
class Wait:
    poll: PollWait


STREAM_CHUNK = 65536


@dataclass(slots=True, eq=False)
class Stream:
    status: int
    headers: tuple[tuple[str, str], ...]
    file: BinaryIO | None  # opened by the handler; None: headers only (HEAD)
    start: int
    length: int
    done: Callable[[int], None] | None = None

    def header_list(self) -> list[tuple[str, str]]:
        return [("Content-Length", str(self.length)), *self.headers]

    def chunks(self):
        """The bytes, read a chunk at a time (never the whole file in memory)."""
        if self.file is None:
            return
        self.file.seek(self.start)
        left = self.length
        while left > 0 and (chunk := self.file.read(min(STREAM_CHUNK, left))):
            left -= len(chunk)
            yield chunk

    def finish(self, sent: int) -> None:
        if self.file is not None:
            self.file.close()
        if self.done is not None:
            self.done(sent)

    def to_response(self) -> StreamingHttpResponse:
        """For runserver and the test client: Django streams it from this thread."""

        def counted():
            sent = 0
            try:
                for chunk in self.chunks():
                    sent += len(chunk)
                    yield chunk
            finally:
                self.finish(sent)

        response = StreamingHttpResponse(counted(), status=self.status)
        if self.file is not None:  # a response never iterated still lets its file go
            response._resource_closers.append(self.file.close)
        for name, value in self.header_list():
            response[name] = value
        return response


Result = Answer | Pending | Wait | Stream


def text(status: int, body: str = "", headers: dict[str, str] | None = None) -> Answer:
    return Answer(status, body, tuple((headers or {}).items()))


def too_many() -> Answer:
    return text(429, "too many failed attempts", {"Retry-After": str(ratelimit.retry_after())})


def refused(refusal) -> Answer:
    """The answer to a `rules.Refusal`."""
    if refusal.status == 429:
        return too_many()
    return text(refusal.status, refusal.reason)


NOT_FOUND = Answer(404)
NOT_ALLOWED = Answer(405)
EMPTY = Answer(204)
