"""The Content tab: the list with sizes, hashes and downloads, the quota, the upload form
without JavaScript, the descriptor the page's script asks for, delete with confirmation."""

import hashlib

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from connector import content
from connector.models import ContentItem, Event, EventType


@pytest.fixture
def signed_in(alice):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    return client


def csrf_of(client, url) -> str:
    client.get(url)
    return client.cookies["csrftoken"].value


def form_upload(client, connector, data: bytes, **fields):
    page = reverse("connector-content", args=[connector.id])
    token = csrf_of(client, page)
    fields = {"csrfmiddlewaretoken": token, "file": SimpleUploadedFile("fw v1.bin", data), **fields}
    return client.post(reverse("content-upload-form", args=[connector.id]), fields)


def test_upload_without_javascript_then_listed(signed_in, connector, alice, settings):
    response = form_upload(signed_in, connector, b"firmware", description="First build")
    assert response.status_code == 302
    item = ContentItem.objects.get()
    assert item.name == "fw_v1.bin"  # from the file's name, made valid
    assert item.sha256 == hashlib.sha256(b"firmware").hexdigest()
    assert item.uploaded_by == alice
    page = signed_in.get(reverse("connector-content", args=[connector.id])).content.decode()
    assert "fw_v1.bin" in page and "First build" in page and item.sha256[:12] in page
    assert "1 item · 8 bytes of 1 GiB used" in page
    assert f"http://{connector.fqdn}/provision/download?id=fw_v1.bin" in page  # the curl line
    assert f"http://{connector.fqdn}/ -k $TOKEN http content download fw_v1.bin" in page


def test_form_upload_checks_a_given_sha256(signed_in, connector):
    response = form_upload(signed_in, connector, b"firmware", name="fw.bin", sha256="0" * 64)
    assert response.status_code == 400
    assert "Nothing was uploaded" in response.content.decode()
    assert ContentItem.objects.count() == 0


def test_form_upload_needs_csrf(alice, connector):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    url = reverse("content-upload-form", args=[connector.id])
    assert client.post(url, {"file": SimpleUploadedFile("a", b"x")}).status_code == 403
    assert ContentItem.objects.count() == 0


def test_descriptor_for_the_script(signed_in, connector):
    url = reverse("content-descriptor", args=[connector.id])
    token = csrf_of(signed_in, reverse("connector-content", args=[connector.id]))
    sha = hashlib.sha256(b"x").hexdigest()
    response = signed_in.post(url, {"name": "a.bin", "sha256": sha}, HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 200 and response.json()["field"] == "file"
    bad = signed_in.post(url, {"name": "a b"}, HTTP_X_CSRFTOKEN=token)
    assert bad.status_code == 400 and "name" in bad.json()
    assert signed_in.post(url, {"name": "a.bin"}).status_code == 403  # no CSRF token


def test_delete_asks_first(signed_in, connector):
    form_upload(signed_in, connector, b"firmware", name="fw.bin")
    url = reverse("content-delete", args=[connector.id, "fw.bin"])
    confirm = signed_in.get(url)
    assert confirm.status_code == 200 and "Delete fw.bin?" in confirm.content.decode()
    assert ContentItem.objects.count() == 1
    token = signed_in.cookies["csrftoken"].value
    assert signed_in.post(url, {"csrfmiddlewaretoken": token}).status_code == 302
    assert ContentItem.objects.count() == 0
    assert Event.objects.filter(type=EventType.CONTENT_DELETED).exists()
    assert signed_in.get(url).status_code == 404


def test_another_users_content_tab_is_404(signed_in, bobs_connector):
    for name in ("connector-content", "content-upload-form", "content-descriptor"):
        assert signed_in.get(reverse(name, args=[bobs_connector.id])).status_code in (404, 405)
    token = csrf_of(signed_in, "/")
    url = reverse("content-upload-form", args=[bobs_connector.id])
    posted = signed_in.post(
        url, {"csrfmiddlewaretoken": token, "file": SimpleUploadedFile("a", b"x")}
    )
    assert posted.status_code == 404 and ContentItem.objects.count() == 0


def test_quota_shown(signed_in, connector, settings):
    settings.CONTENT_CONNECTOR_MAX_BYTES = 100
    form_upload(signed_in, connector, b"x" * 40, name="a.bin")
    page = signed_in.get(reverse("connector-content", args=[connector.id])).content.decode()
    assert "40 bytes of 100 bytes used" in page and 'value="40"' in page
    assert content.usage(connector).percent == 40
