"""Sign up, sign in (email any case), sign out, createsuperuser."""

import os
import subprocess
import sys

import pytest
from django.urls import reverse

from connector.models import User
from tests.conftest import PASSWORD


@pytest.mark.django_db
def test_sign_up_creates_the_account_then_signs_in(client):
    response = client.post(
        reverse("signup"),
        {"email": "New.User@Example.com", "password1": PASSWORD, "password2": PASSWORD},
    )
    assert response.status_code == 302
    assert response["Location"] == reverse("login") + "?email=new.user%40example.com"
    user = User.objects.get()
    assert user.email == "new.user@example.com"
    assert user.check_password(PASSWORD)
    signed_in = client.post(response["Location"], {"username": user.email, "password": PASSWORD})
    assert signed_in.status_code == 302
    assert client.get(reverse("connector-list")).status_code == 200


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ({"email": "not-an-email", "password1": PASSWORD, "password2": PASSWORD}, "email", "valid"),
        (
            {"email": "a@example.com", "password1": PASSWORD, "password2": "other one 123"},
            "password2",
            "differ",
        ),
        (
            {"email": "a@example.com", "password1": "password", "password2": "password"},
            "password1",
            "too common",
        ),
        ({"email": "a@example.com", "password1": "", "password2": ""}, "password1", "required"),
    ],
)
def test_sign_up_errors_are_shown_next_to_the_field(client, data, field, message):
    response = client.post(reverse("signup"), data)
    assert response.status_code == 200
    assert message in " ".join(response.context["form"].errors[field])
    assert f'id="id_{field}_error"' in response.content.decode()
    assert not User.objects.exists()


def test_sign_in_with_email_in_any_case_and_sign_out(client, alice):
    response = client.post(
        reverse("login"), {"username": "Alice@Example.COM", "password": PASSWORD}
    )
    assert response.status_code == 302
    assert client.get(reverse("connector-list")).status_code == 200
    assert client.get(reverse("logout")).status_code == 405  # sign-out is a POST (CSRF-protected)
    client.post(reverse("logout"))
    assert client.get(reverse("connector-list")).status_code == 302


def test_wrong_password_and_unknown_email_get_the_same_message(client, alice):
    wrong = client.post(reverse("login"), {"username": alice.email, "password": "nope nope nope"})
    unknown = client.post(reverse("login"), {"username": "ghost@example.com", "password": "x"})
    assert wrong.status_code == unknown.status_code == 200
    assert wrong.context["form"].non_field_errors() == unknown.context["form"].non_field_errors()


def test_pages_need_sign_in(client, connector):
    for url in (reverse("connector-list"), reverse("connector-settings", args=[connector.id])):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("login"))


def test_csrf_is_enforced_on_forms(alice):
    from django.test import Client

    csrf_client = Client(enforce_csrf_checks=True)
    csrf_client.force_login(alice)
    assert csrf_client.post(reverse("connector-list"), {"name": "x"}).status_code == 403


@pytest.mark.django_db(transaction=True)
def test_createsuperuser_noinput_with_email(tmp_path):
    env = {**os.environ, "DJANGO_SUPERUSER_PASSWORD": PASSWORD, "DATA_DIR": str(tmp_path)}
    env.pop("DATABASE_URL", None)
    for args in (
        ["migrate", "-v0"],
        ["createsuperuser", "--noinput", "--email", "Root@Example.com"],
    ):
        subprocess.run([sys.executable, "manage.py", *args], env=env, check=True, timeout=120)
    check = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "shell",
            "-v",
            "0",
            "-c",
            "from connector.models import User; u = User.objects.get();"
            f"print(u.email, u.is_superuser, u.check_password({PASSWORD!r}))",
        ],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.stdout.split() == ["root@example.com", "True", "True"]
