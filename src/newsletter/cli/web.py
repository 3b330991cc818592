"""``newsletter serve`` and ``newsletter subscribers sync``: options in, library calls, output out."""

from __future__ import annotations

import click

from newsletter import store, suppressions
from newsletter.cli import AppContext, pass_app
from newsletter.english import counted
from newsletter.tokens import web_url
from newsletter.web import WebApp, make_server


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", default=8080, show_default=True, help="Port to listen on (0: any free one)."
)
@pass_app
def serve(app: AppContext, host: str, port: int) -> None:
    """Serve the unsubscribe, preferences, subscribe and confirmation pages (WSGI)."""
    web_app = WebApp(app.settings)
    server = make_server(web_app, host, port)
    click.echo(
        f"Serving on http://{host}:{server.server_port}/ (links in emails point to {web_url(app.settings)}/)"
    )
    if web_app.webhooks.sources:
        paths = ", ".join(f"/webhooks/{name}" for name in web_app.webhooks.sources)
        click.echo(f"Delivery-event webhooks: {paths} (docs/webhooks.md)")
    click.echo("Press Ctrl+C to stop. For production, run it under a WSGI server (docs/web.md).")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@click.command()
@click.option("--dry-run", is_flag=True, help="Report what would change; change nothing.")
@pass_app
def sync(app: AppContext, dry_run: bool) -> None:
    """Mark bounces, complaints and unsubscribes from the provider's suppression lists."""
    conn = store.open_store(app.settings.paths.database, create=False)
    click.get_current_context().call_on_close(conn.close)
    report = suppressions.sync(conn, app.settings, dry_run=dry_run)
    verb = "would change" if dry_run else "changed"
    for change in report.changes:
        click.echo(
            f"{change.email}: {change.before} -> {change.after} ({change.reason})"
            + (" [dry run]" if dry_run else "")
        )
    click.echo(
        f"{report.provider}: {counted(report.fetched, 'suppressed address')}; "
        f"{counted(len(report.changes), 'subscriber')} {verb}, "
        f"{report.already_suppressed} already suppressed, "
        f"{report.not_on_the_list} not on the list."
    )


def register(main: click.Group, subscribers: click.Group) -> None:
    main.add_command(serve)
    subscribers.add_command(sync)
