"""Importing subscribers from CSV and exporting them to it.

The CSV shape is ``subscribers.example.csv``'s: ``email,name,topics,status``, topics separated
by ``;`` (topic names contain commas). On import, header names are matched regardless of case
and only ``email`` is required; a column that is absent leaves the stored value alone.

An import streams the file, checks every row and stages the valid ones in a private temporary
SQLite file (duplicates within the file are found there, on disk, not in a Python set), so
memory stays flat and the store's write lock is not taken while checking. Only then does it
apply the rows, in short transactions that let the web endpoints write between them; the
store-side record that makes this all-or-nothing (finish after a crash, undo after a
failure) is newsletter.imports.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from newsletter import consent, imports
from newsletter.errors import (
    ImportRejected,
    InvalidInput,
    NewsletterError,
    Problem,
    StoreError,
    excerpt,
)
from newsletter.store import (
    SOURCE_IMPORT,
    SUPPRESSED,
    WELCOME_ISSUE,
    Status,
    StoreConnection,
    canonical_topics,
    clean_name,
    email_key,
    import_source,
    iter_subscriber_batches,
    normalize_email,
    now_utc,
    translate_errors,
)
from newsletter.taxonomy import Taxonomy

COLUMNS = ("email", "name", "topics", "status")
# Written by ``export --consent`` and read back by import: the consent trail as JSON.
CONSENT_COLUMN = "consent"
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
    # This run finished that interrupted import (its counts include what was applied before).
    resumed: imports.ImportRecord | None = None
    # A dry run found this import interrupted: the store holds part of it.
    unfinished: imports.ImportRecord | None = None
    # What the consent trail of each added subscriber says of this import: the admin's command.
    command_line: str = ""
    # Queue the welcome email for each subscriber this import adds as active.
    welcome: bool = False
    # The reason an address (by its store key) may not be imported, or None: erased ones.
    refused: Callable[[str], str | None] | None = None

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
    consent: str | None = None  # the consent column's trail, as checked JSON


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
    conn: StoreConnection,
    path: Path,
    taxonomy: Taxonomy,
    *,
    encoding: str = DEFAULT_ENCODING,
    dry_run: bool = False,
    skip_invalid: bool = False,
    on_progress: Progress | None = None,
    command_line: str = "",
    welcome: bool = False,
    refused: Callable[[str], str | None] | None = None,
) -> ImportReport:
    """Add and update subscribers from a CSV file; return what changed (or would have).

    Every row is validated. Unless ``skip_invalid``, one rejected row means nothing changes
    and ImportRejected lists every rejected row. A file that cannot be read as CSV at all
    raises ImportRejected whatever ``skip_invalid`` says. An address that unsubscribed,
    bounced or complained keeps that status even if the file says active or pending; the
    report lists each such row. ``on_progress`` receives how far the import got, in bytes of
    the file: checking the rows is the first half, applying them the second.

    The rows are checked and staged without the store's write lock, then applied in short
    transactions (newsletter.imports), so the web endpoints can write meanwhile. If applying
    fails, what was applied is undone. If the process dies instead, ImportUnfinished stops
    every later import until this same import (same file, same options) is run again, which
    finishes it, or ``imports.undo_interrupted`` undoes it.

    Each subscriber added gets an import event in their consent trail (the file name and
    ``command_line``), plus the events of the file's ``consent`` column (an export made with
    ``--consent``). ``welcome`` queues the welcome email for those added as active.
    ``refused`` gives the reason an address may not be imported (an erased one), which
    rejects its row.
    """
    path = Path(path)
    report = ImportReport(
        path=path, dry_run=dry_run, command_line=command_line, welcome=welcome, refused=refused
    )
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise InvalidInput(f"unknown encoding {encoding!r}; try utf-8, cp1252 or latin-1") from None
    fingerprint = _fingerprint(path, encoding, skip_invalid, taxonomy)
    progress = _Halves(path, on_progress)
    if dry_run:
        report.unfinished = imports.unfinished(conn)
        with _Staging() as staging:
            _stage(path, encoding, taxonomy, staging, report, progress, skip_invalid)
            _apply_staged(conn, staging, report, progress, None)
        return report
    with imports.import_lock(conn):
        record = imports.unfinished(conn)
        if record is not None and (record.fingerprint != fingerprint or record.state != "applying"):
            raise imports.refuse_because_of(record)
        with _Staging() as staging:
            _stage(path, encoding, taxonomy, staging, report, progress, skip_invalid)
            if record is None:
                options = _options(encoding, skip_invalid)
                file = str(path.resolve())
                record = imports.begin(conn, file, options, fingerprint, staging.count)
            else:
                _carry_on_from(record, report)
            _apply_or_undo(conn, staging, report, progress, record)
    return report


def _carry_on_from(record: imports.ImportRecord, report: ImportReport) -> None:
    """Start the report where the interrupted run of this import stopped."""
    report.resumed = record
    report.added, report.updated, report.unchanged = record.added, record.updated, record.unchanged
    report.kept_count = record.kept_count
    report.kept = [
        KeptStatus(int(str(line)), str(email), Status(str(kept)), Status(str(asked)))
        for line, email, kept, asked in record.kept
    ]


def _fingerprint(path: Path, encoding: str, skip_invalid: bool, taxonomy: Taxonomy) -> str:
    """What makes a re-run the same import: the file's bytes, the options and the topics."""
    digest = hashlib.sha256(repr((encoding, skip_invalid, taxonomy.topics)).encode())
    try:
        with path.open("rb") as binary:
            while chunk := binary.read(1 << 20):
                digest.update(chunk)
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot read the file ({exc.strerror})") from None
    return digest.hexdigest()


