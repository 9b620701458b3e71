"""Bulk whitelisting from CSV (SPEC.md section 6): parse → validate every row → apply all or none.

The file is read line by line (never whole into memory); rows are kept as small tuples until
every one is known good, then written in batches inside one transaction. The upload page and the
management API both call `import_identities`.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, NamedTuple

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from connector import events
from connector.models import Connector, EventType, now_us
from connector.sql import insert_rows
from devices.models import Device, DeviceAuthType, DeviceTag, Status
from devices.validation import check_device_certificate, check_identity, parse_tags_json
from provisioning.pki import CertInfo

COLUMNS = {
    "id": "id",
    "tls client certificate": "cert",
    "ssl client certificate": "cert",
    "certificate": "cert",
    "tags": "tags",
}
TITLES = {"id": "ID", "cert": "TLS Client Certificate", "tags": "Tags"}
HEADER_HELP = "ID,TLS Client Certificate,Tags"
MAX_ERRORS = 1000
BATCH = 1000  # rows per INSERT: 11 parameters each stays under SQLite's 32766
LOOKUP_CHUNK = 900  # stays under every backend's limit of query parameters
# Spreadsheets run cells starting with these as formulas; exports prefix them with "'".
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")

csv.field_size_limit(1024 * 1024)  # a certificate chain in one cell is a few KiB at most


class RowError(NamedTuple):
    line: int | None  # None: the file as a whole
    message: str


LISTED = 100  # identities named in an import's report and event


@dataclass
class ImportReport:
    rows: int = 0
    created: int = 0
    skipped: int = 0
    updated: int = 0
    errors: list[RowError] = field(default_factory=list)
    error_count: int = 0
    # The first LISTED identities of each kind, for the check step and the event.
    created_ids: list[str] = field(default_factory=list)
    skipped_ids: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error_count == 0

    def add_error(self, line: int | None, message: str) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(RowError(line, message))

    def as_json(self) -> dict:
        if not self.ok:
            return {
                "errors": [{"line": e.line, "message": e.message} for e in self.errors],
                "error_count": self.error_count,
            }
        return {"created": self.created, "skipped": self.skipped, "updated": self.updated}


class _Row(NamedTuple):
    line: int
    identity: str
    cert: CertInfo | None
    tags: list[dict[str, str]] | None  # None: no Tags column


def escape_cell(value: str) -> str:
    return "'" + value if value.startswith(FORMULA_START) else value


def unescape_cell(value: str) -> str:
    if len(value) > 1 and value[0] == "'" and value[1:].startswith(FORMULA_START):
        return value[1:]
    return value


def _decoded_lines(raw_lines: Iterable[bytes], report: ImportReport) -> Iterator[str]:
    """UTF-8 lines (BOM dropped); stops at the first line that is not UTF-8, saying where."""
    for number, raw in enumerate(raw_lines, start=1):
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            report.add_error(
                number,
                f"The file is not UTF-8 (byte 0x{raw[exc.start]:02x} at character "
                f"{exc.start + 1}). Save it as “CSV UTF-8” and upload it again.",
            )
            return


def _read_header(row: list[str], report: ImportReport) -> list[str] | None:
    names = [cell.strip().lower() for cell in row]
    if not names or names[0] != "id":
        if names and names[0] in COLUMNS:
            report.add_error(1, f"The first column must be “ID” (header {HEADER_HELP}).")
        else:
            found = row[0][:40] if row else ""
            report.add_error(
                1, f"The first row must be the header {HEADER_HELP} (found “{found}”)."
            )
        return None
    columns = []
    for position, name in enumerate(names, start=1):
        column = COLUMNS.get(name)
        if column is None:
            report.add_error(
                1,
                f"Unknown column {position} “{row[position - 1].strip()}”; the columns are "
                f"{HEADER_HELP} (certificate and tags optional).",
            )
            return None
        if column in columns:
            report.add_error(1, f"Column “{row[position - 1].strip()}” appears twice.")
            return None
        columns.append(column)
    return columns


def _parse(connector: Connector, raw_lines: Iterable[bytes], report: ImportReport) -> list[_Row]:
    fmt = connector.identity_format
    reader = csv.reader(_decoded_lines(raw_lines, report))
    rows: list[_Row] = []
    seen: dict[str, int] = {}
    columns: list[str] | None = None
    max_rows = settings.IMPORT_MAX_ROWS
    line = 1
    try:
        for cells in reader:
            start, line = line, reader.line_num + 1
            if columns is None:
                columns = _read_header(cells, report)
                if columns is None:
                    return []
                continue
            if not any(cell.strip() for cell in cells):
                continue  # blank line, or a spreadsheet's empty trailing row
            if len(cells) != len(columns):
                expected = ", ".join(TITLES[c] for c in columns)
                report.add_error(
                    start, f"{len(cells)} cells, expected {len(columns)} ({expected})."
                )
                continue
            if len(rows) + report.error_count >= max_rows:
                report.add_error(start, f"More than {max_rows} devices: split the file.")
                return []
            row = _parse_row(start, dict(zip(columns, cells, strict=True)), fmt, seen, report)
            if row is not None:
                rows.append(row)
    except csv.Error as exc:
        report.add_error(line, f"The file is not valid CSV ({exc}).")
        return []
    if columns is None and report.ok:
        report.add_error(None, f"The file is empty: it needs the header {HEADER_HELP}.")
    elif report.ok and not rows:
        report.add_error(None, "The file has a header but no devices.")
    return rows


def _parse_row(line, cells: dict[str, str], fmt, seen: dict[str, int], report) -> _Row | None:
    identity = unescape_cell(cells["id"])
    try:
        check_identity(identity, fmt)
    except ValueError as exc:
        report.add_error(line, f"ID “{identity[:60]}”: {exc}")
        return None
    if identity in seen:
        report.add_error(line, f"ID “{identity}” appears again (first on line {seen[identity]}).")
        return None
    seen[identity] = line
    cert = None
    if cell := unescape_cell(cells.get("cert", "")).strip():
        try:
            cert = check_device_certificate(cell, identity)
        except ValueError as exc:
            report.add_error(line, f"TLS Client Certificate: {exc}")
            return None
    tags = None
    if "tags" in cells:
        try:
            tags = parse_tags_json(unescape_cell(cells["tags"]))
        except ValueError as exc:
            report.add_error(line, f"Tags: {exc}")
            return None
    return _Row(line, identity, cert, tags)


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _existing_ids(connector: Connector, identities: list[str]) -> dict[str, int]:
    found: dict[str, int] = {}
    for chunk in _chunks(identities, LOOKUP_CHUNK):
        found.update(
            Device.objects.filter(connector=connector, identity__in=chunk).values_list(
                "identity", "id"
            )
        )
    return found


def import_identities(
    connector: Connector,
    raw_lines: IO[bytes] | Iterable[bytes],
    *,
    actor=None,
    update: bool = False,
    dry_run: bool = False,
    source_ip: str | None = None,
) -> ImportReport:
    """Whitelist every row of a CSV file, or nothing. Existing identities are skipped, or have
    their certificate and tags replaced when `update` is set. `dry_run` only counts."""
    report = ImportReport()
    size = getattr(raw_lines, "size", None)
    if size is not None and size > settings.IMPORT_MAX_BYTES:
        report.add_error(
            None,
            f"The file is {size / 1e6:.1f} MB; the limit is "
            f"{settings.IMPORT_MAX_BYTES / 1e6:.0f} MB. Split it into smaller files.",
        )
        return report
    rows = _parse(connector, raw_lines, report)
    if not report.ok:
        return report
    report.rows = len(rows)
    existing = _existing_ids(connector, [r.identity for r in rows])
    report.created = len(rows) - len(existing)
    report.updated = len(existing) if update else 0
    report.skipped = 0 if update else len(existing)
    report.created_ids = [r.identity for r in rows if r.identity not in existing][:LISTED]
    if not update:
        report.skipped_ids = [r.identity for r in rows if r.identity in existing][:LISTED]
    if dry_run:
        return report
    with transaction.atomic():
        _create(connector, [r for r in rows if r.identity not in existing])
        if update and existing:
            _update(connector, [r for r in rows if r.identity in existing], existing)
        events.record(
            connector,
            EventType.WHITELISTED,
            f"CSV import: {report.created} whitelisted{_listed(report.created_ids, report.created)}"
            f", {report.updated} updated, {report.skipped} skipped",
            actor=actor,
            source_ip=source_ip,
            payload={
                "count": report.created,
                "updated": report.updated,
                "skipped": report.skipped,
                "source": "csv",
                "identities": report.created_ids,
                "skipped_identities": report.skipped_ids,
            },
        )
    return report


def _listed(ids: list[str], count: int) -> str:
    """` (a, b, c)` or ` (a, b, c, … and 7 more)` for an event's summary."""
    if not ids:
        return ""
    shown = ids[:5]
    more = count - len(shown)
    return f" ({', '.join(shown)}{f', … and {more} more' if more > 0 else ''})"


