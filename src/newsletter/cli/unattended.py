"""Running by itself: ``schedule``, ``unschedule``, ``run-due``, ``backup``, ``doctor``."""

from __future__ import annotations

from pathlib import Path

import click

from newsletter import due, schedule
from newsletter.backup import backup_store
from newsletter.cli import AppContext, pass_app
from newsletter.cli.sending import ProgressLine, print_summary
from newsletter.doctor import DoctorOptions, diagnose
from newsletter.english import counted
from newsletter.errors import InvalidInput, NewsletterError
from newsletter.settings import find_settings


@click.command("schedule")
@click.argument(
    "issue", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("--at", "at", metavar='"YYYY-MM-DD HH:MM"', help="When the send starts.")
@click.option(
    "--tz", "zone", metavar="ZONE", help="Time zone of --at (default: [schedule] timezone)."
)
@click.option("--list", "show_list", is_flag=True, help="List the scheduled sends and their state.")
@pass_app
def schedule_command(
    app: AppContext, issue: Path | None, at: str | None, zone: str | None, show_list: bool
) -> None:
    """Schedule ISSUE to be sent at a moment; `newsletter run-due` sends it then.

    The issue is checked now (as `send` checks it) and again just before it goes out.
    """
    if show_list:
        _list(app)
        return
    if issue is None or at is None:
        raise InvalidInput(
            'give an issue file and --at, e.g. schedule issues/2026-12.md --at "2026-12-01 07:00"; or --list'
        )
    made = schedule.schedule_issue(app.settings, issue, at, zone)
    click.echo(
        f"{made.issue} ({made.path}) scheduled for {made.local_due:%Y-%m-%d %H:%M} {made.timezone} "
        f"({made.due_at:%Y-%m-%d %H:%M} UTC); `newsletter run-due` must run from cron or a "
        "systemd timer (docs/deploy.md)"
    )


def _list(app: AppContext) -> None:
    rows = schedule.list_schedules(app.settings)
    if not rows:
        click.echo("nothing is scheduled")
        return
    for row in rows:
        click.echo(
            f"{row.issue}  {row.local_due:%Y-%m-%d %H:%M} {row.timezone}  {row.state}  {row.path}"
        )
        if row.reason:
            click.echo(f"    {row.reason}")


@click.command()
@click.argument("issue")
@pass_app
def unschedule(app: AppContext, issue: str) -> None:
    """Cancel the scheduled send of ISSUE (a file or YYYY-MM)."""
    gone = schedule.unschedule(app.settings, issue)
    click.echo(
        f"{gone.issue}: no longer scheduled (was {gone.local_due:%Y-%m-%d %H:%M} {gone.timezone})"
    )


@click.command("run-due")
@pass_app
def run_due(app: AppContext) -> None:
    """Do what is due now: queued confirmation and welcome emails, and scheduled sends.

    For cron or a systemd timer every few minutes. Safe to run from several places at once;
    exits 1 when something could not be sent.
    """
    report = due.run_due(app.settings, options=schedule.DueOptions(on_progress=ProgressLine()))
    sent = report.confirmations
    click.echo(
        f"confirmation emails: {sent.sent} sent, {sent.retried} to retry later, "
        f"{sent.dropped} no longer needed"
    )
    for error in sent.errors:
        click.echo(f"  {error}", err=True)
    welcomed = sent.welcome
    click.echo(
        f"welcome emails: {welcomed.sent} sent, {welcomed.deferred} to retry later, "
        f"{welcomed.failed} failed, {welcomed.waiting} waiting"
        + (
            f"; the latest issue sent to {welcomed.latest_issue_sent} of them"
            if welcomed.latest_issue_sent
            else ""
        )
    )
    for error in welcomed.errors:
        click.echo(f"  {error}", err=True)
    for item in report.sends:
        if item.report is not None:
            print_summary(item.report)
        click.echo(
            f"scheduled send of {item.issue}: {item.outcome}"
            + (f": {item.reason}" if item.reason else "")
        )
    problems = []
    if sent.errors:
        problems.append(
            "some confirmation emails could not be sent; they stay queued and are retried by "
            "the next run"
        )
    if welcomed.problem:
        problems.append(welcomed.problem)
    blocked = [item.issue for item in report.sends if item.failed]
    if blocked:
        problems.append(
            f"the scheduled send of {', '.join(blocked)} did not start (reason above; "
            "`newsletter schedule --list` shows it); fix it and the next run-due sends it"
        )
    if problems:
        raise NewsletterError("; ".join(problems))


@click.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@pass_app
def backup(app: AppContext, file: Path) -> None:
    """Copy the store to FILE, consistently, even while sends and the web run.

    Uses SQLite's online backup API (a store on PostgreSQL: `newsletter store copy`, every
    table's count and SHA-256 compared); the copy is checked with PRAGMA integrity_check and
    is one self-contained SQLite file. FILE must not exist yet.
    """
    made = backup_store(app.settings, file)
    checked = ""
    if made.copied is not None:
        tables = counted(len(made.copied.tables), "table")
        checked = f"; row counts and SHA-256 of all {tables} match {made.copied.source}"
    click.echo(
        f"{made.target}: {counted(made.size, 'byte')}, {counted(made.subscribers, 'subscriber')}, "
        f"{counted(made.journal_rows, 'journal row')}, schema version {made.schema_version}; "
        f"integrity check ok{checked}"
    )


@click.command()
@click.option(
    "--online", is_flag=True, help="Also ask the provider, DNS and the web app (reads only)."
)
@click.option(
    "--nameserver",
    metavar="HOST[:PORT]",
    help="DNS server to ask (default: [doctor] nameserver, else the system's).",
)
@pass_app
def doctor(app: AppContext, online: bool, nameserver: str | None) -> None:
    """Check what a first real send depends on; exit 1 on errors.

    Settings, the signing secret, the provider's credentials, the store; with --online also
    a harmless authenticated call to the provider, SPF/DKIM/DMARC of the From domain, and a
    one-click unsubscribe POST to the web app.
    """
    config = app.config or find_settings()
    report = diagnose(config, DoctorOptions(online=online, nameserver=nameserver or ""))
    for finding in report.findings:
        click.echo(str(finding))
    if report.errors:
        raise NewsletterError(
            f"{counted(len(report.errors), 'error')} above; a scheduled send would fail or land in spam"
        )
    if not online:
        click.echo("(run `newsletter doctor --online` to check the provider, DNS and the web app)")


COMMANDS: list[click.Command] = [schedule_command, unschedule, run_due, backup, doctor]