def _options(encoding: str, skip_invalid: bool) -> str:
    options = ["--skip-invalid"] if skip_invalid else []
    if encoding != DEFAULT_ENCODING:
        options += ["--encoding", encoding]
    return " ".join(options)


class _Halves:
    """Progress as bytes of the file: checking the rows is the first half, applying the second."""

    def __init__(self, path: Path, on_progress: Progress | None):
        self.size = path.stat().st_size
        self.on_progress = on_progress

    def checked(self, position: int) -> None:
        if self.on_progress is not None:
            self.on_progress(position // 2)

    def applied(self, position: int) -> None:
        if self.on_progress is not None:
            self.on_progress((self.size + position) // 2)

    def finished(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.size)


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


class _Staging:
    """The file's valid rows in a private temporary SQLite file, in line order.

    Written without the store's write lock; its unique key finds duplicates within the file
    (on disk, not in a Python set, so memory stays flat).
    """

    def __init__(self) -> None:
        self.db = sqlite3.connect("", isolation_level=None)  # "": deleted when closed
        self.count = 0
        with self.failing():
            self.db.execute("PRAGMA journal_mode = OFF")
            self.db.execute("PRAGMA synchronous = OFF")
            self.db.execute(
                "CREATE TABLE staged (line INTEGER PRIMARY KEY, email TEXT NOT NULL,"
                " key TEXT NOT NULL UNIQUE, name TEXT, topics TEXT, status TEXT,"
                " position INTEGER NOT NULL, consent TEXT)"
            )

    def __enter__(self) -> _Staging:
        return self

    def __exit__(self, *exc: object) -> None:
        self.db.close()

    @contextmanager
    def failing(self) -> Iterator[None]:
        """The staging file's errors (a full temporary folder) as StoreErrors."""
        try:
            yield
        except sqlite3.Error as exc:
            raise StoreError(
                f"cannot stage the import in the temporary folder {tempfile.gettempdir()} "
                f"({exc}); the list was not changed. Free some space there, or point TMPDIR "
                "at a folder with room, and run the command again."
            ) from None

    def add(self, rows: Sequence[_Row], position: int, report: ImportReport) -> None:
        """Stage ``rows`` (read up to byte ``position``), rejecting repeats of earlier lines."""
        with self.failing():
            self._add(rows, position, report)

    def _add(self, rows: Sequence[_Row], position: int, report: ImportReport) -> None:
        marks = ",".join("?" * len(rows))
        seen: dict[str, int] = dict(
            self.db.execute(
                f"SELECT key, line FROM staged WHERE key IN ({marks})", [r.key for r in rows]
            ).fetchall()
        )
        unique: list[_Row] = []
        for row in rows:
            if row.key in seen:
                report.reject(
                    row.line, row.email, f"duplicate of line {seen[row.key]} in this file"
                )
            else:
                seen[row.key] = row.line
                unique.append(row)
        self.db.execute("BEGIN")
        self.db.executemany(
            "INSERT INTO staged VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    row.line,
                    row.email,
                    row.key,
                    row.name,
                    None
                    if row.topics is None
                    else json.dumps(list(row.topics), ensure_ascii=False),
                    None if row.status is None else row.status.value,
                    position,
                    row.consent,
                )
                for row in unique
            ],
        )
        self.db.execute("COMMIT")
        self.count += len(unique)

    def after(self, line: int, limit: int) -> list[_Staged]:
        """Up to ``limit`` staged rows after file line ``line``, in line order."""
        with self.failing():
            return self._after(line, limit)

    def _after(self, line: int, limit: int) -> list[_Staged]:
        return [
            _Staged(*row)
            for row in self.db.execute(
                "SELECT line, email, key, name, topics, status, position, consent FROM staged"
                " WHERE line > ? ORDER BY line LIMIT ?",
                (line, limit),
            )
        ]


