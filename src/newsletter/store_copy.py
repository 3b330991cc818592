"""``newsletter store copy SRC DST``: a whole store moved to another place, and checked.

SRC and DST are each a SQLite file or a ``postgresql://`` URL, in any combination: this is how
a store moves onto a server and back, and how ``newsletter backup`` copies a server's store to
a file. :func:`copy_store` reads top to bottom:

1. SRC is opened as it is (never created); DST is created, or brought to the current schema.
2. SRC is read in one snapshot (a read transaction on SQLite, ``REPEATABLE READ, READ ONLY`` on
   PostgreSQL): what a writer commits meanwhile is in neither the copy nor its check.
3. DST is written in one transaction: refused unless every table is empty, then every table
   copied by column name, ids as they are, a batch at a time (``COPY … FROM STDIN`` on
   PostgreSQL, ``executemany`` on SQLite), so memory stays flat whatever the store's size.
4. Every table is checked on both sides (:func:`table_check`): its rows counted and hashed, SRC
   in its snapshot, DST inside the copy's transaction. A difference rolls the whole copy
   back, so DST is left empty, as it was.
5. DST's id sequences are raised above every id SRC ever gave; then the copy commits.

The check's canonical text of a table, hashed with SHA-256: a first line with its column names
in alphabetical order as a JSON array, then every row as one JSON array of arrays, each row's
values in that column order, the rows in primary-key order (text keys compared by code point:
``COLLATE "C"`` on PostgreSQL, ``BINARY`` on SQLite, whatever the server's locale). The JSON is
compact (no spaces) with non-ASCII as UTF-8. The values are what the two drivers return, made
equal where the types differ and the value does not: a number with no fractional part is
written as an integer (5.0 from a REAL column is 5), a boolean as 1 or 0, NULL as null. Text
stays text: '5' and 5 differ.

Ids are never given twice (schema 5 in store.py): old links and journal rows name people by
id. So the copy carries over how far each id sequence got, not only the ids that are left. SRC's
floor is ``sqlite_sequence.seq`` of an AUTOINCREMENT table, or an identity sequence's
``last_value``; DST's sequence ends at or above that and every copied id (``setval`` on
PostgreSQL, ``sqlite_sequence`` on SQLite). SQLite's tables without AUTOINCREMENT have no
floor to keep: their next id is one above the highest they hold, as always on SQLite (only
``subscribers`` needs more). ``setval`` is not undone by a rollback, so it runs last.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from newsletter.database_url import DatabaseUrl, StoreLocation, parse_location
from newsletter.errors import InvalidInput, StoreError
from newsletter.store import (
    StoreConnection,
    open_store,
    table_names,
    transaction,
    translate_errors,
)

if TYPE_CHECKING:
    import psycopg

# Rows read from SRC (and hashed) at a time: enough to make round trips cheap, small enough
# that a million subscribers take no more memory than a thousand.
BATCH_ROWS = 5000

Row = tuple[Any, ...]
AfterTable = Callable[[str, StoreConnection], None]


@dataclass(frozen=True)
class TableCheck:
    """One table as the check saw it: how many rows, and the SHA-256 of their canonical text."""

    table: str
    rows: int
    sha256: str


@dataclass(frozen=True)
class CopyReport:
    source: StoreLocation
    target: StoreLocation
    tables: tuple[TableCheck, ...]  # the same on both sides
    # For each table whose ids DST's sequence gives: the highest id it has given now.
    id_floors: dict[str, int]

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.tables)

    @property
    def sha256(self) -> str:
        """One digest of the whole store: over each table's name and digest, in name order."""
        return _store_digest(self.tables)


def copy_store(
    source: StoreLocation | str,
    target: StoreLocation | str,
    *,
    batch_rows: int = BATCH_ROWS,
    after_table: AfterTable | None = None,
) -> CopyReport:
    """Copy every table of the store at ``source`` into the empty store at ``target``.

    Changes nothing unless the whole copy is made and checked. ``after_table`` is called with
    each table's name and DST's connection, inside the copy's transaction, once the table's
    rows are written (for progress, and for tests).
    """
    src_location, dst_location = location_of(source), location_of(target)
    if _same_place(src_location, dst_location):
        raise InvalidInput(f"{src_location} is both SRC and DST; copy the store somewhere else")
    if isinstance(src_location, Path) and not src_location.exists():
        raise StoreError(
            f"{src_location}: no such file. SRC must be an existing store: a SQLite file, or a "
            "postgresql:// URL."
        )
    with (
        closing(_open("SRC", src_location, create=False)) as src,
        closing(_open("DST", dst_location, create=True)) as dst,
    ):
        return _copy(src, dst, batch_rows, after_table)


