"""Shared by the benchmark scripts: seed a fresh database in a Django subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable

# Migrates, then leaves `connector` (with RESOURCES defined), `import_identities` and
# `activate_device` to the code that follows.
PREAMBLE = """
import io, json, django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from connector.models import User
from connector.services import create_connector
from devices.importer import import_identities
from devices.resources import check_definitions
from provisioning.services import activate_device
user = User.objects.create_user("bench@example.com", "bench password 1234")
connector = create_connector(user, "bench")
connector.resources = check_definitions(RESOURCES)
connector.resources_version += 1
connector.save()
"""


def seed(env: dict, resources: dict, code: str) -> dict:
    """Run PREAMBLE and then `code`, which prints one JSON object last; return it."""
    script = f"RESOURCES = {resources!r}\n" + PREAMBLE + textwrap.dedent(code)
    out = subprocess.run([PY, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])
