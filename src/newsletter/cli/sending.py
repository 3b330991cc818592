"""The monthly job: ``send`` and ``status``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from newsletter.cli import AppContext, pass_app
from newsletter.english import counted
from newsletter.errors import SendError
from newsletter.issue import WELCOME
from newsletter.rate import parse_rate
from newsletter.send import (
    UNCERTAIN_LISTED,
    Progress,
    Sender,
    SendOptions,
    SendReport,
    pending_count,
    prepare_send,
    send_test,
)
from newsletter.settings import Settings
from newsletter.status import issue_status, month_of
from newsletter.tokens import SECRET_ENV, secret_sources


class ProgressLine:
    """A progress bar with count, rate and ETA on a terminal; a plain line now and then in a pipe."""

    def __init__(self, stream: object = None, every: float = 5.0):
        self.stream = stream or sys.stderr
        self.terminal = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every = every
        self.last = 0.0

    def __call__(self, p: Progress) -> None:
        rate = p.done / p.elapsed if p.elapsed > 0 else 0.0
        left = (p.total - p.done) / rate if rate > 0 else 0.0
        text = (
            f"{p.done:,}/{p.total:,} ({rate:,.0f}/s, ETA {_duration(left)}): "
            f"{p.sent:,} sent, {p.failed:,} failed, {p.deferred:,} deferred"
        )
        if self.terminal:
            width = 24
            filled = int(width * p.done / p.total) if p.total else width
            click.echo(f"\r[{'#' * filled}{'.' * (width - filled)}] {text}", nl=False, err=True)
            if p.done >= p.total:
                click.echo("", err=True)
        elif time.monotonic() - self.last >= self.every or p.done >= p.total:
            self.last = time.monotonic()
            click.echo(text, err=True)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def print_summary(report: SendReport) -> None:
    verb = "would be sent" if report.dry_run else "sent"
    click.echo(
        f"{report.issue} via {report.provider}: {report.sent:,} {verb}, {report.failed:,} failed "
        f"permanently, {len(report.uncertain):,} uncertain, {report.deferred:,} deferred, "
        f"{report.skipped_already_sent:,} skipped as already sent"
        + (
            f", {report.left_the_list:,} left the list before their turn"
            if report.left_the_list
            else ""
        )
    )
    for subscriber_id, email, reason in report.failures[:20]:
        click.echo(f"  failed: {email or subscriber_id}: {reason}")
    if len(report.failures) > 20:
        click.echo(f"  … and {len(report.failures) - 20} more: newsletter status {report.issue}")
    if report.uncertain:
        click.echo(
            "Uncertain (handed to the provider when the last run stopped; they may or may not have "
            "it). They are not resent unless you pass --resend-uncertain:"
        )
        for entry in report.uncertain:
            click.echo(f"  uncertain: {entry.email} (subscriber {entry.subscriber_id})")
        if len(report.uncertain) >= UNCERTAIN_LISTED:
            click.echo(f"  … the list may go on: newsletter status {report.issue}")
    if report.other_senders:
        click.echo(
            "Other senders of this issue are still running: the last one to finish lists the "
            f"uncertain recipients, if any (`newsletter status {report.issue}` shows them too)."
        )
    if report.deferred:
        click.echo(
            f"{report.deferred:,} deferred by temporary failures: run the same command again to retry them."
        )
    if report.dry_run:
        click.echo(
            f"Dry run: nothing was sent and the journal was not touched. Written to {report.outbox}"
        )
    for variable in report.missing_credentials:
        click.echo(f"Note: {variable} is not set; a real send would stop before sending anything.")


def announce_secret(settings: Settings) -> None:
    """Say once, at start, which secret signs (or checks) links: two sources that differ
    make every link from one process invalid in the other."""
    sources = secret_sources(settings)
    if sources.in_use:
        click.echo(f"Signing secret: {sources.in_use}", err=True)
    if sources.conflict:
        click.echo(
            f"Warning: ${SECRET_ENV} and {sources.file} hold different secrets; "
            f"${SECRET_ENV} wins here. A process without it (e.g. the web app) would "
            "refuse these links: keep one of them (`newsletter doctor` checks).",
            err=True,
        )


@click.command()
@click.argument("issue", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--yes", is_flag=True, help="Send without asking for confirmation.")
@click.option(
    "--dry-run", is_flag=True, help="Do everything but send: payloads go to build/outbox/."
)
@click.option(
    "--to",
    "to_address",
    metavar="ADDRESS",
    help="Send one test copy to ADDRESS, outside the journal.",
)
@click.option(
    "--limit", type=click.IntRange(min=1), help="Send at most this many messages in this run."
)
@click.option("--rate", metavar="N/s", help="At most N messages a second (also [provider] rate).")
@click.option(
    "--provider",
    "provider_name",
    metavar="NAME",
    help="Use this provider instead of [provider] name.",
)
@click.option(
    "--resend-uncertain",
    is_flag=True,
    help="Resend to subscribers whose fate is unknown after a crash.",
)
@click.option("--retry-failed", is_flag=True, help="Send again to the permanently failed ones.")
@click.option(
    "--retry-budget",
    type=float,
    default=300.0,
    show_default=True,
    help="Seconds this run may spend waiting to retry temporary failures.",
)
@pass_app
def send(
    app: AppContext,
    issue: Path,
    yes: bool,
    dry_run: bool,
    to_address: str | None,
    limit: int | None,
    rate: str | None,
    provider_name: str | None,
    resend_uncertain: bool,
    retry_failed: bool,
    retry_budget: float,
) -> None:
    """Send ISSUE to every active subscriber, once.

    Checks the issue first (as `check --offline`). Every message is recorded in the journal
    before and after the provider call, so running the same command again after a crash, a
    kill or a network failure resumes: nobody who got the issue gets it twice, and the few
    whose fate is unknown are listed instead of being resent.
    """
    settings = app.settings
    announce_secret(settings)
    if to_address:
        result = send_test(settings, issue, to_address, provider=provider_name)
        if result.status != "accepted":
            raise SendError(
                f"the test copy to {to_address} was not accepted ({result.status}): {result.reason}"
            )
        click.echo(
            f"Test copy sent to {to_address} ({result.provider_message_id or 'accepted'}); not recorded in the journal."
        )
        return
    options = SendOptions(
        dry_run=dry_run,
        limit=limit,
        rate=parse_rate(rate) if rate else None,
        provider=provider_name,
        resend_uncertain=resend_uncertain,
        retry_failed=retry_failed,
        retry_budget=retry_budget,
    )
    job = prepare_send(settings, issue, options)
    to_send, already = pending_count(job)
    if limit is not None:
        to_send = min(to_send, limit)
    click.echo(
        f"{'Dry run: ' if dry_run else ''}{job.rendered.subject!r} ({job.month}) to "
        f"{counted(to_send, 'subscriber')} via {job.provider.name}"
        + (f"; {already:,} already have it" if already else "")
    )
    if not dry_run and not yes:
        if not sys.stdin.isatty():
            raise SendError("not sending without confirmation: pass --yes to send from a script")
        click.confirm("Send now?", abort=True)
    sender = Sender(job, ProgressLine())
    try:
        report = sender.run()
    except KeyboardInterrupt:
        click.echo("", err=True)
        print_summary(sender.report)
        raise SendError(
            "interrupted. The journal is consistent: run the same command to resume; "
            f"see `newsletter status {job.month}` for where it stands."
        ) from None
    except SendError:
        print_summary(sender.report)
        raise
    print_summary(report)


@click.command()
@click.argument("issue")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@pass_app
def status(app: AppContext, issue: str, as_json: bool) -> None:
    """Where the send of ISSUE (a file, YYYY-MM, or `welcome`) stands, from the journal.

    Counts by state, the failed recipients with reasons, and the uncertain ones. For
    `welcome`: the welcome emails, and why waiting ones are not sent (a missing file, errors).
    """
    month = month_of(app.settings, issue)
    found = issue_status(app.settings, month)
    if as_json:
        click.echo(json.dumps(found.as_json(), ensure_ascii=False, indent=2))
        return
    if found.problem:
        click.echo(f"Warning: {found.problem}", err=True)
    if not found.started:
        if month == WELCOME:
            click.echo(f"{month}: no welcome email has been queued yet")
        else:
            click.echo(f"{month}: no send of this issue has started")
        return
    counts = ", ".join(f"{n:,} {state.value}" for state, n in found.counts.items())
    if found.not_yet_queued is None:
        # Sent by a version that did not record the issue's topics.
        click.echo(f"{month}: {counts}")
    else:
        subscribers = counted(found.not_yet_queued, "active subscriber")
        click.echo(f"{month}: {counts}; {subscribers} not yet queued")
    for title, entries in (
        ("failed", found.failed),
        ("uncertain", found.uncertain),
        ("deferred", found.deferred),
    ):
        for entry in entries:
            reason = f": {entry.reason}" if entry.reason else ""
            click.echo(f"  {title}: {entry.email} (subscriber {entry.subscriber_id}){reason}")


COMMANDS: list[click.Command] = [send, status]
