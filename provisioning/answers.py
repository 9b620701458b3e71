"""What a device API handler returns: the typed contract between the handlers and whoever
serves them (the ASGI front, the Django middleware for runserver and the test client, and
the MQTT gateway).

- `Answer`: the response, final.
- `Pending`: a job for the store (`provisioning.store`) and the answer that holds once it is
  committed. When the store does not store it, `store.explain` gives the answer instead.
- `Wait`: a long poll to park until its alias changes or its time runs out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.http import HttpResponse

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


Result = Answer | Pending | Wait


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
