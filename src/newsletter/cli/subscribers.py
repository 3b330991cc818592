"""The admin's ``newsletter subscribers`` commands: options in, library calls, output out."""

from __future__ import annotations

import json
import re
import shlex
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import click

from newsletter import audit, consent, csvio, erasure, imports, store, suppressions, welcome
from newsletter.cli import AppContext, pass_app
from newsletter.english import counted
from newsletter.errors import NewsletterError, StoreError
from newsletter.store import Status, StoreConnection, Subscriber

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2})?Z?)?")
_STATUS_CHOICE = click.Choice([s.value for s in Status], case_sensitive=False)


def _open(app: AppContext, *, create: bool = False, readonly: bool = False) -> StoreConnection:
    """The store; only the commands that add subscribers create it, and those that only read
    work on a store this user cannot write."""
    conn = store.open_store(app.settings.paths.database, create=create, readonly=readonly)
    click.get_current_context().call_on_close(conn.close)
    return conn


def _warn_if_an_import_is_unfinished(conn: StoreConnection) -> None:
    """The list holds part of an import (running or interrupted): say so before showing it."""
    note = imports.note_for_readers(conn)
    if note is not None:
        click.echo(f"Warning: {note}", err=True)


def _stderr_is_terminal() -> bool:
    return sys.stderr.isatty()


@contextmanager
def _progress(total: int, label: str) -> Iterator[Callable[[int], None] | None]:
    """A progress bar on a terminal; nothing at all in a pipe or a log."""
    if not _stderr_is_terminal():
        yield None
        return
    with click.progressbar(length=total, label=label, file=sys.stderr) as bar:
        done = 0

        def advance(now: int) -> None:
            nonlocal done
            bar.update(now - done)
            done = now

        yield advance


def _command_line() -> str:
    """The admin's command with its arguments, for the consent trail of those it adds."""
    ctx = click.get_current_context()
    words = ctx.command_path.split()
    for param in ctx.command.params:
        value = ctx.params.get(param.name or "")
        if value is None or value is False or value == () or param.name == "encoding":
            continue
        if isinstance(param, click.Option):
            values = value if isinstance(value, tuple) else (value,)
            for one in values:
                words += [param.opts[0]] if one is True else [param.opts[0], str(one)]
        else:
            words += [str(v) for v in (value if isinstance(value, tuple) else (value,))]
    return shlex.join(words)


def _refuse_erased(app: AppContext, conn: StoreConnection, email: str) -> None:
    refused = erasure.refusal_check(conn, app.settings)
    if refused is None:
        return
    reason = refused(store.email_key(store.normalize_email(email)))
    if reason is not None:
        raise NewsletterError(f"{store.normalize_email(email)}: {reason}")


def _topics_text(subscriber: Subscriber) -> str:
    return "; ".join(subscriber.topics) or "(all topics)"


@click.group()
def subscribers() -> None:
    """Keep the mailing list: add, import, export, unsubscribe, and see who is on it."""


@subscribers.command()
@click.argument("email")
@click.option("--name", default="", help="The subscriber's name, used in the greeting.")
@click.option(
    "--topic",
    "topics",
    multiple=True,
    help="A topic of interest from the taxonomy; repeat for more. None means every topic.",
)
@click.option(
    "--pending",
    is_flag=True,
    help="Add as pending (awaiting double opt-in) instead of active.",
)
@click.option(
    "--welcome",
    "send_welcome",
    is_flag=True,
    help="Queue the welcome email for them (sent by `run-due` or the web app's thread).",
)
@pass_app
def add(
    app: AppContext,
    email: str,
    name: str,
    topics: tuple[str, ...],
    pending: bool,
    send_welcome: bool,
) -> None:
    """Add one subscriber; their consent trail records this command."""
    conn = _open(app, create=True)
    _refuse_erased(app, conn, email)
    added = store.add_subscriber(
        conn,
        email,
        name=name,
        topics=topics,
        status=Status.PENDING if pending else Status.ACTIVE,
        source=store.SOURCE_COMMAND,
        taxonomy=app.settings.taxonomy,
    )
    event = consent.ConsentEvent(
        consent.EVENT_ADD,
        consent.FORM_COMMAND,
        store.now_utc(),
        detail=f"by {audit.current_user()}; command: {_command_line()}",
    )
    queued = False
    with store.transaction(conn):
        consent.record(conn, added.id, event)
        if send_welcome and added.status is Status.ACTIVE:
            queued = welcome.queue(conn, app.settings, added.id)
    click.echo(f"Added {added.email} ({added.status}; topics: {_topics_text(added)}).")
    if send_welcome and not queued:
        click.echo(
            f"No welcome queued: {app.settings.welcome_path} does not exist"
            if added.status is Status.ACTIVE
            else "No welcome queued: they are pending until they confirm."
        )


