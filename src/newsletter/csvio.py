"""Importing subscribers from CSV and exporting them to it.

The CSV shape is ``subscribers.example.csv``'s: ``email,name,topics,status``, topics separated
by ``;`` (topic names contain commas). On import, header names are matched regardless of case
and only ``email`` is required; a column that is absent leaves the stored value alone.

An import streams the file and writes in batches inside one transaction, so memory stays flat
and the store changes completely or not at all. Duplicates within the file are found through a
temporary SQLite table of the addresses seen so far (SQLite keeps it on disk when it grows),
not a Python set, for the same reason.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import os
import sqlite3
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from newsletter.errors import ImportRejected, InvalidInput, NewsletterError, Problem, excerpt
from newsletter.store import (
    SOURCE_IMPORT,
    SUPPRESSED,
    Status,
    canonical_topics,
    clean_name,
    email_key,
    import_source,
    iter_subscriber_batches,
    normalize_email,
    now_utc,
    transaction,
    translate_errors,
)
from newsletter.taxonomy import Taxonomy

COLUMNS = ("email", "name", "topics", "status")
TOPIC_SEPARATOR = ";"
DEFAULT_ENCODING = "utf-8-sig"  # reads UTF-8 with or without a byte-order mark
# A spreadsheet treats a cell that starts with one of these as a formula (OWASP, "CSV
# Injection"), so export prefixes such cells with an apostrophe.
FORMULA_TRIGGERS = frozenset("=+-@\t\r")
# Keep the report's details bounded too: counts are exact, the listed rows stop here.
MAX_LISTED = 1000
# How much of one bad cell, and of one reason, a report quotes.
_SHOWN_LIMIT = 80
_REASON_LIMIT = 300
# Below SQLite's oldest limit on host parameters (999), for the ``IN (…)`` look-ups.
BATCH_SIZE = 900

Progress = Callable[[int], None]


@dataclass(frozen=True)
class RejectedRow:
    line: int
    email: str
    reason: str


@dataclass(frozen=True)
class KeptStatus:
    """An import asked to reactivate an address that unsubscribed, bounced or complained."""

    line: int
    email: str
    kept: Status
    asked: Status


@dataclass
class ImportReport:
    path: Path
    dry_run: bool
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected_count: int = 0
    rejected: list[RejectedRow] = field(default_factory=list)
    kept_count: int = 0
    kept: list[KeptStatus] = field(default_factory=list)
    ignored_columns: list[str] = field(default_factory=list)

    def reject(self, line: int, email: str, reason: str) -> None:
        self.rejected_count += 1
        if len(self.rejected) < MAX_LISTED:
            self.rejected.append(RejectedRow(line, email, reason))

    def keep(self, line: int, email: str, kept: Status, asked: Status) -> None:
        self.kept_count += 1
        if len(self.kept) < MAX_LISTED:
            self.kept.append(KeptStatus(line, email, kept, asked))


@dataclass(frozen=True)
class _Row:
    line: int
    email: str
    key: str
    name: str | None  # None: the file has no such column
    topics: tuple[str, ...] | None
    status: Status | None


class _DryRun(Exception):
    """Raised inside the import's transaction to roll it back after a dry run."""


# --- Formula injection ---------------------------------------------------------------------


def neutralize_cell(value: str) -> str:
    """Prefix an apostrophe so a spreadsheet shows ``value`` as text, never runs it.

    Values that already look neutralised get one too, so :func:`restore_cell` can undo
    exactly what this did: names such as "'t Hooft" pass through both unchanged.
    """
    if value and (value[0] in FORMULA_TRIGGERS or _looks_neutralized(value)):
        return "'" + value
    return value


def restore_cell(value: str) -> str:
    return value[1:] if _looks_neutralized(value) else value


def _looks_neutralized(value: str) -> bool:
    return len(value) > 1 and value[0] == "'" and (value[1] in FORMULA_TRIGGERS or value[1] == "'")


# --- Import --------------------------------------------------------------------------------


