"""``newsletter serve``: options in, library calls, output out."""

from __future__ import annotations

import click

from newsletter.cli import AppContext, pass_app
from newsletter.cli.sending import announce_secret
from newsletter.errors import NewsletterError
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
    announce_secret(app.settings)
    web_app = WebApp(app.settings)
    try:
        server = make_server(web_app, host, port)
    except OSError as exc:
        web_app.close()
        raise NewsletterError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); is another server using "
            "that port? Choose another with --port."
        ) from None
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
        # Sends the confirmations its requests queued, on the way out.
        web_app.close()