@subscribers.command()
@click.argument("email")
@click.option("--yes", "-y", is_flag=True, help="Delete without asking.")
@pass_app
def remove(app: AppContext, email: str, yes: bool) -> None:
    """Delete a subscriber's record entirely.

    To stop sending to someone, use `unsubscribe`: it keeps the address on file so that no
    later import can add it back.
    """
    conn = _open(app)
    found = store.require_subscriber(conn, email)
    if not yes:
        click.confirm(
            f"Delete {found.email} ({found.status}) and forget the address? A later import "
            "could add it again; `unsubscribe` keeps it suppressed instead.",
            abort=True,
        )
    store.remove_subscriber(conn, found.id)
    audit.record(conn, "remove", f"subscriber {found.id}", 1)
    click.echo(f"Deleted {found.email}.")


@subscribers.command()
@click.argument("email")
@click.option("--yes", "-y", is_flag=True, help="Erase without asking.")
@pass_app
def erase(app: AppContext, email: str, yes: bool) -> None:
    """Erase a subscriber at their request, as the preferences page's "Erase me" does.

    Deletes the row, the consent trail, topic history and the personal data in the send
    journal, and keeps only a keyed hash of the address, so that no import adds it back.
    """
    conn = _open(app)
    found = store.require_subscriber(conn, email)
    if not yes:
        click.confirm(
            f"Erase {found.email} ({found.status}) and everything kept about them? "
            "No import can add the address back; only they can, by subscribing again.",
            abort=True,
        )
    from newsletter.tokens import Signer

    erasure.erase(conn, found.id, Signer.for_settings(app.settings), who=audit.current_user())
    click.echo(f"Erased {found.email}.")


@subscribers.command()
@click.argument("email")
@pass_app
def data(app: AppContext, email: str) -> None:
    """Print everything kept about one subscriber as JSON (to answer a data request)."""
    conn = _open(app, readonly=True)
    found = store.require_subscriber(conn, email)
    click.echo(json.dumps(erasure.data_of(conn, found.id), indent=2, ensure_ascii=False))


@subscribers.command()
@click.argument("email")
@click.option("--reason", default="by the admin", show_default=True, help="Why, for the record.")
@pass_app
def unsubscribe(app: AppContext, email: str, reason: str) -> None:
    """Stop sending to a subscriber, keeping the address suppressed."""
    conn = _open(app)
    before = store.require_subscriber(conn, email)
    after = store.set_status(conn, before.id, Status.UNSUBSCRIBED, reason, store.SOURCE_COMMAND)
    if before.status is not Status.UNSUBSCRIBED:
        audit.record(conn, "unsubscribe", f"subscriber {before.id} ({reason})", 1)
    if before.status is Status.UNSUBSCRIBED:
        click.echo(
            f"{after.email} was already unsubscribed ({after.status_changed_at}, "
            f"{after.status_reason or 'no reason given'})."
        )
    else:
        click.echo(f"Unsubscribed {after.email} (was {before.status}).")


def _topic_option(app: AppContext, topic: str | None) -> str | None:
    if topic is None:
        return None
    return store.canonical_topics([topic], app.settings.taxonomy)[0]


