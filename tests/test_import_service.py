"""The CSV import service: every row checked, all or nothing, every error with its line."""

import csv
import io

import pytest

from connector.models import Event
from devices import services
from devices.importer import escape_cell, import_identities, unescape_cell
from devices.models import Device, DeviceTag
from tests.certs import make_cert, pem

HEADER = "ID,TLS Client Certificate,Tags\n"
TUTORIAL = HEADER + "".join(
    f'0000000{i},,"[{{""name"": ""group"", ""value"": ""g{g}""}},'
    f'{{""name"": ""claim_code"", ""value"": ""{c}""}}]"\n'
    for i, g, c in [(1, 1, "abc"), (2, 1, "abc"), (3, 2, "def"), (4, 2, "def"), (5, 3, "def")]
)


@pytest.fixture
def base10(connector):
    connector.id_type, connector.id_length = "base10", 8
    connector.save()
    return connector


def run(connector, content, **kw):
    data = content.encode() if isinstance(content, str) else content
    return import_identities(connector, io.BytesIO(data), **kw)


def messages(report):
    return [(e.line, e.message) for e in report.errors]


def test_tutorial_after_one_added_by_hand_creates_4_skips_1(base10, alice):
    services.whitelist_device(base10, "00000001", actor=alice)
    report = run(base10, TUTORIAL, actor=alice)
    assert report.as_json() == {"created": 4, "skipped": 1, "updated": 0}
    assert Device.objects.count() == 5
    assert DeviceTag.objects.filter(device__identity="00000005").count() == 2
    assert not DeviceTag.objects.filter(device__identity="00000001").exists()  # skipped as is
    event = Event.objects.filter(type="whitelisted").last()
    assert event.payload == {
        "count": 4,
        "updated": 0,
        "skipped": 1,
        "source": "csv",
        "identities": ["00000002", "00000003", "00000004", "00000005"],
        "skipped_identities": ["00000001"],
    }
    assert event.actor_email == alice.email


def test_update_replaces_tags_and_certificate(base10):
    services.whitelist_device(base10, "00000001", tags=[{"name": "old", "value": "1"}])
    cert, _ = make_cert("00000001")
    content = HEADER + f'00000001,"{pem(cert)}","[{{""name"": ""new"", ""value"": ""2""}}]"\n'
    report = run(base10, content, update=True)
    assert report.as_json() == {"created": 0, "skipped": 0, "updated": 1}
    device = Device.objects.get()
    assert device.tag_list == [{"name": "new", "value": "2"}]
    assert device.auth_type == "certificate" and device.cert_pem.startswith("-----BEGIN")


def test_crlf_lf_and_bom_are_accepted(base10):
    content = "\ufeff" + TUTORIAL.replace("\n", "\r\n")
    assert run(base10, content).created == 5


def test_header_only_id_and_tags_any_case_and_order(base10):
    assert run(base10, "id\n00000001\n00000002\n").created == 2
    assert run(base10, ' id , TAGS \n00000003,"[]"\n').created == 1
    assert run(base10, "ID,Certificate\n00000004,\n").created == 1
    assert run(base10, "ID,SSL Client Certificate,Tags\n00000005,,\n").created == 1


def test_blank_lines_and_empty_trailing_rows_are_ignored(base10):
    assert run(base10, HEADER + "\n00000001,,\n,,\n\n").created == 1


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", [(None, "The file is empty")]),
        (HEADER, [(None, "header but no devices")]),
        (
            "00000001,,\n",
            [
                (
                    1,
                    "The first row must be the header ID,TLS Client Certificate,Tags "
                    "(found “00000001”)",
                )
            ],
        ),
        ("Tags,ID\n[],00000001\n", [(1, "The first column must be “ID”")]),
        ("ID,Serial,Tags\n00000001,x,\n", [(1, "Unknown column 2 “Serial”")]),
        ("ID,Tags,Tags\n", [(1, "appears twice")]),
        ("ID,TLS Client Certificate,Tags,Extra\n", [(1, "Unknown column 4 “Extra”")]),
        (HEADER + "00000001,,,\n", [(2, "4 cells, expected 3 (ID, TLS Client Certificate, Tags)")]),
        (HEADER + "00000001\n", [(2, "1 cells, expected 3")]),
        (
            HEADER + "00000001,,\n00000001,,\n",
            [(3, "ID “00000001” appears again (first on line 2)")],
        ),
        (HEADER + "0000001,,\n", [(2, "ID “0000001”: The identity must have exactly 8")]),
        (HEADER + " 00000001,,\n", [(2, "space or control character at position 1")]),
        (HEADER + "00000001,,[{\n", [(2, "Tags: Tags are not valid JSON")]),
        (
            HEADER + '00000001,,"{""name"": ""a"", ""value"": ""b""}"\n',
            [(2, "Tags: Tags must be a list")],
        ),
        (HEADER + '00000001,,"[{""name"": ""a""}]"\n', [(2, 'exactly "name" and "value"')]),
        (HEADER + '00000001,,"[""a""]"\n', [(2, 'exactly "name" and "value"')]),
        (HEADER + "00000001,garbage,\n", [(2, "TLS Client Certificate: No PEM certificate found")]),
        (HEADER + "00000001,,\n" + "00000002,,\n" + "x\x00y,,\n", [(4, "control character")]),
        (b"ID,Tags\n00000001,\xe9t\xe9\n", [(2, "not UTF-8 (byte 0xe9 at character 10)")]),
    ],
)
def test_bad_files_give_clear_errors_and_import_nothing(base10, content, expected):
    report = run(base10, content)
    assert not report.ok
    got = messages(report)
    assert len(got) == len(expected), got
    for (line, message), (want_line, want) in zip(got, expected, strict=True):
        assert line == want_line
        assert want in message
    assert not Device.objects.exists()
    assert not Event.objects.filter(type="whitelisted").exists()