def import_csv(
    conn: sqlite3.Connection,
    path: Path,
    taxonomy: Taxonomy,
    *,
    encoding: str = DEFAULT_ENCODING,
    dry_run: bool = False,
    skip_invalid: bool = False,
    on_progress: Progress | None = None,
) -> ImportReport:
    """Add and update subscribers from a CSV file; return what changed (or would have).

    Every row is validated. Unless ``skip_invalid``, one rejected row means nothing changes
    and ImportRejected lists every rejected row. A file that cannot be read as CSV at all
    raises ImportRejected whatever ``skip_invalid`` says. An address that unsubscribed,
    bounced or complained keeps that status even if the file says active or pending; the
    report lists each such row. ``on_progress`` receives the number of bytes read so far.
    """
    path = Path(path)
    report = ImportReport(path=path, dry_run=dry_run)
    try:
        binary = path.open("rb")
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot read the file ({exc.strerror})") from None
    try:
        try:
            text = io.TextIOWrapper(binary, encoding=encoding, newline="")
        except LookupError:
            raise InvalidInput(
                f"unknown encoding {encoding!r}; try utf-8, cp1252 or latin-1"
            ) from None
        try:
            with transaction(conn):
                _import_rows(conn, path, text, taxonomy, report, binary, on_progress)
                if report.rejected_count and not skip_invalid:
                    raise ImportRejected(_refusal(report), _problems(report))
                if dry_run:
                    raise _DryRun
        except _DryRun:
            pass
        finally:
            with translate_errors(conn):
                conn.execute("DROP TABLE IF EXISTS temp.import_seen")
    finally:
        binary.close()
    return report


def _refusal(report: ImportReport) -> str:
    rows = "row was" if report.rejected_count == 1 else "rows were"
    verb = "would change" if report.dry_run else "changed"
    return (
        f"{report.path}: {report.rejected_count} {rows} rejected, so the import {verb} "
        "nothing. Fix the rows below, or pass --skip-invalid to import the others."
    )


def _problems(report: ImportReport) -> list[Problem]:
    return [
        Problem(str(report.path), row.line, f"{_shown(row.email)}: {_cut(row.reason)}")
        if row.email
        else Problem(str(report.path), row.line, _cut(row.reason))
        for row in report.rejected
    ]


def _shown(value: str) -> str:
    return value if value.isprintable() and len(value) <= _SHOWN_LIMIT else excerpt(value)


def _cut(reason: str) -> str:
    # A reason may quote a cell; a binary file's cells must not flood the report.
    return reason if len(reason) <= _REASON_LIMIT else reason[:_REASON_LIMIT] + "…"


def _file_problem(path: Path, line: int, message: str) -> ImportRejected:
    return ImportRejected(
        f"{path}: the file cannot be imported; nothing was changed.",
        [Problem(str(path), line, message)],
    )


def _import_rows(
    conn: sqlite3.Connection,
    path: Path,
    text: io.TextIOWrapper,
    taxonomy: Taxonomy,
    report: ImportReport,
    binary: io.BufferedReader,
    on_progress: Progress | None,
) -> None:
    conn.execute(
        "CREATE TEMP TABLE IF NOT EXISTS import_seen"
        " (email_key TEXT PRIMARY KEY, line INTEGER NOT NULL) WITHOUT ROWID"
    )
    conn.execute("DELETE FROM temp.import_seen")
    pending: list[_Row] = []
    for row in _parse_rows(path, text, taxonomy, report):
        pending.append(row)
        if len(pending) >= BATCH_SIZE:
            _apply_batch(conn, pending, report)
            pending.clear()
            if on_progress is not None:
                on_progress(binary.tell())
    _apply_batch(conn, pending, report)
    if on_progress is not None:
        on_progress(binary.tell())


def _parse_rows(
    path: Path, text: io.TextIOWrapper, taxonomy: Taxonomy, report: ImportReport
) -> Iterator[_Row]:
    reader = csv.reader(text, strict=True)
    encoding = text.encoding
    try:
        header = next(reader, None)
        if header is None:
            raise _file_problem(
                path, 0, f"the file is empty; its first line must name the columns: {_shape()}"
            )
        columns = _header(path, header, report)
        line = reader.line_num + 1
        for cells in reader:
            first_line, line = line, reader.line_num + 1
            if not cells:
                continue  # a blank line
            if any("\x00" in c for c in cells):
                raise _file_problem(
                    path, first_line, f"contains NUL characters{_binary_hint(path)}"
                )
            row = _parse_row(first_line, cells, columns, taxonomy, report)
            if row is not None:
                yield row
    except csv.Error as exc:
        raise _file_problem(path, reader.line_num, f"not valid CSV: {exc}") from None
    except UnicodeDecodeError:
        line, byte = _undecodable(path, encoding)
        raise _file_problem(
            path,
            line,
            f"not {encoding} text (byte 0x{byte:02x}){_binary_hint(path)}",
        ) from None


