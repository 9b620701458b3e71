"""The real UI in headless Chromium (Debian's /usr/bin/chromium driven by Playwright)."""

import os
import re
import subprocess
from urllib.parse import urlsplit

import pytest

from connector.models import Connector, User
from devices.models import Device

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
        # Every page the tests visit runs under the Content-Security-Policy: a blocked
        # script, style or connection would show here.
        blocked = []
        page.on(
            "console",
            lambda message: (
                blocked.append(message.text) if "Content Security Policy" in message.text else None
            ),
        )
        try:
            yield page
        finally:
            os.makedirs("test-artifacts", exist_ok=True)
            name = os.environ.get("PYTEST_CURRENT_TEST", "browser").split(":")[-1].split(" ")[0]
            page.screenshot(path=f"test-artifacts/{name}.png", full_page=True)
            browser.close()
        assert not blocked, blocked


def test_sign_up_create_connector_and_keep_identity_format(page):
    page.goto("/signup/")
    page.get_by_label("Email").fill("maker@example.com")
    page.get_by_label("Password", exact=True).fill("a long factory passphrase")
    page.get_by_label("Password again").fill("a long factory passphrase")
    page.get_by_role("button", name="Sign up").click()
    # Signing up answers the same whether or not the address had an account: sign in next.
    expect(page.get_by_text("Your account is ready")).to_be_visible()
    expect(page.get_by_label("Email")).to_have_value("maker@example.com")
    page.get_by_label("Password").fill("a long factory passphrase")
    page.get_by_role("button", name="Sign in").click()

    page.get_by_label("Name").fill("Tutorial connector")
    page.get_by_role("button", name="Create connector").click()
    connector = Connector.objects.get(members=User.objects.get(email="maker@example.com"))
    page.wait_for_url(f"**/c/{connector.id}/")
    expect(page.get_by_role("link", name="Settings")).to_have_attribute("aria-current", "page")
    port = page.url.split(":")[2].split("/")[0]
    expect(page.locator("#fqdn")).to_have_value(f"http://{connector.id}.localhost:{port}")

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


def test_copy_button_puts_the_device_api_base_url_on_the_clipboard(page, live_server):
    user = User.objects.create_user("copy@example.com", "a long factory passphrase")
    from connector.services import create_connector

    connector = create_connector(user, "Copy me")
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.goto("/login/")
    page.get_by_label("Email").fill("copy@example.com")
    page.get_by_label("Password").fill("a long factory passphrase")
    page.get_by_role("button", name="Sign in").click()
    page.goto(f"/c/{connector.id}/devices/")
    button = page.get_by_role("button", name="Copy the device API base URL")
    button.click()
    expect(button).to_have_text("Copied")
    # The full base URL with the port the service listens on: it works as copied.
    port = urlsplit(live_server.url).port
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied == f"http://{connector.id}.localhost:{port}"
    answer = subprocess.run(["curl", "-sS", f"{copied}/timestamp"], capture_output=True, timeout=10)
    assert answer.stdout.isdigit(), answer


