"""Logging filters."""

from __future__ import annotations

import logging


class OneLineWarning(logging.Filter):
    """Log the record as one WARNING line, without its traceback: for what any client can
    cause (a bad Host header), so unauthenticated requests cannot fill the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.WARNING:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info = record.exc_text = None
        record.stack_info = None
        return True
