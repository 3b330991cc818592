"""A newsletter folder with subscribers, ready to send, for the send tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from newsletter.send import Progress, Sender, SendOptions, SendReport, prepare_send
from newsletter.settings import Settings, load_settings
from newsletter.store import Status, add_subscriber, open_store

from .conftest import VALID_ISSUE

SECRET = "a-test-secret-that-is-long-enough"


def plain_smtp(port: int, connections: int) -> str:
    """The [provider] table of an SMTP relay on loopback without TLS (the tests' aiosmtpd)."""
    return (
        f'[provider]\nname = "smtp"\nhost = "127.0.0.1"\nport = {port}\n'
        f'security = "none"\nconnections = {connections}\n'
    )


def make_folder(
    root: Path, provider: str, count: int, *, statuses: dict[int, Status] | None = None
) -> tuple[Settings, Path]:
    """``count`` subscribers reader1@… readerN@… (all active unless ``statuses`` says otherwise)."""
    (root / "issues").mkdir(parents=True, exist_ok=True)
    issue = root / "issues" / "2026-10.md"
    issue.write_text(VALID_ISSUE, "utf-8")
    (root / ".newsletter-secret").write_text(SECRET, "utf-8")
    (root / ".newsletter-secret").chmod(0o600)
    (root / "newsletter.toml").write_text(provider, "utf-8")
    settings = load_settings(root / "newsletter.toml")
    conn = open_store(settings.paths.database)
    try:
        for n in range(1, count + 1):
            status = (statuses or {}).get(n, Status.ACTIVE)
            add_subscriber(conn, f"reader{n}@example.net", name=f"Reader {n}", status=status)
    finally:
        conn.close()
    return settings, issue


def run_send(
    settings: Settings,
    issue: Path,
    options: SendOptions | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> SendReport:
    """A send as `newsletter send --yes` runs it: prepare (check, render), then run."""
    return Sender(prepare_send(settings, issue, options or SendOptions()), on_progress).run()
