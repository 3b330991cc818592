"""`newsletter backup`: a consistent copy while a real send and real web unsubscribes write."""

from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from newsletter.backup import backup_store
from newsletter.cli import main
from newsletter.errors import StoreError
from newsletter.tokens import Signer
from newsletter.web import WebApp

from .sending_helpers import make_folder, run_send
from .smtp_servers import SinkHandler, smtp_server
from .web_server import serving

READERS = 300
UNSUBSCRIBERS = range(201, 297)  # 96: twelve for each of 8 clients


def _snapshot(database: Path) -> tuple[dict[int, str], dict[int, str]]:
    """(subscriber id -> status, subscriber id -> journal state) as committed right now."""
    with closing(sqlite3.connect(database)) as conn:
        statuses = dict(conn.execute("SELECT id, status FROM subscribers").fetchall())
        journal = dict(conn.execute("SELECT subscriber_id, state FROM journal").fetchall())
    return statuses, journal


def test_backup_while_a_send_and_8_web_unsubscribes_run_holds_everything_committed_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NEWSLETTER_SECRET", raising=False)
    handler = SinkHandler(delay=0.01, keep_content=False)
    with smtp_server(handler) as port:
        settings, issue = make_folder(
            tmp_path,
            f'[provider]\nname = "smtp"\nhost = "127.0.0.1"\nport = {port}\nsecurity = "none"\n'
            f'batch_size = 5\n[web]\nurl = "https://news.example.org"\n',
            READERS,
        )
        signer = Signer.for_settings(settings)
        sending = threading.Thread(target=run_send, args=(settings, issue), daemon=True)
        with serving(WebApp(settings)) as base:
            answers: list[int] = []

            def unsubscribe(ids: list[int]) -> None:
                with requests.Session() as session:
                    for subscriber_id in ids:
                        token = signer.unsubscribe_token(subscriber_id)
                        reply = session.post(
                            f"{base}/unsubscribe/{token}",
                            data="List-Unsubscribe=One-Click",
                            headers={"Content-Type": "application/x-www-form-urlencoded"},
                            timeout=30,
                        )
                        answers.append(reply.status_code)
                        time.sleep(0.02)  # people, not a flood: spread over the backup

            ids = list(UNSUBSCRIBERS)
            clients = [threading.Thread(target=unsubscribe, args=(ids[n::8],)) for n in range(8)]
            sending.start()
            while handler.count < 40:
                time.sleep(0.005)
            for client in clients:
                client.start()
            while len(answers) < 20:
                time.sleep(0.005)
            before = _snapshot(settings.paths.database)
            made = backup_store(settings, tmp_path / "copy.db")
            after = _snapshot(settings.paths.database)
            for client in clients:
                client.join(60)
        sending.join(120)

    assert answers == [200] * len(UNSUBSCRIBERS)
    # The backup really ran in the middle of both: things changed before and after it.
    assert 0 < sum(s == "unsubscribed" for s in before[0].values()) < len(UNSUBSCRIBERS)
    assert before[1] != after[1] or before[0] != after[0]
    copy = tmp_path / "copy.db"
    assert not list(tmp_path.glob(".copy.db.partial-*"))
    assert not (tmp_path / "copy.db-wal").exists()
    with closing(sqlite3.connect(f"{copy.as_uri()}?mode=ro", uri=True)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
        statuses = dict(conn.execute("SELECT id, status FROM subscribers").fetchall())
        journal = dict(conn.execute("SELECT subscriber_id, state FROM journal").fetchall())
    assert made.subscribers == len(statuses) == READERS
    for subscriber_id, status in before[0].items():
        if status == "unsubscribed":
            assert statuses[subscriber_id] == "unsubscribed", subscriber_id
    for subscriber_id, state in before[1].items():
        assert subscriber_id in journal, subscriber_id
        if state in ("sent", "failed"):
            assert journal[subscriber_id] == state, subscriber_id
    assert sum(s == "sent" for s in journal.values()) >= sum(
        s == "sent" for s in before[1].values()
    )


def test_backup_never_overwrites_and_the_cli_reports_the_copy(tmp_path: Path) -> None:
    settings, _ = make_folder(tmp_path, '[provider]\nname = "null"\n', 3)
    runner = CliRunner()
    config = ["--config", str(tmp_path / "newsletter.toml")]
    made = runner.invoke(main, [*config, "backup", str(tmp_path / "b.db")])
    assert made.exit_code == 0, made.output
    assert "3 subscribers, 0 journal rows" in made.output and "integrity check ok" in made.output
    again = runner.invoke(main, [*config, "backup", str(tmp_path / "b.db")])
    assert again.exit_code == 1 and "never overwrites" in again.output
    with pytest.raises(StoreError, match="no such folder"):
        backup_store(settings, tmp_path / "missing" / "b.db")