def _device_fields(row: _Row) -> dict:
    if row.cert is None:
        return {"cert_pem": "", "cert_fingerprint": "", "cert_not_after": None}
    return {
        "cert_pem": row.cert.pem,
        "cert_fingerprint": row.cert.fingerprint,
        "cert_not_after": row.cert.not_after,
    }


def _create(connector: Connector, rows: list[_Row]) -> None:
    """Insert devices and their tags in bulk.

    The ORM's bulk_create spends ~90% of an import building model instances and compiling SQL.
    PostgreSQL gets COPY; SQLite gets multi-row INSERT … RETURNING (SQLite ≥ 3.35).
    """
    now = timezone.now()
    expire = now_us() + connector.activation_period_hours * 3_600_000_000
    for batch in _chunks(rows, BATCH):
        values = [
            (
                connector.pk,
                row.identity,
                Status.WHITELISTED,
                False,
                DeviceAuthType.CERTIFICATE if row.cert else DeviceAuthType.NONE,
                "",
                row.cert.pem if row.cert else "",
                row.cert.fingerprint if row.cert else "",
                row.cert.not_after if row.cert else None,
                expire,
                now,
            )
            for row in batch
        ]
        ids = _insert_devices(connector, values)
        _insert_tags(connector, [(ids[row.identity], row.tags) for row in batch if row.tags])