def test_certificate_for_another_identity_is_refused(base10):
    cert, _ = make_cert("00000002")
    report = run(base10, HEADER + f'00000001,"{pem(cert)}",\n')
    assert messages(report) == [
        (
            2,
            "TLS Client Certificate: The certificate's CN is “00000002”, "
            "not the identity “00000001”.",
        )
    ]


def test_multiline_certificate_cells_keep_line_numbers_right(base10):
    cert, _ = make_cert("00000001")
    lines = pem(cert).count("\n")
    content = HEADER + f'00000001,"{pem(cert)}",\n00000002,,\nbad,,\n'
    report = run(base10, content)
    assert messages(report)[0][0] == 2 + lines + 1 + 1


def test_every_error_is_reported_not_just_the_first(base10):
    content = HEADER + "".join(f"bad{i},,\n" for i in range(30))
    report = run(base10, content)
    assert report.error_count == 30
    assert [e.line for e in report.errors] == list(range(2, 32))


def test_errors_beyond_the_cap_are_counted(base10, monkeypatch):
    monkeypatch.setattr("devices.importer.MAX_ERRORS", 5)
    report = run(base10, HEADER + "".join(f"bad{i},,\n" for i in range(12)))
    assert len(report.errors) == 5 and report.error_count == 12
    assert report.as_json()["error_count"] == 12


def test_size_and_row_limits(base10, settings):
    settings.IMPORT_MAX_ROWS = 3
    report = run(base10, HEADER + "".join(f"0000000{i},,\n" for i in range(1, 6)))
    assert "More than 3 devices" in messages(report)[-1][1]
    assert not Device.objects.exists()

    class Big(io.BytesIO):
        size = 50 * 1024 * 1024

    settings.IMPORT_MAX_BYTES = 32 * 1024 * 1024
    report = import_identities(base10, Big(b"ID\n00000001\n"))
    assert messages(report) == [
        (None, "The file is 52.4 MB; the limit is 34 MB. Split it into smaller files.")
    ]


def test_fifty_megabyte_file_is_refused_cleanly_without_500(base10, settings):
    """A real 50 MB upload through the API: refused with a clear message, nothing imported."""
    settings.IMPORT_MAX_BYTES = 32 * 1024 * 1024
    row = "00000001,," + "x" * 1000 + "\n"
    body = (HEADER + row * (50 * 1024)).encode()
    assert len(body) > 50 * 1000 * 1000
    from django.core.files.uploadedfile import SimpleUploadedFile
    from rest_framework.test import APIClient

    from tests.conftest import basic

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=basic("alice@example.com"))
    upload = SimpleUploadedFile("big.csv", body, content_type="text/csv")
    response = client.post(
        f"/api:1/service/{base10.id}/device2/identities", {"identities": upload}, format="multipart"
    )
    assert response.status_code == 400
    assert "limit is 34 MB" in response.json()["errors"][0]["message"]


def test_formula_cells_are_escaped_for_export_and_restored_on_import():
    for value in ("=cmd|' /C calc'!A0", "+1", "-----BEGIN CERTIFICATE-----", "@SUM(1)"):
        assert escape_cell(value).startswith("'")
        assert unescape_cell(escape_cell(value)) == value
    assert escape_cell("00000001") == "00000001"
    assert unescape_cell("'plain") == "'plain"


def test_opaque_identities_with_formula_characters_round_trip(connector):
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["ID"])
    writer.writerow([escape_cell("=evil")])
    assert "'=evil" in out.getvalue()
    assert run(connector, out.getvalue()).created == 1
    assert Device.objects.get().identity == "=evil"


def test_control_characters_in_tags_are_refused(base10):
    report = run(base10, HEADER + '00000001,,"[{""name"": ""a\\u0000"", ""value"": ""b""}]"\n')
    assert "control characters" in messages(report)[0][1]