@subscribers.command(name="list")
@click.option("--status", type=_STATUS_CHOICE, help="Only subscribers with this status.")
@click.option("--topic", help="Only those interested in this topic (or in every topic).")
@click.option("--json", "as_json", is_flag=True, help="A JSON array of objects, for scripts.")
@pass_app
def list_(app: AppContext, status: str | None, topic: str | None, as_json: bool) -> None:
    """List subscribers in the order they were added: email, status, name, topics."""
    conn = _open(app, readonly=True)
    _warn_if_an_import_is_unfinished(conn)
    rows = store.iter_subscribers(
        conn,
        status=None if status is None else Status(status.casefold()),
        topic=_topic_option(app, topic),
    )
    if as_json:
        # Streamed element by element: the list may not fit in memory as one document.
        click.echo("[", nl=False)
        for index, subscriber in enumerate(rows):
            click.echo(
                ("," if index else "")
                + "\n  "
                + json.dumps(asdict(subscriber), ensure_ascii=False),
                nl=False,
            )
        click.echo("\n]")
        return
    for subscriber in rows:
        click.echo(
            "\t".join(
                (subscriber.email, subscriber.status, subscriber.name, "; ".join(subscriber.topics))
            )
        )


@subscribers.command()
@click.argument("email")
@pass_app
def show(app: AppContext, email: str) -> None:
    """Everything the store holds about one subscriber, with their consent trail."""
    conn = _open(app, readonly=True)
    found = store.require_subscriber(conn, email)
    fields = [
        ("email", found.email),
        ("name", found.name or "-"),
        ("status", found.status.value),
        ("topics", _topics_text(found)),
        ("source", found.source),
        ("created", found.created_at),
        ("confirmed", found.confirmed_at or "-"),
        ("status changed", found.status_changed_at),
        ("reason", found.status_reason or "-"),
        ("changed by", found.status_source),
        ("id", str(found.id)),
    ]
    for label, value in fields:
        click.echo(f"{label + ':':<16}{value}")
    events = consent.trail(conn, found.id)
    click.echo("consent:" + ("" if events else "      (no record)"))
    for event in events:
        click.echo(f"  {event.describe()}")


@subscribers.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def stats(app: AppContext, as_json: bool) -> None:
    """Counts by status and by topic, and the list's growth month by month."""
    conn = _open(app, readonly=True)
    _warn_if_an_import_is_unfinished(conn)
    result = store.stats(conn)
    if as_json:
        document = {
            "total": result.total,
            "by_status": {s.value: n for s, n in result.by_status.items()},
            "by_topic": result.by_topic,
            "all_topics": result.all_topics,
            "growth": [{"month": m, "added": a, "total": t} for m, a, t in result.growth],
        }
        click.echo(json.dumps(document, indent=2, ensure_ascii=False))
        return
    click.echo(f"Subscribers: {result.total}")
    click.echo("\nBy status")
    for status, count in result.by_status.items():
        click.echo(f"  {status.value:<14}{count:>8}")
    click.echo("\nBy topic (subscribers naming it)")
    width = max([len(t) for t in result.by_topic] + [14]) + 2
    click.echo(f"  {'(every topic)':<{width}}{result.all_topics:>8}")
    for topic, count in result.by_topic.items():
        click.echo(f"  {topic:<{width}}{count:>8}")
    click.echo("\nGrowth by month (added, running total)")
    for month, added, total in result.growth:
        click.echo(f"  {month}{added:>8}{total:>10}")