DEVICE_COLUMNS = [
    "connector_id",
    "identity",
    "state",
    "locked",
    "auth_type",
    "secret_hash",
    "cert_pem",
    "cert_fingerprint",
    "cert_not_after",
    "expire",
    "created_at",
]
TAG_COLUMNS = ["device_id", "connector_id", "name", "value"]


def _insert_devices(connector: Connector, values: list[tuple]) -> dict[str, int]:
    """Insert device rows; returns identity -> id."""
    if connection.vendor == "postgresql":
        _copy(Device, DEVICE_COLUMNS, values)
        table = connection.ops.quote_name(Device._meta.db_table)
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT identity, id FROM {table} WHERE connector_id = %s AND identity = ANY(%s)",  # noqa: S608 (table name from the model)
                [connector.pk, [v[1] for v in values]],
            )
            return dict(cursor.fetchall())
    adapt = connection.ops.adapt_datetimefield_value
    values = [(*v[:8], adapt(v[8]), v[9], adapt(v[10])) for v in values]
    return dict(insert_rows(Device, DEVICE_COLUMNS, values, returning=("identity", "id")))


def _copy(model, columns: list[str], values: list[tuple]) -> None:
    qn = connection.ops.quote_name
    sql = f"COPY {qn(model._meta.db_table)} ({', '.join(qn(c) for c in columns)}) FROM STDIN"
    with connection.cursor() as cursor, cursor.copy(sql) as copy:
        for value in values:
            copy.write_row(value)


def _insert_tags(connector: Connector, device_tags: list[tuple[int, list[dict[str, str]]]]) -> None:
    values = [
        (device_id, connector.pk, tag["name"], tag["value"])
        for device_id, tags in device_tags
        for tag in tags
    ]
    if connection.vendor == "postgresql":
        _copy(DeviceTag, TAG_COLUMNS, values)
        return
    for batch in _chunks(values, BATCH * 2):
        insert_rows(DeviceTag, TAG_COLUMNS, batch)


def _update(connector: Connector, rows: list[_Row], existing: dict[str, int]) -> None:
    for batch in _chunks(rows, LOOKUP_CHUNK):
        ids = [existing[row.identity] for row in batch]
        devices = {d.pk: d for d in Device.objects.filter(pk__in=ids)}
        for row in batch:
            device = devices[existing[row.identity]]
            for name, value in _device_fields(row).items():
                setattr(device, name, value)
            if row.cert:
                device.auth_type = DeviceAuthType.CERTIFICATE
        Device.objects.bulk_update(
            devices.values(), ["cert_pem", "cert_fingerprint", "cert_not_after", "auth_type"]
        )
        with_tags = [row for row in batch if row.tags is not None]
        DeviceTag.objects.filter(device_id__in=[existing[r.identity] for r in with_tags]).delete()
        _insert_tags(connector, [(existing[row.identity], row.tags) for row in with_tags])