def _binary_hint(path: Path) -> str:
    with path.open("rb") as binary:
        start = binary.read(4)
    if start.startswith(b"PK\x03\x04"):
        return "; this is a spreadsheet (.xlsx or .ods), not CSV: save it as 'CSV UTF-8'"
    if start[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return "; this looks like UTF-16 text: pass --encoding utf-16"
    return "; save the file as UTF-8, or name its encoding with --encoding (e.g. cp1252)"


def _undecodable(path: Path, encoding: str) -> tuple[int, int]:
    """The line and byte where ``path`` stops being ``encoding`` text.

    The text layer decodes in large chunks, so its error cannot tell the line; this scans
    again, only on the error path, in chunks so that a huge binary file stays cheap.
    """
    decoder = codecs.getincrementaldecoder(encoding)()
    newlines = 0
    with path.open("rb") as binary:
        while True:
            chunk = binary.read(1 << 16)
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as exc:
                return newlines + exc.object[: exc.start].count(b"\n") + 1, exc.object[exc.start]
            if not chunk:
                return newlines + 1, 0
            newlines += chunk.count(b"\n")


def _shape() -> str:
    return ",".join(COLUMNS)


@dataclass(frozen=True)
class _Header:
    index: dict[str, int]  # known column name -> its position
    width: int


def _header(path: Path, header: list[str], report: ImportReport) -> _Header:
    columns: dict[str, int] = {}
    for index, cell in enumerate(header):
        name = cell.strip().casefold()
        if name in columns:
            raise _file_problem(path, 1, f"the header names the column '{name}' twice")
        if name in COLUMNS:
            columns[name] = index
        else:
            report.ignored_columns.append(_shown(cell.strip()))
    if "email" not in columns:
        found = ", ".join(excerpt(c.strip(), 30) for c in header[:5]) or "nothing"
        if len(header) > 5:
            found += f" and {len(header) - 5:,} more"
        raise _file_problem(
            path,
            1,
            f"the header has no 'email' column (it has {found}); the first line must name "
            f"the columns, e.g. {_shape()}",
        )
    return _Header(columns, len(header))


def _parse_row(
    line: int,
    cells: list[str],
    header: _Header,
    taxonomy: Taxonomy,
    report: ImportReport,
) -> _Row | None:
    def cell(name: str) -> str | None:
        index = header.index.get(name)
        return None if index is None else restore_cell(cells[index].strip()).strip()

    if len(cells) != header.width:
        where = header.index["email"]
        shown = cells[where].strip() if where < len(cells) else ""
        report.reject(line, shown, f"has {len(cells)} cells, but the header has {header.width}")
        return None
    email = cell("email") or ""
    if not email:
        report.reject(line, "", "no email address")
        return None
    try:
        normalized = normalize_email(email)
        name = cell("name")
        name = None if name is None else clean_name(name)
        topics_cell = cell("topics")
        topics = (
            None
            if topics_cell is None
            else canonical_topics(topics_cell.split(TOPIC_SEPARATOR), taxonomy)
        )
        status = _status(cell("status"))
    except InvalidInput as exc:
        report.reject(line, email, str(exc))
        return None
    return _Row(line, normalized, email_key(normalized), name, topics, status)


def _status(value: str | None) -> Status | None:
    if not value:
        return None
    try:
        return Status(value.casefold())
    except ValueError:
        allowed = ", ".join(s.value for s in Status)
        raise InvalidInput(f"unknown status '{value}'; use one of {allowed}") from None


def _apply_batch(conn: sqlite3.Connection, rows: Sequence[_Row], report: ImportReport) -> None:
    if not rows:
        return
    source = import_source(report.path)
    marks = ",".join("?" * len(rows))
    keys = [row.key for row in rows]
    seen: dict[str, int] = dict(
        conn.execute(
            f"SELECT email_key, line FROM temp.import_seen WHERE email_key IN ({marks})", keys
        ).fetchall()
    )
    unique: list[_Row] = []
    for row in rows:
        if row.key in seen:
            report.reject(row.line, row.email, f"duplicate of line {seen[row.key]} in this file")
        else:
            seen[row.key] = row.line
            unique.append(row)
    conn.executemany(
        "INSERT INTO temp.import_seen (email_key, line) VALUES (?, ?)",
        [(row.key, row.line) for row in unique],
    )
    existing: dict[str, tuple[Any, ...]] = {
        found[0]: found
        for found in conn.execute(
            "SELECT email_key, id, name, topics, status, confirmed_at, status_changed_at,"
            f" status_reason, status_source FROM subscribers WHERE email_key IN ({marks})",
            keys,
        )
    }
    stamp = now_utc()
    inserts: list[tuple[object, ...]] = []
    updates: list[tuple[object, ...]] = []
    for row in unique:
        current = existing.get(row.key)
        reason = f"import of {report.path.name}, line {row.line}"
        if current is None:
            status = row.status or Status.ACTIVE
            inserts.append(
                (
                    row.email,
                    row.key,
                    row.name or "",
                    json.dumps(list(row.topics or ()), ensure_ascii=False),
                    status.value,
                    source,
                    stamp,
                    stamp if status is Status.ACTIVE else None,
                    stamp,
                    reason,
                    SOURCE_IMPORT,
                )
            )
            report.added += 1
            continue
        (_, row_id, name, topics, old, confirmed_at, changed_at, old_reason, old_source) = current
        old_status = Status(old)
        status = row.status or old_status
        if old_status in SUPPRESSED and status not in SUPPRESSED:
            report.keep(row.line, row.email, old_status, status)
            status = old_status
        new_name = name if row.name is None else row.name
        new_topics = (
            topics if row.topics is None else json.dumps(list(row.topics), ensure_ascii=False)
        )
        if (new_name, new_topics, status) == (name, topics, old_status):
            report.unchanged += 1
            continue
        report.updated += 1
        if status is not old_status:
            changed_at, old_reason, old_source = stamp, reason, SOURCE_IMPORT
            if status is Status.ACTIVE and confirmed_at is None:
                confirmed_at = stamp
        updates.append(
            (
                new_name,
                new_topics,
                status.value,
                confirmed_at,
                changed_at,
                old_reason,
                old_source,
                row_id,
            )
        )
    conn.executemany(
        "INSERT INTO subscribers (email, email_key, name, topics, status, source, created_at,"
        " confirmed_at, status_changed_at, status_reason, status_source)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        inserts,
    )
    conn.executemany(
        "UPDATE subscribers SET name = ?, topics = ?, status = ?, confirmed_at = ?,"
        " status_changed_at = ?, status_reason = ?, status_source = ? WHERE id = ?",
        updates,
    )


# --- Export --------------------------------------------------------------------------------


def export_csv(
    conn: sqlite3.Connection,
    path: Path,
    *,
    statuses: Sequence[Status] = (),
    on_progress: Progress | None = None,
) -> int:
    """Write subscribers (all, or those with one of ``statuses``) to ``path``; return how many.

    The file appears only when complete: a failed export leaves any earlier file in place.
    ``on_progress`` receives the number of rows written so far.
    """
    path = Path(path)
    wanted = set(statuses)
    only = next(iter(wanted)) if len(wanted) == 1 else None
    written = 0
    try:
        # mkstemp's owner-only permissions suit a file of personal data.
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise NewsletterError(f"{path}: cannot write there ({exc.strerror})") from None
    try:
        with open(handle, "w", encoding="utf-8", newline="") as out:
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(COLUMNS)
            for batch in iter_subscriber_batches(conn, status=only, batch_size=5000):
                rows = [s for s in batch if not wanted or s.status in wanted]
                writer.writerows(
                    [
                        neutralize_cell(s.email),
                        neutralize_cell(s.name),
                        neutralize_cell(f"{TOPIC_SEPARATOR} ".join(s.topics)),
                        s.status.value,
                    ]
                    for s in rows
                )
                written += len(rows)
                if on_progress is not None:
                    on_progress(written)
        os.replace(temporary, path)
    except OSError as exc:
        raise NewsletterError(
            f"{path}: cannot write the export ({exc.strerror}); nothing was written"
        ) from None
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return written