def location_of(value: StoreLocation | str) -> StoreLocation:
    """A store's location as given on the command line: a file's path or a PostgreSQL URL."""
    if not isinstance(value, str):
        return value
    try:
        return parse_location(value, Path.cwd())
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None


def _same_place(a: StoreLocation, b: StoreLocation) -> bool:
    if isinstance(a, DatabaseUrl) or isinstance(b, DatabaseUrl):
        return a == b
    return a.resolve() == b.resolve()


def _open(role: str, location: StoreLocation, *, create: bool) -> StoreConnection:
    try:
        return open_store(location, create=create)
    except StoreError as exc:
        raise type(exc)(f"cannot open {role}: {exc}", cause=exc.cause) from None


def _copy(
    src: StoreConnection, dst: StoreConnection, batch_rows: int, after_table: AfterTable | None
) -> CopyReport:
    with _snapshot(src):
        tables = table_names(src)
        columns = {table: _shape(src, table).columns for table in tables}
        floors = _id_floors(src)
        with transaction(dst):
            _require_empty_and_alike(dst, columns)
            for table in tables:
                _copy_table(src, dst, table, columns[table], batch_rows)
                if after_table is not None:
                    after_table(table, dst)
            checks = _compare(src, dst, tables, batch_rows)
            id_floors = _raise_sequences(dst, floors)
    return CopyReport(src.path, dst.path, checks, id_floors)


@contextmanager
def _snapshot(conn: StoreConnection) -> Iterator[None]:
    """Every read inside sees the store as it was at the start, whoever writes meanwhile."""
    # On both, the snapshot is taken by the first read, not by BEGIN: read at once.
    with translate_errors(conn):
        if conn.dialect == "postgresql":
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            conn.execute("SELECT 1 FROM pg_class LIMIT 1").fetchone()
        else:
            conn.execute("BEGIN")
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    try:
        yield
    finally:
        # Only reads were made; a connection that failed is closed next, which ends it too.
        with suppress(Exception):
            conn.execute("ROLLBACK")


# --- Tables and their columns -----------------------------------------------------------------


@dataclass(frozen=True)
class _Shape:
    columns: tuple[str, ...]  # in alphabetical order
    key: tuple[str, ...]  # the primary key's columns, in its order; every column without one
    text: frozenset[str]  # columns of text, which sort by code point (see _ordered_select)


_PG_COLUMNS = (
    "SELECT column_name, data_type FROM information_schema.columns"
    " WHERE table_schema = current_schema() AND table_name = ?"
)
_PG_PRIMARY_KEY = (
    "SELECT k.column_name FROM information_schema.table_constraints c"
    " JOIN information_schema.key_column_usage k ON k.constraint_name = c.constraint_name"
    " AND k.table_schema = c.table_schema AND k.table_name = c.table_name"
    " WHERE c.table_schema = current_schema() AND c.table_name = ?"
    " AND c.constraint_type = 'PRIMARY KEY' ORDER BY k.ordinal_position"
)
_PG_TEXT_TYPES = frozenset({"text", "character varying", "character"})


def _shape(conn: StoreConnection, table: str) -> _Shape:
    with translate_errors(conn):
        if conn.dialect == "postgresql":
            found = [
                (str(name), str(kind) in _PG_TEXT_TYPES)
                for name, kind in conn.execute(_PG_COLUMNS, (table,)).fetchall()
            ]
            key = [str(row[0]) for row in conn.execute(_PG_PRIMARY_KEY, (table,)).fetchall()]
        else:
            info = conn.execute(f"PRAGMA table_info({_quoted(table)})").fetchall()
            found = [(str(row[1]), _sqlite_text(str(row[2]))) for row in info]
            key = [str(row[1]) for row in sorted(info, key=lambda row: int(row[5])) if row[5]]
    columns = tuple(sorted(name for name, _ in found))
    return _Shape(columns, tuple(key) or columns, frozenset(n for n, text in found if text))


def _sqlite_text(declared: str) -> bool:
    """Whether SQLite gives a column declared so text affinity (its rules 1 and 2)."""
    kind = declared.upper()
    return "INT" not in kind and any(word in kind for word in ("CHAR", "CLOB", "TEXT"))


def _quoted(name: str) -> str:
    """An identifier as both dialects quote it (``window`` is a reserved word on PostgreSQL)."""
    return '"' + name.replace('"', '""') + '"'


def _require_empty_and_alike(dst: StoreConnection, columns: dict[str, tuple[str, ...]]) -> None:
    """Refuse a DST that holds any row, or whose tables or columns differ from SRC's."""
    found = table_names(dst)
    with translate_errors(dst):
        filled = [
            table
            for table in found
            if dst.execute(f"SELECT 1 FROM {_quoted(table)} LIMIT 1").fetchone() is not None
        ]
    if filled:
        raise InvalidInput(
            f"{dst.path} is not empty (rows in {', '.join(filled)}); store copy writes only "
            "into an empty store, and changed nothing. Give a new file, an empty database, or "
            "empty this one first."
        )
    differ = sorted(set(found) ^ set(columns)) or [
        table for table in found if _shape(dst, table).columns != columns[table]
    ]
    if differ:
        raise StoreError(
            f"{dst.path}: the tables of SRC and DST differ ({', '.join(differ)}), though both "
            "have this version's schema; was one changed by hand? Nothing was copied."
        )


