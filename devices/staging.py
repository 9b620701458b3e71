"""Uploaded CSV files kept between "check" and "add" on the import page.

The file is copied to DATA_DIR/uploads under a random name; the page carries a signed token
naming it, bound to the connector and the user, valid for an hour.
"""

from __future__ import annotations

import secrets
import shutil
import time
from pathlib import Path

from django.conf import settings
from django.core import signing

MAX_AGE = 3600
SALT = "devices.import"


def _dir() -> Path:
    path = settings.DATA_DIR / "uploads"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def _sweep(folder: Path) -> None:
    cutoff = time.time() - MAX_AGE
    for old in folder.glob("*.csv"):
        if old.stat().st_mtime < cutoff:
            old.unlink(missing_ok=True)


def stage(upload, connector_id: str, user_id: int, update: bool) -> str:
    folder = _dir()
    _sweep(folder)
    name = secrets.token_hex(16)
    upload.seek(0)
    with (folder / f"{name}.csv").open("wb") as out:
        shutil.copyfileobj(upload, out)
    return signing.dumps({"f": name, "c": connector_id, "u": user_id, "up": update}, salt=SALT)


def staged(token: str, connector_id: str, user_id: int) -> tuple[Path, bool] | None:
    """The staged file and its update flag, if the token is valid for this connector and user."""
    try:
        data = signing.loads(token, salt=SALT, max_age=MAX_AGE)
    except signing.BadSignature:
        return None
    if data.get("c") != connector_id or data.get("u") != user_id:
        return None
    path = _dir() / f"{data['f']}.csv"
    return (path, bool(data.get("up"))) if path.is_file() else None
