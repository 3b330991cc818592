"""Sync as part of the provider contract, recording into the same event log as the webhooks."""

from __future__ import annotations

import textwrap
from contextlib import closing
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer

from newsletter import store, suppressions
from newsletter.store import Status

from .conftest import write_settings
from .test_sync import ADDRESSES, conn_for, provider_settings, serve_mailgun

# The same tests on both stores (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("store_backend")

__all__ = ["conn_for"]  # the fixture, used by name


def test_sync_records_each_entry_once_in_the_event_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, httpserver: HTTPServer, conn_for: object
) -> None:
    settings = provider_settings(tmp_path, monkeypatch, httpserver, "mailgun")
    serve_mailgun(httpserver)
    conn = conn_for(settings)  # type: ignore[operator]
    suppressions.sync(conn, settings)
    rows = conn.execute(
        "SELECT provider, kind, email, via, issue FROM delivery_events ORDER BY email"
    ).fetchall()
    assert ("mailgun", "hard_bounce", ADDRESSES["hard"], "sync", None) in rows
    assert ("mailgun", "complaint", ADDRESSES["both"], "sync", None) in rows
    assert ("mailgun", "unsubscribe", ADDRESSES["leaver"], "sync", None) in rows
    assert all(email != ADDRESSES["soft"] for _, _, email, _, _ in rows)  # a 4xx is left alone
    suppressions.sync(conn, settings)
    assert conn.execute("SELECT count(*) FROM delivery_events").fetchone()[0] == len(rows)


def test_a_dry_run_records_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, httpserver: HTTPServer, conn_for: object
) -> None:
    settings = provider_settings(tmp_path, monkeypatch, httpserver, "mailgun")
    serve_mailgun(httpserver)
    conn = conn_for(settings)  # type: ignore[operator]
    suppressions.sync(conn, settings, dry_run=True)
    assert conn.execute("SELECT count(*) FROM delivery_events").fetchone()[0] == 0


def test_a_third_party_provider_offers_sync_through_its_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A package installed beside newsletter: its module and its entry point, as pip leaves them.
    site = tmp_path / "site"
    site.mkdir()
    (site / "acme_mail.py").write_text(
        textwrap.dedent(
            """
            from newsletter.providers.base import Provider, Suppression
            from newsletter.store import Status

            class AcmeProvider(Provider):
                name = "acme"

                def send_batch(self, messages):
                    return []

                def suppressions(self):
                    yield Suppression("reader@example.net", Status.COMPLAINED, "acme complaint")
            """
        ),
        "utf-8",
    )
    info = site / "acme_mail-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-mail\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[newsletter.providers]\nacme = acme_mail:AcmeProvider\n"
    )
    monkeypatch.syspath_prepend(str(site))
    settings = write_settings(tmp_path, '[provider]\nname = "acme"\n')
    with closing(store.open_store(settings.paths.database)) as conn:
        store.add_subscriber(conn, "reader@example.net")
        report = suppressions.sync(conn, settings)
        assert [c.after for c in report.changes] == [Status.COMPLAINED]
        assert store.require_subscriber(conn, "reader@example.net").status is Status.COMPLAINED
        assert conn.execute("SELECT provider, kind FROM delivery_events").fetchall() == [
            ("acme", "complaint")
        ]