@dataclass(frozen=True)
class _Staged:
    line: int
    email: str
    key: str
    name: str | None
    topics: str | None  # as stored: JSON
    status: str | None
    position: int  # bytes of the file read when the row was staged
    consent: str | None = None  # the consent column's trail (JSON)


def _stage(
    path: Path,
    encoding: str,
    taxonomy: Taxonomy,
    staging: _Staging,
    report: ImportReport,
    progress: _Halves,
    skip_invalid: bool,
) -> None:
    """Check every row and stage the valid ones; ImportRejected as the file or rows require."""
    try:
        binary = path.open("rb")
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot read the file ({exc.strerror})") from None
    with binary:
        text = io.TextIOWrapper(binary, encoding=encoding, newline="")
        pending: list[_Row] = []
        for row in _parse_rows(path, text, taxonomy, report):
            pending.append(row)
            if len(pending) >= BATCH_SIZE:
                staging.add(pending, binary.tell(), report)
                pending.clear()
                progress.checked(binary.tell())
        if pending:
            staging.add(pending, binary.tell(), report)
        progress.checked(binary.tell())
    if report.rejected_count and not skip_invalid:
        progress.finished()
        raise ImportRejected(_refusal(report), _problems(report))


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
        if name in COLUMNS or name == CONSENT_COLUMN:
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
        trail = cell(CONSENT_COLUMN)
        trail = consent.to_json(consent.from_json(trail)) if trail else None
    except InvalidInput as exc:
        report.reject(line, email, str(exc))
        return None
    key = email_key(normalized)
    refusal = report.refused(key) if report.refused is not None else None
    if refusal is not None:
        report.reject(line, normalized, refusal)
        return None
    return _Row(line, normalized, key, name, topics, status, trail)


def _status(value: str | None) -> Status | None:
    if not value:
        return None
    try:
        return Status(value.casefold())
    except ValueError:
        allowed = ", ".join(s.value for s in Status)
        raise InvalidInput(f"unknown status '{value}'; use one of {allowed}") from None


def _apply_or_undo(
    conn: StoreConnection,
    staging: _Staging,
    report: ImportReport,
    progress: _Halves,
    record: imports.ImportRecord,
) -> None:
    """Apply the staged rows; if the store fails half-way, undo what this import applied."""
    try:
        _apply_staged(conn, staging, report, progress, record)
    except StoreError as failure:
        try:
            kept = imports.undo(conn, record.id)
        except StoreError as also:
            raise StoreError(
                f"{report.path}: the import stopped part-way ({failure}), and undoing it "
                f"failed too ({also}). The list holds part of the file: run "
                f"`{record.command()}` again to finish it, or "
                "`newsletter subscribers import --undo-interrupted` to undo it."
            ) from failure
        if kept:
            raise StoreError(
                f"{failure} (The import was undone, except for {kept} subscribers whom "
                "someone else changed meanwhile: their change was kept.)"
            ) from failure
        raise


def _apply_staged(
    conn: StoreConnection,
    staging: _Staging,
    report: ImportReport,
    progress: _Halves,
    record: imports.ImportRecord | None,
) -> None:
    """Apply the staged rows after the record's last line in short slices, recording each.

    Without a record (a dry run) only count what would change, writing nothing.
    """
    line = 0 if record is None else record.applied_line
    if record is None:
        while rows := staging.after(line, BATCH_SIZE):
            with translate_errors(conn):
                _apply_batch(conn, rows, report, None)
            line = rows[-1].line
            progress.applied(rows[-1].position)
        progress.finished()
        return
    done = False
    while not done:
        with imports.slice_of(conn) as deadline:
            position = 0
            while True:
                rows = staging.after(line, imports.STEP_ROWS)
                if rows:
                    _apply_batch(conn, rows, report, record.id)
                    line, position = rows[-1].line, rows[-1].position
                done = len(rows) < imports.STEP_ROWS
                if done or time.monotonic() >= deadline:
                    break
            imports.record_progress(
                conn,
                record.id,
                applied_line=line,
                counts=(report.added, report.updated, report.unchanged, report.kept_count),
                kept=[[k.line, k.email, k.kept.value, k.asked.value] for k in report.kept],
                done=done,
            )
        if position:
            progress.applied(position)
    imports.purge_undo_log(conn)
    progress.finished()


