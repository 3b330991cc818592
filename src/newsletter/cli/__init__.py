"""The ``newsletter`` command: parses options and calls the library, nothing more."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click

from newsletter import __version__
from newsletter.errors import NewsletterError
from newsletter.settings import Settings, find_settings, load_settings


class AppContext:
    """What every command shares: the settings, read on first use."""

    def __init__(self, config: Path | None):
        self.config = config
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            path = self.config or find_settings()
            self._settings = load_settings(path)
        return self._settings


class NewsletterGroup(click.Group):
    """Turns the library's errors into click's ``Error: …`` output and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except NewsletterError as exc:
            raise click.ClickException(str(exc)) from exc


class WarningPrinter(logging.Handler):
    """Prints the library's warnings (the ``newsletter`` logger) as ``Warning: …`` on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"Warning: {record.getMessage()}", err=True)


pass_app = click.make_pass_decorator(AppContext)


@click.group(cls=NewsletterGroup)
@click.option(
    "--config",
    "-c",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Settings file to use. Default: newsletter.toml in this folder or a parent; "
    "without one, the embedded defaults.",
)
@click.version_option(__version__, prog_name="newsletter")
@click.pass_context
def main(ctx: click.Context, config: Path | None) -> None:
    """Write, preview and send a monthly research-digest newsletter."""
    ctx.obj = AppContext(config)
    library_logger = logging.getLogger("newsletter")
    if not any(isinstance(h, WarningPrinter) for h in library_logger.handlers):
        library_logger.addHandler(WarningPrinter(logging.WARNING))


def _register() -> None:
    # Imported here so that each command module can import ``main``'s helpers from this one.
    from newsletter.cli import author, events, sending, store, subscribers, unattended, web

    for command in author.COMMANDS:
        main.add_command(command)
    main.add_command(subscribers.subscribers)
    main.add_command(subscribers.audit_command)
    for command in sending.COMMANDS:
        main.add_command(command)
    main.add_command(web.serve)
    main.add_command(store.store)
    for command in unattended.COMMANDS:
        main.add_command(command)
    for command in events.COMMANDS:
        main.add_command(command)


_register()
