"""The real UI in headless Chromium (Debian's /usr/bin/chromium driven by Playwright)."""

import os

import pytest

from connector.models import Connector, User

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def page(chromium_path, live_server, live_server_db_cleanup, monkeypatch):
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the ORM calls made by the test
    # itself are still plain synchronous calls.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        context = browser.new_context(base_url=live_server.url)
        context.set_default_timeout(15000)
        page = context.new_page()
        try:
            yield page
        finally:
            os.makedirs("test-artifacts", exist_ok=True)
            name = os.environ.get("PYTEST_CURRENT_TEST", "browser").split(":")[-1].split(" ")[0]
            page.screenshot(path=f"test-artifacts/{name}.png", full_page=True)
            browser.close()


def test_sign_up_create_connector_and_keep_identity_format(page):
    page.goto("/signup/")
    page.get_by_label("Email").fill("maker@example.com")
    page.get_by_label("Password", exact=True).fill("a long factory passphrase")
    page.get_by_label("Password again").fill("a long factory passphrase")
    page.get_by_role("button", name="Sign up").click()

    page.get_by_label("Name").fill("Tutorial connector")
    page.get_by_role("button", name="Create connector").click()
    connector = Connector.objects.get(members=User.objects.get(email="maker@example.com"))
    page.wait_for_url(f"**/c/{connector.id}/")
    expect(page.get_by_role("link", name="Settings")).to_have_attribute("aria-current", "page")
    expect(page.locator("#fqdn")).to_have_value(f"{connector.id}.localhost")

    # The Identity format section: Base 10, length 8 (the tutorial's choice).
    page.get_by_label("Type").select_option("base10")
    page.get_by_label("Length").fill("8")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_text("Settings saved.")).to_be_visible()
    page.reload()
    expect(page.get_by_label("Type")).to_have_value("base10")
    expect(page.get_by_label("Length")).to_have_value("8")

    # A bad CIDR: the error is shown next to its field and nothing is saved.
    allowed = page.get_by_label("Allowed addresses and ranges")
    expect(allowed).to_be_hidden()
    page.get_by_label("Restrict IP addresses that may provision devices").check()
    expect(allowed).to_be_visible()  # revealed by the checkbox
    allowed.fill("203.0.113.0/24\n10.0.0.300/8")
    page.get_by_label("Length").fill("6")
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#field-ip_allowed .error")).to_contain_text(
        "Entry 2 “10.0.0.300/8” is not an IP address or CIDR range"
    )
    expect(page.get_by_role("alert")).to_contain_text("Nothing was saved")
    connector.refresh_from_db()
    assert connector.id_length == 8 and not connector.ip_whitelisting_enabled


def test_copy_button_puts_the_device_api_domain_on_the_clipboard(page, live_server):
    user = User.objects.create_user("copy@example.com", "a long factory passphrase")
    from connector.services import create_connector

    connector = create_connector(user, "Copy me")
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.goto("/login/")
    page.get_by_label("Email").fill("copy@example.com")
    page.get_by_label("Password").fill("a long factory passphrase")
    page.get_by_role("button", name="Sign in").click()
    page.goto(f"/c/{connector.id}/devices/")
    button = page.get_by_role("button", name="Copy the device API domain")
    button.click()
    expect(button).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == f"{connector.id}.localhost"