def _apply_batch(
    conn: StoreConnection,
    rows: Sequence[_Staged],
    report: ImportReport,
    import_id: int | None,
) -> None:
    """Add or update ``rows`` from the store's current state (read again in the caller's
    transaction, so an unsubscribe that arrived meanwhile is seen), and log each change for
    the undo. With no ``import_id``, count only."""
    marks = ",".join("?" * len(rows))
    keys = [row.key for row in rows]
    existing: dict[str, tuple[Any, ...]] = {
        found[0]: found
        for found in conn.execute(
            "SELECT email_key, id, name, topics, status, confirmed_at, status_changed_at,"
            f" status_reason, status_source FROM subscribers WHERE email_key IN ({marks})",
            keys,
        )
    }
    source = import_source(report.path)
    stamp = now_utc()
    inserts: list[tuple[object, ...]] = []
    updates: list[tuple[object, ...]] = []
    changes: list[imports.Change] = []
    for row in rows:
        current = existing.get(row.key)
        asked = None if row.status is None else Status(row.status)
        reason = f"import of {report.path.name}, line {row.line}"
        if current is None:
            status = asked or Status.ACTIVE
            name, topics = row.name or "", row.topics or "[]"
            inserts.append(
                (
                    row.email,
                    row.key,
                    name,
                    topics,
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
        before: imports.Before = (
            name,
            topics,
            old,
            confirmed_at,
            changed_at,
            old_reason,
            old_source,
        )
        old_status = Status(old)
        status = asked or old_status
        if old_status in SUPPRESSED and status not in SUPPRESSED:
            report.keep(row.line, row.email, old_status, status)
            status = old_status
        new_name = name if row.name is None else row.name
        new_topics = topics if row.topics is None else row.topics
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
        changes.append(
            imports.Change(
                row.line, row.key, before, status.value, changed_at, new_name, new_topics
            )
        )
    if import_id is None:
        return
    conn.executemany(
        "INSERT INTO subscribers (email, email_key, name, topics, status, source, created_at,"
        " confirmed_at, status_changed_at, status_reason, status_source)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        inserts,
    )
    imports.log_added(conn, import_id, len(inserts))
    _record_consent(conn, rows, report, {str(i[1]) for i in inserts}, stamp)
    conn.executemany(
        "UPDATE subscribers SET name = ?, topics = ?, status = ?, confirmed_at = ?,"
        " status_changed_at = ?, status_reason = ?, status_source = ? WHERE id = ?",
        updates,
    )
    imports.log_changes(conn, import_id, changes)


# --- Export --------------------------------------------------------------------------------


def _record_consent(
    conn: StoreConnection,
    rows: Sequence[_Staged],
    report: ImportReport,
    added_keys: set[str],
    stamp: str,
) -> None:
    """The consent trail of this batch: the file's own trails, and an import event (and the
    welcome, when asked) for each subscriber the batch added."""
    wanted = [row for row in rows if row.key in added_keys or row.consent]
    if not wanted:
        return
    marks = ",".join("?" * len(wanted))
    ids = {
        str(key): (int(row_id), str(status))
        for key, row_id, status in conn.execute(
            f"SELECT email_key, id, status FROM subscribers WHERE email_key IN ({marks})",
            [row.key for row in wanted],
        )
    }
    detail = f"file {report.path.name}"
    if report.command_line:
        detail += f"; command: {report.command_line}"
    imported: list[tuple[int, consent.ConsentEvent]] = []
    welcomes: list[tuple[str, int, str, str]] = []
    for row in wanted:
        row_id, status = ids[row.key]
        if row.consent:
            consent.restore(conn, row_id, consent.from_json(row.consent))
        if row.key not in added_keys:
            continue
        event = consent.ConsentEvent(
            consent.EVENT_IMPORT, consent.FORM_IMPORT, stamp, detail=f"{detail}, line {row.line}"
        )
        imported.append((row_id, event))
        if report.welcome and status == Status.ACTIVE.value:
            welcomes.append((WELCOME_ISSUE, row_id, stamp, stamp))
    # One statement each for the batch: on a database server, one round trip instead of many.
    consent.record_many(conn, imported)
    if welcomes:
        conn.executemany(
            "INSERT INTO journal (issue, subscriber_id, state, queued_at, updated_at)"
            " VALUES (?, ?, 'queued', ?, ?) ON CONFLICT (issue, subscriber_id) DO NOTHING",
            welcomes,
        )


def export_csv(
    conn: StoreConnection,
    path: Path,
    *,
    statuses: Sequence[Status] = (),
    on_progress: Progress | None = None,
    with_consent: bool = False,
) -> int:
    """Write subscribers (all, or those with one of ``statuses``) to ``path``; return how many.

    ``with_consent`` adds a ``consent`` column: each subscriber's consent trail as JSON,
    which an import puts back.

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
            writer.writerow((*COLUMNS, CONSENT_COLUMN) if with_consent else COLUMNS)
            for batch in iter_subscriber_batches(conn, status=only, batch_size=5000):
                rows = [s for s in batch if not wanted or s.status in wanted]
                writer.writerows(
                    [
                        neutralize_cell(s.email),
                        neutralize_cell(s.name),
                        neutralize_cell(f"{TOPIC_SEPARATOR} ".join(s.topics)),
                        s.status.value,
                        *([consent.to_json(consent.trail(conn, s.id))] if with_consent else []),
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
