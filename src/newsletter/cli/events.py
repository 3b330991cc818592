"""``newsletter report`` and ``newsletter webhooks test``: options in, library calls, output out."""

from __future__ import annotations

import json
from pathlib import Path

import click

from newsletter.cli import AppContext, pass_app
from newsletter.report import issue_report
from newsletter.status import month_of
from newsletter.webhook_settings import SOURCES
from newsletter.webhooks.samples import post_samples


@click.command()
@click.argument("issue")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--details", is_flag=True, help="List the addresses behind each count.")
@click.option(
    "--html",
    "html_file",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Also write the report as an HTML page with a chart of events by day.",
)
@pass_app
def report(
    app: AppContext, issue: str, as_json: bool, details: bool, html_file: Path | None
) -> None:
    """What became of ISSUE (a file or YYYY-MM) after the send: deliveries, bounces, complaints.

    Counts come from the providers' events (webhooks and `subscribers sync`); warns when the
    complaint rate passes 0.1 % or the bounce rate 2 %.
    """
    found = issue_report(app.settings, month_of(app.settings, issue))
    if html_file is not None:
        html_file.write_text(found.as_html(details=details), "utf-8")
    if as_json:
        click.echo(json.dumps(found.as_json(details=details), ensure_ascii=False, indent=2))
    else:
        click.echo(found.as_text(details=details))
    if html_file is not None and not as_json:
        click.echo(f"Wrote {html_file}")


@click.group()
def webhooks() -> None:
    """The providers' delivery-event webhooks (docs/webhooks.md)."""


@webhooks.command("test")
@click.argument("source", type=click.Choice(SOURCES))
@click.option("--url", required=True, help="The running app, e.g. https://news.example.org.")
@click.option(
    "--private-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="sendgrid only: the PEM private key whose public key is in [webhooks.sendgrid].",
)
@pass_app
def test(app: AppContext, source: str, url: str, private_key: Path | None) -> None:
    """Post SOURCE's sample events, signed with the configured secret, and say what the app did."""
    key = private_key.read_bytes() if private_key else None
    results = post_samples(app.settings, source, url, private_key_pem=key)
    for result in results:
        status = result.status or "—"
        click.echo(f"{result.description}: {status} {result.answer}")
    if any(result.status != 200 for result in results):
        raise click.ClickException("the app did not accept every sample (see above)")


COMMANDS: list[click.Command] = [report, webhooks]