# --- Reading and writing rows -----------------------------------------------------------------


def _copy_table(
    src: StoreConnection, dst: StoreConnection, table: str, columns: Sequence[str], batch_rows: int
) -> None:
    select = f"SELECT {', '.join(map(_quoted, columns))} FROM {_quoted(table)}"
    try:
        _write_table(dst, table, columns, _batches(src, select, batch_rows))
    except StoreError as exc:
        raise type(exc)(
            f"copying table {table}: {exc}\nThe copy was rolled back: DST is empty, as before.",
            cause=exc.cause,
        ) from None


def _batches(conn: StoreConnection, select: str, batch_rows: int) -> Iterator[list[Row]]:
    """The rows ``select`` finds, ``batch_rows`` at a time, never all in memory."""
    with translate_errors(conn):
        if conn.dialect == "postgresql":
            # A client-side cursor would fetch the whole result at once; a server-side one
            # (which needs the snapshot's transaction) hands it over in batches.
            with _raw(conn).cursor(name="newsletter_store_copy") as cursor:
                cursor.execute(select)
                while rows := cursor.fetchmany(batch_rows):
                    yield rows
        else:
            cursor = conn.execute(select)
            while rows := cursor.fetchmany(batch_rows):
                yield rows


def _write_table(
    conn: StoreConnection, table: str, columns: Sequence[str], batches: Iterable[list[Row]]
) -> None:
    names = ", ".join(map(_quoted, columns))
    with translate_errors(conn):
        if conn.dialect == "postgresql":
            # COPY takes half the time executemany does here (bench/store_copy.py).
            with (
                _raw(conn).cursor() as cursor,
                cursor.copy(f"COPY {_quoted(table)} ({names}) FROM STDIN") as copy,
            ):
                for rows in batches:
                    for row in rows:
                        copy.write_row(row)
        else:
            marks = ", ".join("?" * len(columns))
            insert = f"INSERT INTO {_quoted(table)} ({names}) VALUES ({marks})"
            for rows in batches:
                conn.executemany(insert, rows)


def _raw(conn: StoreConnection) -> psycopg.Connection[Any]:
    from newsletter.postgres import PostgresConnection

    assert isinstance(conn, PostgresConnection)
    return conn.raw


# --- The check ------------------------------------------------------------------------------


def table_check(conn: StoreConnection, table: str, *, batch_rows: int = BATCH_ROWS) -> TableCheck:
    """Count ``table``'s rows and hash their canonical text (the module's docstring says how).

    Reads in the transaction ``conn`` is in, else in a snapshot of its own.
    """
    with _reading(conn):
        shape = _shape(conn, table)
        digest = hashlib.sha256(_JSON.encode(shape.columns).encode("utf-8") + b"\n[")
        rows = 0
        for batch in _batches(conn, _ordered_select(conn, table, shape), batch_rows):
            try:
                # One call encodes a whole batch (the encoder is C); its brackets go, so that
                # the text is the same however the rows came in batches.
                text = _JSON.encode(_canonical_rows(batch))[1:-1]
            except TypeError as exc:  # a type no table of the schema holds (bytes, say)
                raise StoreError(
                    f"{conn.path}: table {table}: cannot check a value ({exc})"
                ) from None
            digest.update(("," if rows else "").encode("utf-8") + text.encode("utf-8"))
            rows += len(batch)
        digest.update(b"]")
    return TableCheck(table, rows, digest.hexdigest())


def store_checks(conn: StoreConnection, *, batch_rows: int = BATCH_ROWS) -> tuple[TableCheck, ...]:
    """:func:`table_check` of every table, all from one moment of the store."""
    with _reading(conn):
        return tuple(table_check(conn, t, batch_rows=batch_rows) for t in table_names(conn))


@contextmanager
def _reading(conn: StoreConnection) -> Iterator[None]:
    if conn.in_transaction:
        yield
    else:
        with _snapshot(conn):
            yield


def _ordered_select(conn: StoreConnection, table: str, shape: _Shape) -> str:
    collate = ' COLLATE "C"' if conn.dialect == "postgresql" else " COLLATE BINARY"
    order = ", ".join(_quoted(k) + (collate if k in shape.text else "") for k in shape.key)
    names = ", ".join(map(_quoted, shape.columns))
    return f"SELECT {names} FROM {_quoted(table)} ORDER BY {order}"