@subscribers.command(name="import")
@click.argument(
    "file", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--encoding",
    default=csvio.DEFAULT_ENCODING,
    show_default=True,
    help="The file's text encoding, e.g. cp1252 or utf-16.",
)
@click.option("--dry-run", is_flag=True, help="Report what would change; change nothing.")
@click.option("--skip-invalid", is_flag=True, help="Import the valid rows even if some are not.")
@click.option(
    "--undo-interrupted",
    is_flag=True,
    help="Undo what an interrupted import applied, instead of importing FILE.",
)
@click.option(
    "--welcome",
    "send_welcome",
    is_flag=True,
    help="Queue the welcome email for each subscriber added as active.",
)
@pass_app
def import_(
    app: AppContext,
    file: Path | None,
    encoding: str,
    dry_run: bool,
    skip_invalid: bool,
    undo_interrupted: bool,
    send_welcome: bool,
) -> None:
    """Add and update subscribers from a CSV file (columns: email,name,topics,status).

    Every row is checked first; by default one bad row means nothing is imported. An address
    that unsubscribed, bounced or complained is never made active again by an import, and
    an erased address is refused. An import that was interrupted is finished by running the
    same command again, or undone with --undo-interrupted. A `consent` column (from
    `export --consent`) restores each consent trail; nobody is welcomed without --welcome.
    """
    if undo_interrupted:
        if file is not None or dry_run or skip_invalid:
            raise click.UsageError("--undo-interrupted takes no FILE and no other option")
        conn = _open(app)
        record, kept = imports.undo_interrupted(conn)
        audit.record(conn, "import undone", record.file, record.applied)
        click.echo(f"Undid the interrupted import of {record.file} ({record.applied:,} rows).")
        if kept:
            click.echo(
                f"{kept} subscribers were changed by someone else meanwhile (an unsubscribe, "
                "new topics); those changes were kept."
            )
        return
    if file is None:
        raise click.UsageError("name the CSV FILE to import (or pass --undo-interrupted)")
    conn = _open(app, create=True)
    try:
        with _progress(file.stat().st_size, f"Importing {file.name}") as advance:
            report = csvio.import_csv(
                conn,
                file,
                app.settings.taxonomy,
                encoding=encoding,
                dry_run=dry_run,
                skip_invalid=skip_invalid,
                on_progress=advance,
                command_line=_command_line(),
                welcome=send_welcome and app.settings.welcome_path.is_file(),
                refused=erasure.refusal_check(conn, app.settings),
            )
    except KeyboardInterrupt:
        # Read through a new connection: Ctrl-C may have left this one half-way through
        # talking to a PostgreSQL server.
        conn.close()
        left = None if dry_run else imports.unfinished(_open(app, create=False))
        if left is None:
            raise click.ClickException("interrupted; the list was not changed") from None
        raise click.ClickException(f"interrupted: {imports.advice(left)}") from None
    if not dry_run:
        audit.record(
            conn,
            "import",
            f"{file.name}: {report.added} added, {report.updated} updated, "
            f"{report.rejected_count} rejected",
            report.added + report.updated,
        )
    _print_report(report)


def _print_report(report: csvio.ImportReport) -> None:
    if report.resumed is not None:
        click.echo(
            f"Finished the interrupted import of {report.resumed.file}: "
            f"{report.resumed.applied:,} of its {report.resumed.staged:,} rows had been applied "
            "before it stopped. The counts below are the whole import's."
        )
    if report.unfinished is not None:
        click.echo(f"Note: {report.unfinished.describe()}; these counts are against the list")
        click.echo("as it is now, with part of that import in it.")
    verb = "Would import" if report.dry_run else "Imported"
    click.echo(
        f"{verb} {report.path.name}: {report.added} added, {report.updated} updated, "
        f"{report.unchanged} unchanged, {report.rejected_count} rejected."
    )
    if report.kept_count:
        click.echo(
            f"{report.kept_count} kept their status: an import never reactivates an address "
            "that unsubscribed, bounced or complained."
        )
        for kept in report.kept:
            click.echo(
                f"  line {kept.line}: {kept.email} stays {kept.kept} (the file says {kept.asked})"
            )
    if report.rejected_count:
        click.echo(f"{counted(report.rejected_count, 'row')} skipped:")
        for row in report.rejected:
            click.echo(f"  line {row.line}: {row.email or '(no address)'}: {row.reason}")
    listed = len(report.kept) + len(report.rejected)
    if listed < report.kept_count + report.rejected_count:
        click.echo(f"  (the first {csvio.MAX_LISTED} of each are listed)")
    if report.ignored_columns:
        click.echo("Ignored columns: " + ", ".join(report.ignored_columns))
    if report.dry_run:
        click.echo("Dry run: nothing was changed.")