def sign_in(page, email: str) -> None:
    page.goto("/login/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill("a long factory passphrase")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="IoT Connectors")).to_be_visible()


def test_whitelist_one_then_many_from_the_tutorial_csv(page, tmp_path):
    from pathlib import Path

    from connector.services import create_connector

    user = User.objects.create_user("factory@example.com", "a long factory passphrase")
    connector = create_connector(user, "Tutorial")
    connector.id_type, connector.id_length = "base10", 8
    connector.save()
    sign_in(page, "factory@example.com")
    page.goto(f"/c/{connector.id}/devices/")

    # + NEW DEVICE(S) → Add one device; the identity is checked as it is typed.
    page.get_by_text("+ New device(s)", exact=True).click()
    page.get_by_role("menuitem", name="Add one device").click()
    expect(page.get_by_label("Activation period (hours)")).to_have_value("48")
    identity = page.get_by_label("Identity", exact=True)
    identity.fill("0000001")
    expect(page.locator("#identity-live")).to_contain_text("exactly 8 characters")
    identity.fill("00000001")
    expect(page.locator("#identity-live")).to_have_text("✓ Valid identity")
    page.get_by_role("button", name="Add").click()
    expect(page.get_by_text("Device 00000001 whitelisted.")).to_be_visible()
    expect(page.locator("tbody tr")).to_have_count(1)
    expect(page.locator("tbody tr").first.locator(".status")).to_have_text("Whitelisted")

    # + NEW DEVICE(S) → Add many devices: check first, then add.
    page.get_by_text("+ New device(s)", exact=True).click()
    page.get_by_role("menuitem", name="Add many devices").click()
    csv_path = Path(__file__).parent / "data" / "identities.csv"
    page.get_by_label("CSV file").set_input_files(str(csv_path))
    page.get_by_role("button", name="Upload CSV").click()
    summary = page.get_by_role("status")
    expect(summary).to_contain_text("4 devices will be whitelisted")
    expect(summary).to_contain_text("1 already exists and will be skipped")
    page.get_by_role("button", name="Add 4 devices").click()
    expect(page.get_by_text("4 whitelisted, 0 updated, 1 skipped")).to_be_visible()

    rows = page.locator("tbody tr")
    expect(rows).to_have_count(5)
    expect(page.locator("tbody .status", has_text="Whitelisted")).to_have_count(5)
    expect(rows.nth(4)).to_contain_text("group: g3")
    expect(rows.nth(4)).to_contain_text("claim_code: def")

    # The legend explains the icons; filter by status.
    page.get_by_text("Status icons").click()
    expect(page.locator(".legend")).to_contain_text("May provision until its activation deadline")
    Device.objects.filter(identity="00000003").update(locked=True)
    page.get_by_label("Status").select_option("locked")
    page.get_by_role("button", name="Filter").click()
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("00000003")
    page.get_by_label("Status").select_option("whitelisted")
    page.get_by_role("button", name="Filter").click()
    expect(rows).to_have_count(4)

    # Open one device.
    page.get_by_role("link", name="00000005").click()
    expect(page.get_by_role("heading", name="00000005")).to_be_visible()
    expect(page.get_by_label("Tags")).to_have_value("group=g3\nclaim_code=def")
    expect(page.locator(".facts")).to_contain_text("Whitelisted")
    page.goto(f"/c/{connector.id}/devices/d/00000001/")
    events = page.get_by_role("table", name="Events of this device, newest first")
    expect(events).to_contain_text("Whitelisted 00000001")


def test_logs_tab_shows_provision_and_write_live(page, live_server):
    import shutil
    import subprocess
    from urllib.parse import urlsplit

    from connector.services import create_connector
    from devices.services import whitelist_device

    if not shutil.which("curl"):
        pytest.skip("curl is not installed")
    user = User.objects.create_user("logs@example.com", "a long factory passphrase")
    connector = create_connector(user, "Live logs")
    connector.devmode = True  # the live test server speaks plain HTTP
    connector.save()
    whitelist_device(connector, "00000001")
    sign_in(page, "logs@example.com")
    page.goto(f"/c/{connector.id}/logs/")
    expect(page.locator("#live-status")).to_contain_text("Live")
    rows = page.locator("#log-rows tr")
    before = rows.count()

    fqdn = f"http://{connector.id}.localhost:{urlsplit(live_server.url).port}"
    form = "Content-Type: application/x-www-form-urlencoded; charset=utf-8"
    token = subprocess.run(
        [
            "curl",
            "-sS",
            "-X",
            "POST",
            f"{fqdn}/provision/activate",
            "-H",
            form,
            "-d",
            "id=00000001",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    assert len(token) == 40
    subprocess.run(
        [
            "curl",
            "-sS",
            "-X",
            "POST",
            f"{fqdn}/onep:v1/stack/alias",
            "-H",
            f"X-Exosite-CIK: {token}",
            "-H",
            form,
            "-d",
            "myalias=50",
        ],
        check=True,
        timeout=30,
    )

    # Both events arrive without a reload, newest on top.
    expect(rows).to_have_count(before + 2, timeout=15000)
    expect(rows.nth(0)).to_contain_text("Write myalias=50")
    expect(rows.nth(1)).to_contain_text("Provisioned 00000001")
    # The header's time is UTC on the 24-hour clock, as the table's.
    expect(page.locator("#live-status")).to_have_text(re.compile(r"Live · \d\d:\d\d:\d\d UTC"))

    # Paused, nothing new is added until resumed.
    page.get_by_role("button", name="Pause").click()
    subprocess.run(
        [
            "curl",
            "-sS",
            "-X",
            "POST",
            f"{fqdn}/onep:v1/stack/alias",
            "-H",
            f"X-Exosite-CIK: {token}",
            "-H",
            form,
            "-d",
            "myalias=51",
        ],
        check=True,
        timeout=30,
    )
    page.wait_for_timeout(3000)
    expect(rows).to_have_count(before + 2)
    page.get_by_role("button", name="Resume").click()
    expect(rows.nth(0)).to_contain_text("Write myalias=51", timeout=15000)


def test_vendor_options_show_only_for_the_chosen_vendor(page):
    from connector.services import create_connector

    user = User.objects.create_user("pki@example.com", "a long factory passphrase")
    connector = create_connector(user, "PKI")
    sign_in(page, "pki@example.com")
    page.goto(f"/c/{connector.id}/")
    page.get_by_label("Enable PKI").check()
    vendor = page.get_by_label("Validator vendor")
    vendor.select_option("local")
    expect(page.get_by_label("Local CA private key")).to_be_visible()
    expect(page.get_by_label("Profile name")).to_be_hidden()
    vendor.select_option("digicert")
    expect(page.get_by_label("Profile name")).to_be_visible()
    expect(page.get_by_label("Local CA private key")).to_be_hidden()


def test_mqtt_is_switched_on_in_settings_and_its_endpoint_shown(page, settings):
    """Settings tab: "Device protocols" turns Murano's MQTT Device API on (protocol.name);
    the domain box and the Protocol section then show the MQTT endpoint."""
    from connector.services import create_connector

    settings.MQTT_PORT = 8883  # the live server's listener is started by tests/test_mqtt.py
    user = User.objects.create_user("mqtt@example.com", "a long factory passphrase")
    connector = create_connector(user, "MQTT")
    sign_in(page, "mqtt@example.com")
    page.goto(f"/c/{connector.id}/")
    expect(page.locator("#mqtt-endpoint")).to_have_count(0)
    page.get_by_label("Device protocols").select_option("murano:v1/mqtt")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_text("Settings saved.")).to_be_visible()
    endpoint = f"{connector.id}.localhost:8883"
    expect(page.locator("#mqtt-endpoint")).to_have_value(endpoint)
    expect(page.locator(".settings")).to_contain_text("MQTT Device API (murano:v1/mqtt")
    connector.refresh_from_db()
    assert connector.protocol_name == "murano:v1/mqtt"


def test_content_tab_uploads_with_progress_and_deletes(page, tmp_path):
    import hashlib

    from connector.models import ContentItem
    from connector.services import create_connector

    user = User.objects.create_user("content@example.com", "a long factory passphrase")
    connector = create_connector(user, "Firmware")
    sign_in(page, "content@example.com")
    page.goto(f"/c/{connector.id}/content/")
    expect(page.get_by_text("No content yet.")).to_be_visible()
    image = tmp_path / "fw-3.1.bin"
    data = os.urandom(6 * 1024 * 1024)
    image.write_bytes(data)
    page.get_by_label("Drop a file here or choose one").set_input_files(str(image))
    expect(page.get_by_text("fw-3.1.bin · 6 MiB")).to_be_visible()
    page.get_by_label("Description").fill("Release 3.1")
    # Every value the progress bar is given is reported here, across the page's reload.
    seen = []
    page.expose_function("reportProgress", lambda value: seen.append(value))
    page.evaluate(
        """() => {
          const bar = document.querySelector('[data-progress]');
          const base = Object.getOwnPropertyDescriptor(HTMLProgressElement.prototype, 'value');
          Object.defineProperty(bar, 'value', {
            set(v) { window.reportProgress(v); base.set.call(this, v); },
            get() { return base.get.call(this); },
          });
        }"""
    )
    page.get_by_role("button", name="Upload").click()
    row = page.locator('tr[data-item="fw-3.1.bin"]')
    expect(row).to_be_visible()
    expect(row).to_contain_text("Release 3.1")
    expect(row).to_contain_text("6 MiB")
    assert seen[0] == 0 and seen[-1] == 100 and len(seen) >= 3  # reset, progress, done
    item = ContentItem.objects.get()
    assert item.sha256 == hashlib.sha256(data).hexdigest() and item.size == len(data)
    expect(page.locator("#content-usage")).to_contain_text("1 item · 6 MiB of 1 GiB used")
    row.get_by_text("Download line").click()
    curl_line = row.get_by_label("curl command for fw-3.1.bin")
    expect(curl_line).to_have_value(
        f'curl -H "X-Exosite-CIK: $TOKEN" -o fw-3.1.bin '
        f'"http://{connector.fqdn}:{page.url.split(":")[2].split("/")[0]}'
        f'/provision/download?id=fw-3.1.bin"'
    )
    row.get_by_role("link", name="Delete fw-3.1.bin").click()
    page.get_by_role("button", name="Delete fw-3.1.bin").click()
    expect(page.get_by_text("No content yet.")).to_be_visible()
    assert ContentItem.objects.count() == 0


def test_invite_accept_as_a_new_user_and_a_viewer_cannot_save_settings(page, settings):
    from connector.services import create_connector

    settings.SIGNUP = "invite"  # the shipped default once an account exists
    owner = User.objects.create_user("owner@example.com", "a long factory passphrase")
    connector = create_connector(owner, "Line 7")
    sign_in(page, "owner@example.com")
    page.goto(f"/c/{connector.id}/members/")
    page.get_by_label("Email").fill("support@example.com")
    page.get_by_label("Role", exact=True).select_option("viewer")
    page.get_by_role("button", name="Invite").click()
    link = page.locator("#invitation-link").input_value()
    assert "/invitation/" in link
    expect(page.locator("[data-invitation='support@example.com']")).to_contain_text("Viewer")
    page.get_by_role("button", name="Sign out").click()

    page.goto(link)
    expect(page.get_by_role("heading", name="Join “Line 7”")).to_be_visible()
    page.get_by_role("link", name="Create an account for support@example.com").click()
    expect(page.get_by_label("Email")).to_have_value("support@example.com")
    expect(page.get_by_label("Email")).to_be_disabled()
    page.get_by_label("Password", exact=True).fill("another long passphrase")
    page.get_by_label("Password again").fill("another long passphrase")
    page.get_by_role("button", name="Sign up and join").click()

    page.wait_for_url(f"**/c/{connector.id}/")
    expect(page.locator("#my-role")).to_have_text("viewer")
    tabs = page.get_by_role("navigation", name="Connector").get_by_role("link")
    expect(tabs).to_have_text(
        ["Overview", "Settings", "Devices", "Resources", "Content", "Logs", "Members"]
    )
    # Settings are readable, not changeable: no Save, the controls disabled, no vendor keys.
    expect(page.locator("#read-only")).to_be_visible()
    expect(page.get_by_role("button", name="Save")).to_have_count(0)
    expect(page.get_by_label("Enable provisioning")).to_be_disabled()
    expect(page.get_by_role("heading", name="Events")).to_have_count(0)
    # The server is the boundary: the page's own form posted anyway is refused.
    status = page.evaluate(
        """async () => {
          const form = document.querySelector('form.settings');
          const body = new URLSearchParams(new FormData(form));
          body.set('devmode', 'on');
          const answer = await fetch(location.pathname, {method: 'POST', body});
          return answer.status;
        }"""
    )
    assert status == 403
    connector.refresh_from_db()
    assert connector.devmode is False
    page.get_by_role("link", name="Devices").click()
    expect(page.get_by_text("No devices yet.")).to_be_visible()
    expect(page.locator("summary", has_text="New device")).to_have_count(0)
    page.get_by_role("link", name="Members").click()
    expect(page.locator("[data-member='support@example.com']")).to_contain_text("Viewer")
    expect(page.get_by_role("button", name="Invite")).to_have_count(0)


def test_devices_menu_closes_bulk_actions_wait_and_tabs_fit_a_narrow_screen(page):
    from connector.services import create_connector
    from devices.services import whitelist_device

    user = User.objects.create_user("narrow@example.com", "a long factory passphrase")
    connector = create_connector(user, "Narrow")
    whitelist_device(connector, "00000001")
    sign_in(page, "narrow@example.com")
    page.goto(f"/c/{connector.id}/devices/")
    menu = page.locator("details.menu")
    page.get_by_text("+ New device(s)").click()
    expect(menu).to_have_attribute("open", "")
    page.keyboard.press("Escape")
    expect(menu).not_to_have_attribute("open", "")
    page.get_by_text("+ New device(s)").click()
    page.get_by_role("heading", name="Devices").click()  # outside the menu
    expect(menu).not_to_have_attribute("open", "")
    # Bulk actions wait for a selection.
    lock = page.get_by_role("button", name="Lock", exact=True)
    expect(lock).to_be_disabled()
    page.get_by_label("Select 00000001").check()
    expect(lock).to_be_enabled()
    expect(page.locator("#selected-count")).to_have_text("1 selected")
    # On a phone-sized screen every tab is whole and on screen.
    page.set_viewport_size({"width": 360, "height": 740})
    page.reload()
    for tab in page.get_by_role("navigation", name="Connector").get_by_role("link").all():
        box = tab.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 360, (tab.inner_text(), box)
        assert tab.evaluate("e => e.scrollWidth <= e.clientWidth"), tab.inner_text()


def test_device_page_charts_its_history_and_the_range_can_change(page):
    from connector.services import create_connector
    from devices.models import DataPoint
    from devices.services import whitelist_device
    from tests.conftest import define

    user = User.objects.create_user("chart@example.com", "a long factory passphrase")
    connector = create_connector(user, "Charts")
    define(connector, "state", temp={"format": "number", "unit": "°C"})
    device = whitelist_device(connector, "00000001")
    import time as clock

    now = clock.time_ns() // 1000
    DataPoint.objects.bulk_create(
        [
            DataPoint(
                device=device,
                alias="temp",
                timestamp=now - (30 - i) * 60_000_000,
                value=str(20 + i / 4),
            )
            for i in range(12)
        ]
        + [
            DataPoint(device=device, alias="temp", timestamp=now - 3 * 86400_000_000, value="5"),
            DataPoint(device=device, alias="state", timestamp=now - 60_000_000, value="idle"),
        ]
    )
    sign_in(page, "chart@example.com")
    page.goto(f"/c/{connector.id}/devices/d/00000001/")
    temp = page.locator("figure[data-alias='temp']")
    expect(temp).to_have_attribute("data-points", "12")  # the day's, not the older one
    expect(temp.locator("svg circle.point")).to_have_count(12)
    expect(temp.locator("svg")).to_have_attribute(
        "aria-label", re.compile(r"temp: 12 values from 20.0 to 22.75")
    )
    expect(page.locator("figure[data-alias='state'] td.mono")).to_have_text(["idle"])
    page.get_by_label("Week").check()
    page.get_by_role("button", name="Show").click()
    expect(temp).to_have_attribute("data-points", "13")
    expect(temp.locator("svg circle.point")).to_have_count(13)
    # Custom shows its From/To fields, in UTC text.
    page.get_by_label("Custom").check()
    expect(page.get_by_label("From (UTC)")).to_be_visible()