_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_RETYPED = frozenset({bool, float})


def _canonical_rows(batch: list[Row]) -> Sequence[Sequence[Any]]:
    """``batch`` with each boolean and whole float as an integer (the rest needs no change)."""
    if _RETYPED.isdisjoint(set(map(type, itertools.chain.from_iterable(batch)))):
        return batch
    return [[_canonical(value) for value in row] for row in batch]


def _canonical(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _compare(
    src: StoreConnection, dst: StoreConnection, tables: Sequence[str], batch_rows: int
) -> tuple[TableCheck, ...]:
    """Each table's check on SRC; a StoreError naming every table that DST holds otherwise."""
    expected = [table_check(src, t, batch_rows=batch_rows) for t in tables]
    found = [table_check(dst, t, batch_rows=batch_rows) for t in tables]
    problems = [
        f"{want.table}: {want.rows} rows in SRC, {got.rows} in DST"
        if want.rows != got.rows
        else f"{want.table}: the same {want.rows} rows counted, but SHA-256 "
        f"{want.sha256[:12]} in SRC and {got.sha256[:12]} in DST"
        for want, got in zip(expected, found, strict=True)
        if want != got
    ]
    if problems:
        raise StoreError(
            f"the copy in {dst.path} does not match {src.path}: {'; '.join(problems)}. The copy "
            "was rolled back, so DST is empty as before. Please report this message: SRC holds "
            "something that the copy does not carry over faithfully."
        )
    return tuple(expected)


def _store_digest(tables: Iterable[TableCheck]) -> str:
    lines = "".join(f"{t.table} {t.sha256}\n" for t in sorted(tables, key=lambda t: t.table))
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()


# --- Id sequences ---------------------------------------------------------------------------

_PG_IDENTITY_COLUMNS = (
    "SELECT table_name, column_name FROM information_schema.columns"
    " WHERE table_schema = current_schema() AND is_identity = 'YES' ORDER BY table_name"
)
_PG_SEQUENCE = "pg_get_serial_sequence(quote_ident(?), ?)"


def _id_floors(conn: StoreConnection) -> dict[str, int]:
    """The highest id each table's sequence has given (those above are still unused)."""
    with translate_errors(conn):
        if conn.dialect == "postgresql":
            return {
                str(table): int(
                    conn.execute(
                        f"SELECT coalesce(pg_sequence_last_value({_PG_SEQUENCE}::regclass), 0)",
                        (table, column),
                    ).fetchone()[0]
                )
                for table, column in conn.execute(_PG_IDENTITY_COLUMNS).fetchall()
            }
        if not _sqlite_has_sequences(conn):
            return {}
        rows = conn.execute("SELECT name, seq FROM sqlite_sequence").fetchall()
    return {str(name): int(seq) for name, seq in rows}


def _raise_sequences(dst: StoreConnection, floors: dict[str, int]) -> dict[str, int]:
    """Make each of DST's id sequences continue above ``floors`` and every id DST holds."""
    with translate_errors(dst):
        if dst.dialect == "postgresql":
            return _raise_postgres_sequences(dst, floors)
        return _raise_sqlite_sequences(dst, floors)


def _raise_postgres_sequences(dst: StoreConnection, floors: dict[str, int]) -> dict[str, int]:
    raised = {}
    for table, column in dst.execute(_PG_IDENTITY_COLUMNS).fetchall():
        given, highest_id = dst.execute(
            f"SELECT coalesce(pg_sequence_last_value({_PG_SEQUENCE}::regclass), 0),"
            f" (SELECT coalesce(max({_quoted(column)}), 0) FROM {_quoted(table)})",
            (table, column),
        ).fetchone()
        highest = max(floors.get(table, 0), int(given), int(highest_id))
        if highest > int(given):
            dst.execute(f"SELECT setval({_PG_SEQUENCE}, ?)", (table, column, highest))
        raised[str(table)] = highest
    return raised


def _raise_sqlite_sequences(dst: StoreConnection, floors: dict[str, int]) -> dict[str, int]:
    # Inserting ids into an AUTOINCREMENT table has already raised its sequence to the highest.
    raised = {}
    autoincrement = [
        str(row[0])
        for row in dst.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND sql LIKE '%AUTOINCREMENT%'"
        ).fetchall()
    ]
    for table in autoincrement:
        row = dst.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchone()
        given = 0 if row is None else int(row[0])
        highest = max(floors.get(table, 0), given)
        if row is None and highest > 0:
            dst.execute("INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", (table, highest))
        elif highest > given:
            dst.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = ?", (highest, table))
        raised[table] = highest
    return raised


def _sqlite_has_sequences(conn: StoreConnection) -> bool:
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_sequence'"
    ).fetchone()
    return row is not None