@subscribers.command(name="export")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--status",
    "statuses",
    type=_STATUS_CHOICE,
    multiple=True,
    help="Only subscribers with this status; repeat for more. Default: everyone.",
)
@click.option(
    "--consent",
    "with_consent",
    is_flag=True,
    help="Add a `consent` column: each subscriber's consent trail as JSON.",
)
@pass_app
def export(app: AppContext, file: Path, statuses: tuple[str, ...], with_consent: bool) -> None:
    """Write subscribers to a CSV file that `import` reads back unchanged.

    Cells that a spreadsheet would run as a formula are prefixed with an apostrophe. With
    --consent, an import of the file on another store restores each consent trail.
    """
    conn = _open(app, readonly=True)
    _warn_if_an_import_is_unfinished(conn)
    wanted = [Status(s.casefold()) for s in statuses]
    if wanted:
        total = sum(store.count_subscribers(conn, status=s) for s in set(wanted))
    else:
        total = store.count_subscribers(conn)
    with _progress(total, f"Exporting to {file.name}") as advance:
        written = csvio.export_csv(
            conn, file, statuses=wanted, on_progress=advance, with_consent=with_consent
        )
    try:
        audit.record(conn, "export", file.name + (" with consent" if with_consent else ""), written)
    except StoreError as exc:
        # A user who may only read the store can still export; the log cannot say so.
        click.echo(f"Warning: the export is not in the audit log ({exc})", err=True)
    noun = "subscriber" if written == 1 else "subscribers"
    click.echo(f"Exported {written} {noun} to {file}.")


@subscribers.command()
@click.option("--dry-run", is_flag=True, help="Report what would change; change nothing.")
@pass_app
def sync(app: AppContext, dry_run: bool) -> None:
    """Mark bounces, complaints and unsubscribes from the provider's suppression lists.

    Each change is printed as it is made. Safe to run again at any time: a sync that was
    stopped part-way is finished by running it again.
    """
    conn = _open(app)
    provider = app.settings.provider
    click.echo(f"Reading {provider}'s suppression lists…", err=True)
    applied: list[suppressions.SyncChange] = []

    def fetched(count: int) -> None:
        click.echo(f"  {counted(count, 'entry')} read", err=True)

    def changed(change: suppressions.SyncChange) -> None:
        applied.append(change)
        click.echo(
            f"{change.email}: {change.before} -> {change.after} ({change.reason})"
            + (" [dry run]" if dry_run else "")
        )

    try:
        report = suppressions.sync(
            conn, app.settings, dry_run=dry_run, on_fetched=fetched, on_change=changed
        )
    except (KeyboardInterrupt, NewsletterError) as exc:
        done = "would have changed" if dry_run else "changed"
        click.echo(
            f"Sync stopped after it {done} {counted(len(applied), 'subscriber')}. "
            "It is safe to run again: the next run applies the rest.",
            err=True,
        )
        if isinstance(exc, KeyboardInterrupt):
            raise NewsletterError("interrupted") from None
        raise
    verb = "would change" if dry_run else "changed"
    click.echo(
        f"{report.provider}: {counted(report.fetched, 'suppressed address')}; "
        f"{counted(len(report.changes), 'subscriber')} {verb}, "
        f"{report.already_suppressed} already suppressed, "
        f"{report.not_on_the_list} not on the list."
    )


@click.command("audit")
@click.option(
    "--since",
    default="",
    metavar="DATE",
    help="Only what happened from this date or time on (UTC), e.g. 2026-11-01.",
)
@click.option("--json", "as_json", is_flag=True, help="A JSON array of objects, for scripts.")
@pass_app
def audit_command(app: AppContext, since: str, as_json: bool) -> None:
    """Print the admin audit log: imports, exports, removals, erasures, status changes, sends."""
    if since and not _DATE.match(since):
        raise click.BadParameter(
            f"{since!r} is not a date or time such as 2026-11-01 or 2026-11-01T08:00",
            param_hint="--since",
        )
    entries = audit.entries(_open(app, readonly=True), since=since)
    if as_json:
        click.echo(json.dumps([asdict(e) for e in entries], indent=2, ensure_ascii=False))
        return
    for entry in entries:
        count = "" if entry.count is None else f"  [{entry.count:,}]"
        click.echo(f"{entry.at}  {entry.who:<12} {entry.action:<14} {entry.detail}{count}")
    if not entries:
        click.echo("(nothing recorded" + (f" since {since})" if since else ")"))
