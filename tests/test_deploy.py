"""Production settings: `check --deploy` is clean, and wrong security settings fail loudly."""

import os
import subprocess
import sys

import pytest

PRODUCTION = {
    "SECRET_KEY": "k3J9vQ2mX8pL5wR1tY6uZ0aB4cD7eF2gH9jK3lM6nP8qS1vW5xYz",
    "HTTPS": "true",
    "ALLOWED_HOSTS": "connector.example.com",
    "DEVICE_API_DOMAIN": "devices.example.com",
    "TOKEN_PEPPERS": "1:" + "p" * 40,
    "ENCRYPTION_KEY": "bXlfZmVybmV0X2tleV9mb3JfdGVzdHNfMzJieXRlcyE=",
}


def manage(*args, **env):
    full = {**os.environ, **env}
    full.pop("DEBUG", None)
    return subprocess.run(
        [sys.executable, "manage.py", *args], env=full, capture_output=True, text=True, timeout=120
    )


def test_check_deploy_is_clean_with_production_settings(tmp_path):
    result = manage(
        "check", "--deploy", "--fail-level", "WARNING", DATA_DIR=str(tmp_path), **PRODUCTION
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("SECRET_KEY", "short", "SECRET_KEY must be at least 50"),
        ("TOKEN_PEPPERS", "nokeyid", "TOKEN_PEPPERS entries"),
        ("TOKEN_PEPPERS", "1:short", "TOKEN_PEPPERS entries"),
        ("TRUSTED_PROXIES", "10.0.0.0/33", "TRUSTED_PROXIES"),
        ("HTTPS", "maybe", "HTTPS"),
    ],
)
def test_wrong_security_settings_stop_the_process(tmp_path, name, value, message):
    result = manage("check", DATA_DIR=str(tmp_path), **{**PRODUCTION, name: value})
    assert result.returncode != 0
    assert message in result.stderr


def test_embedded_default_creates_its_secrets_privately(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in PRODUCTION}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        env={**env, "DATA_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    for name in ("secret_key", "token_pepper", "encryption_key"):
        assert (tmp_path / name).stat().st_mode & 0o077 == 0


def test_env_example_lists_every_variable_the_settings_read():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    read = set()
    for source in ("iotconnector/settings.py", "deploy/gunicorn.conf.py", "scripts/serve"):
        text = (root / source).read_text()
        read |= set(re.findall(r'(?:env\.\w+|env_bool|environ\.get)\(\s*"([A-Z_]+)"', text))
        read |= set(re.findall(r"\$\{([A-Z_]+):-", text))
    listed = set(re.findall(r"^#?\s*([A-Z_]+)=", (root / ".env.example").read_text(), re.M))
    assert read, "no variables found: the pattern is wrong"
    assert read - listed == set()
