"""The reader's lifecycle in headless Chromium, against `newsletter serve` in a subprocess that
is killed with SIGKILL, with a real SMTP server (aiosmtpd) receiving every email."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
from click.testing import CliRunner

from newsletter.cli import main
from newsletter.settings import Settings

from .cdp import Browser
from .smtp_servers import SinkHandler, free_port, smtp_server
from .test_lifecycle import (
    journal_rows,
    links_in,
    received,
    smtp_settings,
    text_of,
    wait_until,
    welcomes,
    with_welcome,
)
from .web_server import PUBLIC_URL, local

pytestmark = pytest.mark.browser


@contextmanager
def app_process(settings: Settings) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`newsletter serve` in its own process; yields its URL and the process (to kill)."""
    assert settings.source is not None
    port = free_port()
    command = [sys.executable, "-m", "newsletter", "--config", str(settings.source)]
    process = subprocess.Popen(
        [*command, "serve", "--port", str(port)],
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(f"{base}/subscribe", timeout=2)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise AssertionError("newsletter serve did not start") from None
                time.sleep(0.05)
        yield base, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait()


def run(settings: Settings, *args: str) -> tuple[int, str]:
    assert settings.source is not None
    result = CliRunner().invoke(main, ["--config", str(settings.source), *args])
    return result.exit_code, result.output


def confirm_link_for(handler: SinkHandler, address: str) -> str:
    wait_until(lambda: any(address in str(m["To"]) for m in received(handler)), timeout=20)
    message = next(m for m in received(handler) if address in str(m["To"]))
    found = re.search(rf"{re.escape(PUBLIC_URL)}/confirm/\S+", text_of(message))
    assert found
    return found.group(0)


def subscribe_in_the_form(chromium: Browser, base: str, address: str) -> None:
    chromium.open(f"{base}/subscribe")
    chromium.evaluate(
        f"document.getElementById('email').value = {address!r};"
        "document.getElementById('name').value = 'Zoë Lind';"
    )
    chromium.click("#subscribe")
    assert "inbox" in chromium.text("main").lower()


def press_confirm_twice(chromium: Browser, base: str, link: str) -> None:
    chromium.open(local(link, base))
    page = str(chromium.evaluate("document.documentElement.outerHTML"))
    chromium.click("#confirm-subscription")
    assert chromium.text("h1") == "You are subscribed"
    # The same page, kept open in another tab, and its button pressed again.
    form = re.search(r"<form.*?</form>", page, re.S)
    assert form is not None
    again = form.group(0).replace('action="/', f'action="{base}/')
    chromium.open("data:text/html;charset=utf-8," + quote(again))
    chromium.click("#confirm-subscription")
    assert chromium.text("h1") == "You are subscribed"


def test_subscribe_confirm_twice_kill_the_app_and_the_welcome_arrives_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The app records the welcome as due and is killed at once; `run-due` sends it, once."""
    handler = SinkHandler()
    with smtp_server(handler) as port:
        settings = smtp_settings(tmp_path, monkeypatch, port, '\nconfirmations = "run-due"')
        with_welcome(settings)
        with app_process(settings) as (base, process), Browser(width=375) as chromium:
            subscribe_in_the_form(chromium, base, "zoe@example.org")
            assert run(settings, "run-due")[0] == 0  # the confirmation email
            press_confirm_twice(chromium, base, confirm_link_for(handler, "zoe@example.org"))
            process.send_signal(signal.SIGKILL)  # right after the confirmation
            process.wait()
        assert welcomes(handler) == []
        assert [state for _, state in journal_rows(settings)] == ["queued"]
        for _ in range(2):
            code, output = run(settings, "run-due")
            assert code == 0, output
        (welcome,) = welcomes(handler)
        assert welcome["To"].addresses[0].addr_spec == "zoe@example.org"
        assert "Dear Zoë Lind," in text_of(welcome)
        code, output = run(settings, "status", "welcome")
        assert "1 sent" in output and "0 queued" in output


def test_the_app_killed_while_its_thread_hands_the_welcome_over_never_resends_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The app's own thread sends the welcome, and the kill lands while the relay holds the
    message (it answers DATA slowly): its fate is unknown, so it is never sent again by
    itself, and `status welcome` names the reader, as `status` does for an issue."""
    handler = SinkHandler(delay=1.5)
    with smtp_server(handler) as port:
        settings = smtp_settings(tmp_path, monkeypatch, port)
        with_welcome(settings)
        with app_process(settings) as (base, process), Browser(width=375) as chromium:
            subscribe_in_the_form(chromium, base, "zoe@example.org")
            press_confirm_twice(chromium, base, confirm_link_for(handler, "zoe@example.org"))
            wait_until(lambda: [s for _, s in journal_rows(settings)] == ["sending"], timeout=20)
            time.sleep(0.3)  # into the relay's DATA
            process.send_signal(signal.SIGKILL)
            process.wait()
        with app_process(settings):
            time.sleep(2.0)  # the restarted app's thread has had its chance
        # The relay never finished taking it (the client vanished before its reply).
        assert welcomes(handler) == []
        assert [state for _, state in journal_rows(settings)] == ["sending"]
        assert run(settings, "run-due")[0] == 0
        assert welcomes(handler) == []
        _, output = run(settings, "status", "welcome")
        assert "1 sending" in output
        assert "uncertain: zoe@example.org" in output


def test_download_my_data_then_erase_me_and_an_import_of_the_address_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    handler = SinkHandler()
    with smtp_server(handler) as port:
        settings = smtp_settings(tmp_path, monkeypatch, port)
        with_welcome(settings)
        with app_process(settings) as (base, _), Browser(width=375) as chromium:
            subscribe_in_the_form(chromium, base, "zoe@example.org")
            press_confirm_twice(chromium, base, confirm_link_for(handler, "zoe@example.org"))
            wait_until(lambda: len(welcomes(handler)) == 1, timeout=20)
            (welcome,) = welcomes(handler)
            (link,) = [u for u in links_in(welcome) if "/unsubscribe/" in u]

            downloads = tmp_path / "downloads"
            downloads.mkdir()
            chromium.allow_downloads(str(downloads))
            chromium.open(local(link, base))
            chromium.press("#download-data")
            wait_until(lambda: [p for p in downloads.glob("*.json")], timeout=20)
            (saved,) = downloads.glob("*.json")
            assert saved.name == f"{settings.list_id}-my-data.json"
            data = json.loads(saved.read_text("utf-8"))
            assert data["profile"]["email"] == "zoe@example.org"
            assert data["profile"]["status"] == "active"
            assert [c["event"] for c in data["consent"]] == ["subscribe", "confirm"]
            assert data["consent"][0]["ip"] == "127.0.0.0/24"
            assert "HeadlessChrome" in data["consent"][0]["user_agent"]
            assert [(s["issue"], s["state"]) for s in data["emails_sent"]] == [("welcome", "sent")]

            chromium.click("#erase-me")
            assert chromium.text("h1") == "Erase everything about you?"
            with closing(sqlite3.connect(settings.paths.database)) as conn:
                assert conn.execute("SELECT count(*) FROM subscribers").fetchone()[0] == 1
            chromium.click("#confirm-erase")
            assert chromium.text("#outcome") == "Your data is erased"
        with closing(sqlite3.connect(settings.paths.database)) as conn:
            assert conn.execute("SELECT count(*) FROM subscribers").fetchone()[0] == 0
            assert conn.execute("SELECT count(*) FROM consent_events").fetchone()[0] == 0
        again = tmp_path / "again.csv"
        again.write_text("email,name\nzoe@example.org,Zoë\n", "utf-8")
        code, output = run(settings, "subscribers", "import", str(again))
        assert code == 1
        assert "zoe@example.org: this address was erased at its owner's request" in output
        with closing(sqlite3.connect(settings.paths.database)) as conn:
            assert conn.execute("SELECT count(*) FROM subscribers").fetchone()[0] == 0
