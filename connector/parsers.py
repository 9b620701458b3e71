"""The management API's JSON parser: DRF's, with `connector.safeinput`'s checks, so a body
nested 100,000 levels deep, a lone surrogate, a NUL or a number no column holds is a 400
naming the problem, never a 500 or a stored value that breaks every later page."""

from __future__ import annotations

from rest_framework import parsers
from rest_framework.exceptions import ParseError

from connector import safeinput


class JSONParser(parsers.JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return safeinput.loads(stream.read() if stream is not None else b"", "the body")
        except safeinput.InputError as exc:
            raise ParseError(str(exc)) from None
