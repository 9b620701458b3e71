"""Multi-row INSERT (optionally upsert, optionally RETURNING) in one statement.

The ORM's bulk_create wraps every call in a transaction (BEGIN + COMMIT: two more round trips)
and builds a model instance per row; the device API and the CSV import need neither. Works on
PostgreSQL and SQLite ≥ 3.35; only column names from the model and placeholders go into the
SQL text, values are always parameters.
"""

from __future__ import annotations

import json
import time
import weakref
from collections.abc import Sequence
from functools import lru_cache

from django.db import connection

POSTGRESQL_MAX_PARAMETERS = 65_535
# The longest a connection keeps its prepared statements, and so their plans (seconds).
PLAN_MAX_AGE = 10.0


def insert_sql(
    model,
    columns: Sequence[str],
    nrows: int,
    *,
    conflict: Sequence[str] = (),
    update: Sequence[str] = (),
    returning: Sequence[str] = (),
    keep_if_null: Sequence[str] = (),
) -> str:
    """The statement text; built once per shape (the device API repeats a handful).
    `keep_if_null` columns are updated on conflict only with a non-null new value."""
    return _insert_sql(
        model,
        connection.vendor,
        tuple(columns),
        nrows,
        tuple(conflict),
        tuple(update),
        tuple(returning),
        tuple(keep_if_null),
    )


@lru_cache(maxsize=256)
def _insert_sql(model, vendor, columns, nrows, conflict, update, returning, keep_if_null) -> str:
    qn = connection.ops.quote_name
    table = qn(model._meta.db_table)
    row_sql = "(" + ", ".join(["%s"] * len(columns)) + ")"
    sql = (
        f"INSERT INTO {table} ({', '.join(qn(c) for c in columns)}) "  # noqa: S608
        f"VALUES {', '.join([row_sql] * nrows)}"
    )
    if conflict:
        sql += f" ON CONFLICT ({', '.join(qn(c) for c in conflict)}) "
        if update:
            sets = [f"{qn(c)} = excluded.{qn(c)}" for c in update]
            sets += [f"{qn(c)} = COALESCE(excluded.{qn(c)}, {table}.{qn(c)})" for c in keep_if_null]
            sql += "DO UPDATE SET " + ", ".join(sets)
        else:
            sql += "DO NOTHING"
    if returning:
        sql += " RETURNING " + ", ".join(qn(c) for c in returning)
    return sql


def insert_rows(
    model,
    columns: Sequence[str],
    rows: Sequence[Sequence],
    *,
    conflict: Sequence[str] = (),
    update: Sequence[str] = (),
    returning: Sequence[str] = (),
    keep_if_null: Sequence[str] = (),
) -> list[tuple]:
    """Insert `rows` in as few statements as the driver's limit on parameters allows
    (one, for the device API's batches); the rows RETURNING gave, in order."""
    if not rows:
        return []
    step = max(1, max_parameters() // len(columns))
    found: list[tuple] = []
    for start in range(0, len(rows), step):
        chunk = rows[start : start + step]
        sql = insert_sql(
            model,
            columns,
            len(chunk),
            conflict=conflict,
            update=update,
            returning=returning,
            keep_if_null=keep_if_null,
        )
        found += run(sql, [value for row in chunk for value in row], fetch=bool(returning))
    return found


def max_parameters() -> int:
    """The most parameters one statement may have on this connection: SQLite's limit is a
    build option (32,766 by default, 250,000 in some distributions' builds)."""
    if connection.vendor == "sqlite":
        import sqlite3

        connection.ensure_connection()
        return connection.connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    return POSTGRESQL_MAX_PARAMETERS


def tables(*models) -> tuple[str, ...]:
    """The models' table names, quoted for the SQL text."""
    return tuple(connection.ops.quote_name(model._meta.db_table) for model in models)


def run_packed(sql: str, params: Sequence, columns: Sequence[str]) -> list[tuple]:
    """`run` for a SELECT of many rows on the hot path, whose result `columns` are named and
    hold only numbers and text. On SQLite the rows come back in one step, as one JSON array:
    the driver lets go of the GIL for every step of a statement, and a thread stepping
    through a batch's thousand rows handed the GIL back and forth with the busy event loop
    as often (each time a futex wake-up and a wait on both sides). PostgreSQL returns them
    in one round trip anyway."""
    if connection.vendor != "sqlite":
        return run(sql, params)
    ((packed,),) = run(_packed_sql(sql, tuple(columns)), params)
    return [tuple(row) for row in json.loads(packed)]


@lru_cache(maxsize=64)
def _packed_sql(sql: str, columns: tuple[str, ...]) -> str:
    return f"SELECT json_group_array(json_array({', '.join(columns)})) FROM ({sql})"  # noqa: S608


def run(sql: str, params: Sequence, *, fetch: bool = True) -> list[tuple]:
    """Execute one statement on the driver's own cursor and return its rows.

    On PostgreSQL as a server-side prepared statement: Django binds parameters client-side, so
    PostgreSQL would parse and plan each statement anew, which for the device API's CTEs cost
    more CPU than running them. psycopg prepares a statement once per connection (see
    `prepare_threshold` in settings) and reuses it; the statements here are few and fixed. On
    SQLite the `?` form of the statement is cached instead of rewritten on every call.
    Errors are Django's (IntegrityError, …), and the statement is logged where Django would
    log it (DEBUG, or a test counting queries).
    """
    connection.ensure_connection()
    started = time.monotonic()
    with connection.wrap_database_errors:
        if connection.vendor == "postgresql":
            import psycopg

            _replan_when_due(connection.connection)
            with psycopg.Cursor(connection.connection) as cursor:
                cursor.execute(sql, params, prepare=True)
                rows = cursor.fetchall() if fetch else []
        else:
            cursor = connection.connection.execute(_qmark(sql), params)
            rows = cursor.fetchall() if fetch else []
            cursor.close()
    if connection.queries_logged:
        connection.queries_log.append(
            {"sql": f"{sql} -- {list(params)!r}", "time": f"{time.monotonic() - started:.3f}"}
        )
    return rows


_PLANNED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # driver connection: when


def _replan_when_due(raw) -> None:
    """Drop the connection's prepared statements once they are PLAN_MAX_AGE old: their next
    use prepares them again, planned for the tables as they are now. PostgreSQL keeps the
    generic plan of a prepared statement until a table it reads is analysed, and the plan
    made for a small table scans it: the writes' plan, made when there were a few hundred
    last-seen rows, scanned them per job after activations had taken them to 89,000 before
    autovacuum came (bench_device_api's writes fell from 4,600/s to 1,100/s by its third
    round). PostgreSQL plans for a table's current size, so a plan made again fits it."""
    now = time.monotonic()
    since = _PLANNED.setdefault(raw, now)
    if now - since >= PLAN_MAX_AGE:
        _PLANNED[raw] = now
        raw.execute("DEALLOCATE ALL")  # psycopg forgets its own list of them with this


@lru_cache(maxsize=256)
def _qmark(sql: str) -> str:
    """SQLite's placeholders (the statements here have no literal `%`)."""
    return sql.replace("%s", "?")


def typed_placeholders(model, columns: Sequence[str]) -> str:
    """`%s::<type>` per column, for parameters in a SELECT list (PostgreSQL cannot infer
    their types from an INSERT … SELECT target)."""
    fields = {f.column: f for f in model._meta.concrete_fields}

    def db_type(field) -> str:
        if field.is_relation:
            return field.target_field.rel_db_type(connection)
        return field.db_type(connection)

    return ", ".join(f"%s::{db_type(fields[c])}" for c in columns)
