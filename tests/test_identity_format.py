"""The identity-format check (pure): every type, prefix, length, casing and odd input."""

import pytest

from connector.identity import IdentityFormat, format_error, identity_error

OPAQUE = IdentityFormat()
BASE10_8 = IdentityFormat(type="base10", length=8)


@pytest.mark.parametrize(
    ("identity", "fmt"),
    [
        ("anything-goes_1.2", OPAQUE),
        ("ünïcødé-设备", OPAQUE),
        ("a", OPAQUE),
        ("x" * 128, OPAQUE),
        ("00000001", BASE10_8),
        ("0123456789", IdentityFormat(type="base10")),
        ("deadBEEF", IdentityFormat(type="base16")),
        ("deadbeef", IdentityFormat(type="base16", casing="lower")),
        ("DEADBEEF", IdentityFormat(type="base16", casing="upper")),
        ("651b3b4d-5bf3-446d-9fd0-bacdc7bfbfff", IdentityFormat(type="uuid_v4")),
        ("651B3B4D-5BF3-446D-9FD0-BACDC7BFBFFF", IdentityFormat(type="uuid_v4", casing="upper")),
        ("00:14:22:01:23:45", IdentityFormat(type="mac:colon")),
        ("00-14-22-0a-23-45", IdentityFormat(type="mac:hyphen", casing="lower")),
        ("001422AB2345", IdentityFormat(type="mac:none", casing="upper")),
        ("CC3220-00:00:00:01:23:45", IdentityFormat(prefix="CC3220-", type="mac:colon")),
        ("ABC123", IdentityFormat(prefix="ABC", type="base10", length=3)),
        ("ABC123", IdentityFormat(prefix="ABC", length=3)),
    ],
)
def test_valid_identities(identity, fmt):
    assert identity_error(identity, fmt) is None


@pytest.mark.parametrize(
    ("identity", "fmt", "reason"),
    [
        ("", OPAQUE, "empty"),
        (None, OPAQUE, "must be text"),
        (12345678, BASE10_8, "must be text"),
        ("x" * 129, OPAQUE, "longer than 128"),
        ("has space", OPAQUE, "space or control character at position 4"),
        (" lead", OPAQUE, "position 1"),
        ("tab\tin", OPAQUE, "control character"),
        ("nl\n", OPAQUE, "control character"),
        ("nul\x00", OPAQUE, "control character"),
        ("zero\u200bwidth", OPAQUE, "control character"),  # format character (Cf)
        ("nbsp\u00a0", OPAQUE, "space"),
        ("a/b", OPAQUE, "“/”"),
        ("0000001", BASE10_8, "exactly 8 characters, not 7"),
        ("000000001", BASE10_8, "exactly 8 characters, not 9"),
        ("0000000a", BASE10_8, "only the digits"),
        ("٠١٢٣٤٥٦٧", BASE10_8, "only the digits"),  # Arabic-Indic digits are not base 10 here
        ("+0000001", BASE10_8, "only the digits"),
        ("deadbeeg", IdentityFormat(type="base16"), "hexadecimal"),
        ("0xdead", IdentityFormat(type="base16"), "hexadecimal"),
        ("DEADbeef", IdentityFormat(type="base16", casing="lower"), "lower-case"),
        ("deadBEEF", IdentityFormat(type="base16", casing="upper"), "upper-case"),
        ("651b3b4d-5bf3-346d-9fd0-bacdc7bfbfff", IdentityFormat(type="uuid_v4"), "UUID version 4"),
        ("651b3b4d-5bf3-446d-7fd0-bacdc7bfbfff", IdentityFormat(type="uuid_v4"), "UUID version 4"),
        ("651b3b4d5bf3446d9fd0bacdc7bfbfff", IdentityFormat(type="uuid_v4"), "UUID version 4"),
        (
            "651b3b4d-5bf3-446d-9fd0-bacdc7bfbfff",
            IdentityFormat(type="uuid_v4", casing="upper"),
            "upper-case",
        ),
        ("00-14-22-01-23-45", IdentityFormat(type="mac:colon"), "00:14:22:01:23:45"),
        ("00:14:22:01:23", IdentityFormat(type="mac:colon"), "MAC address"),
        ("00:14:22:01:23:4g", IdentityFormat(type="mac:colon"), "MAC address"),
        ("00:14:22:01:23:45", IdentityFormat(type="mac:hyphen"), "00-14-22-01-23-45"),
        ("0014220123450", IdentityFormat(type="mac:none"), "MAC address"),
        ("001422ab2345", IdentityFormat(type="mac:none", casing="upper"), "upper-case"),
        ("00:00:00:01:23:45", IdentityFormat(prefix="CC3220-", type="mac:colon"), "prefix"),
        ("cc3220-00:00:00:01:23:45", IdentityFormat(prefix="CC3220-"), "prefix “CC3220-”"),
        ("ABC", IdentityFormat(prefix="ABC"), "nothing after the prefix"),
        (
            "ABC1234",
            IdentityFormat(prefix="ABC", length=3),
            "exactly 3 characters after the prefix",
        ),
    ],
)
def test_invalid_identities_say_why(identity, fmt, reason):
    error = identity_error(identity, fmt)
    assert error is not None
    assert reason in error


def test_length_does_not_count_the_prefix():
    fmt = IdentityFormat(prefix="ABC", type="base10", length=3)
    assert identity_error("ABC123", fmt) is None
    assert "not 6" in identity_error("ABC123456", fmt)


def test_mixed_casing_accepts_both_cases_of_hex():
    fmt = IdentityFormat(type="mac:none", casing="mixed")
    assert identity_error("aBcDeF012345", fmt) is None


def test_casing_does_not_apply_to_opaque():
    assert identity_error("MiXeD", IdentityFormat(casing="lower")) is None


@pytest.mark.parametrize(
    ("fmt", "field", "message"),
    [
        (IdentityFormat(prefix="a b"), "prefix", "space"),
        (IdentityFormat(prefix="x" * 65), "prefix", "at most 64"),
        (IdentityFormat(prefix="a/"), "prefix", "“/”"),
        (IdentityFormat(type="base64"), "type", "Unknown identity type"),
        (IdentityFormat(type="uuid_v4", length=30), "length", "always 36"),
        (IdentityFormat(type="mac:none", length=17), "length", "always 12"),
        (IdentityFormat(length=-1), "length", "negative"),
        (IdentityFormat(prefix="p" * 60, length=100), "length", "may not exceed 128"),
        (IdentityFormat(casing="camel"), "casing", "Unknown casing"),
    ],
)
def test_bad_formats_are_refused(fmt, field, message):
    errors = format_error(fmt)
    assert field in errors
    assert message in errors[field]


@pytest.mark.parametrize(
    "fmt",
    [
        IdentityFormat(),
        BASE10_8,
        IdentityFormat(type="uuid_v4", length=36),
        IdentityFormat(type="mac:colon", prefix="CC3220-"),
        IdentityFormat(type="base16", casing="upper", length=12),
    ],
)
def test_good_formats_pass(fmt):
    assert format_error(fmt) == {}


def test_describe_mentions_type_length_prefix():
    text = IdentityFormat(prefix="SN-", type="base10", length=8).describe()
    assert "Base 10" in text and "8 characters" in text and "SN-" in text
