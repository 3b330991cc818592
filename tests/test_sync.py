"""`newsletter subscribers sync` against a loopback server answering as each provider documents."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from click.testing import CliRunner
from pytest_httpserver import HTTPServer

from newsletter import store, suppressions
from newsletter.cli import main
from newsletter.errors import ProviderConfigError, ProviderError
from newsletter.settings import Settings
from newsletter.store import Status, StoreConnection

from .conftest import write_settings
from .http_helpers import CREDENTIALS, http_settings

# The same tests on both stores (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("store_backend")

ADDRESSES = {
    "active": "active@example.net",
    "hard": "hard@example.net",
    "soft": "soft@example.net",
    "complainer": "complainer@example.net",
    "leaver": "leaver@example.net",
    "pending": "pending@example.net",
    "gone": "already-gone@example.net",
    "both": "both@example.net",
}


def provider_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, httpserver: HTTPServer, provider: str
) -> Settings:
    variable, value = CREDENTIALS[provider]
    monkeypatch.setenv(variable, value)
    return http_settings(tmp_path, provider, httpserver)


@pytest.fixture
def conn_for() -> Iterator[object]:
    opened: list[StoreConnection] = []

    def open_for(settings: Settings) -> StoreConnection:
        conn = store.open_store(settings.paths.database)
        opened.append(conn)
        for key, address in ADDRESSES.items():
            status = {"pending": Status.PENDING, "gone": Status.UNSUBSCRIBED}.get(
                key, Status.ACTIVE
            )
            store.add_subscriber(conn, address, status=status)
        return conn

    yield open_for
    for conn in opened:
        conn.close()


def statuses(conn: StoreConnection) -> dict[str, Status]:
    return {s.email: s.status for s in store.iter_subscribers(conn)}


def assert_marked(conn: StoreConnection, provider: str, soft_bounce_kept: bool = True) -> None:
    found = statuses(conn)
    assert found[ADDRESSES["active"]] is Status.ACTIVE
    assert found[ADDRESSES["hard"]] is Status.BOUNCED
    assert found[ADDRESSES["complainer"]] is Status.COMPLAINED
    assert found[ADDRESSES["leaver"]] is Status.UNSUBSCRIBED
    assert found[ADDRESSES["pending"]] is Status.UNSUBSCRIBED
    assert found[ADDRESSES["both"]] is Status.COMPLAINED  # the gravest of its two lists
    if soft_bounce_kept:
        assert found[ADDRESSES["soft"]] is Status.ACTIVE
    gone = store.require_subscriber(conn, ADDRESSES["gone"])
    assert gone.status_source == "command"  # untouched: its first unsubscribe counts
    hard = store.require_subscriber(conn, ADDRESSES["hard"])
    assert hard.status_source == f"provider:{provider}"
    assert hard.status_reason


# --- Mailgun --------------------------------------------------------------------------------


def serve_mailgun(httpserver: HTTPServer) -> None:
    auth = {"Authorization": "Basic YXBpOmtleS10ZXN0LTAxMjM0NTY3ODk="}  # api:key-test-0123456789
    lists = {
        "bounces": [
            [
                {
                    "address": ADDRESSES["hard"],
                    "code": "550",
                    "error": "No such mailbox",
                    "created_at": "Fri, 21 Oct 2011 11:02:55 UTC",
                },
                {
                    "address": ADDRESSES["soft"],
                    "code": "421",
                    "error": "Try later",
                    "created_at": "Fri, 21 Oct 2011 11:02:55 UTC",
                },
            ],
            [
                {
                    "address": ADDRESSES["both"],
                    "code": 550,
                    "error": "Gone",
                    "created_at": "Fri, 21 Oct 2011 11:02:55 UTC",
                },
                {
                    "address": "stranger@example.com",
                    "code": "550",
                    "error": "x",
                    "created_at": "Fri, 21 Oct 2011 11:02:55 UTC",
                },
            ],
        ],
        "complaints": [
            [{"address": ADDRESSES["complainer"], "created_at": "Tue, 15 Nov 2016 08:25:11 GMT"}],
            [{"address": ADDRESSES["both"], "created_at": "Tue, 15 Nov 2016 08:25:11 GMT"}],
        ],
        "unsubscribes": [
            [
                {
                    "address": ADDRESSES["leaver"],
                    "tags": ["*"],
                    "created_at": "Fri, 21 Oct 2011 11:02:55 UTC",
                }
            ],
            [
                {
                    "address": ADDRESSES["pending"],
                    "tags": ["*"],
                    "created_at": "Fri, 21 Oct 2011 11:02:55 UTC",
                },
                {
                    "address": ADDRESSES["gone"],
                    "tags": ["*"],
                    "created_at": "Fri, 21 Oct 2011 11:02:55 UTC",
                },
                {
                    "address": ADDRESSES["both"],
                    "tags": ["*"],
                    "created_at": "Fri, 21 Oct 2011 11:02:55 UTC",
                },
            ],
        ],
    }
    for name, pages in lists.items():
        path = f"/v3/example.org/{name}"
        url = httpserver.url_for(path)
        queries = [{"limit": "1000"}] + [
            {"page": "next", "address": page[-1]["address"], "limit": "1000"} for page in pages
        ]
        for index, query in enumerate(queries):
            items = pages[index] if index < len(pages) else []
            following = queries[index + 1] if index + 1 < len(queries) else query
            next_url = url + "?" + "&".join(f"{k}={v}" for k, v in following.items())
            httpserver.expect_request(
                path, method="GET", query_string=query, headers=auth
            ).respond_with_json(
                {
                    "items": items,
                    "paging": {
                        "first": url + "?page=first&limit=1000",
                        "last": url + "?page=last&limit=1000",
                        "next": next_url,
                        "previous": url + "?page=previous&limit=1000",
                    },
                }
            )


def test_mailgun_sync_follows_every_page_of_every_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, httpserver: HTTPServer, conn_for: object
) -> None:
    settings = provider_settings(tmp_path, monkeypatch, httpserver, "mailgun")
    serve_mailgun(httpserver)
    conn = conn_for(settings)  # type: ignore[operator]
    report = suppressions.sync(conn, settings)
    assert_marked(conn, "mailgun")
    assert report.not_on_the_list == 1
    assert report.already_suppressed == 1
    assert {c.email for c in report.changes} == {
        ADDRESSES[k] for k in ("hard", "complainer", "leaver", "pending", "both")
    }
    assert store.require_subscriber(conn, ADDRESSES["hard"]).status_reason == (
        "mailgun bounce 550: No such mailbox"
    )
    # Idempotent: the same lists again change nothing.
    before = list(store.iter_subscribers(conn))
    again = suppressions.sync(conn, settings)
    assert again.changes == []
    assert list(store.iter_subscribers(conn)) == before


def test_mailgun_next_page_on_another_host_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, httpserver: HTTPServer, conn_for: object
) -> None:
    settings = provider_settings(tmp_path, monkeypatch, httpserver, "mailgun")
    httpserver.expect_request("/v3/example.org/bounces").respond_with_json(
        {
            "items": [{"address": ADDRESSES["hard"], "code": "550", "error": "x"}],
            "paging": {"next": "https://attacker.example/v3/steal?page=next"},
        }
    )
    conn = conn_for(settings)  # type: ignore[operator]
    with pytest.raises(ProviderError, match="another host"):
        suppressions.sync(conn, settings)


# --- SendGrid -------------------------------------------------------------------------------


def serve_sendgrid(httpserver: HTTPServer) -> None:
    auth = {"Authorization": "Bearer SG.test-0123456789"}
    filler = [
        {
            "created": 1443651125,
            "email": f"someone{n}@elsewhere.example",
            "reason": "550 x",
            "status": "5.1.1",
        }
        for n in range(497)
    ]
    bounces = [
        {
            "created": 1443651125,
            "email": ADDRESSES["hard"],
            "reason": "550 5.1.1 unknown user",
            "status": "5.1.1",
        },
        {
            "created": 1443651125,
            "email": ADDRESSES["soft"],
            "reason": "452 mailbox full",
            "status": "4.2.2",
        },
        *filler,
        {
            "created": 1443651125,
            "email": ADDRESSES["both"],
            "reason": "550 gone",
            "status": "5.0.0",
        },
    ]
    assert len(bounces) == 500
    pages = {
        "bounces": [bounces, []],
        "spam_reports": [
            [
                {"created": 1443651141, "email": ADDRESSES["complainer"], "ip": "10.63.202.100"},
                {"created": 1443651141, "email": ADDRESSES["both"], "ip": "10.63.202.100"},
            ]
        ],
        "unsubscribes": [
            [
                {"created": 1443651141, "email": ADDRESSES["leaver"]},
                {"created": 1443651141, "email": ADDRESSES["pending"]},
                {"created": 1443651141, "email": ADDRESSES["gone"]},
            ]
        ],
    }
    for name, lists in pages.items():
        for index, page in enumerate(lists):
            httpserver.expect_request(
                f"/v3/suppression/{name}",
                method="GET",
                query_string={"limit": "500", "offset": str(index * 500)},
                headers=auth,
            ).respond_with_json(page)


def test_sendgrid_sync_reads_pages_by_offset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, httpserver: HTTPServer, conn_for: object
) -> None:
    settings = provider_settings(tmp_path, monkeypatch, httpserver, "sendgrid")
    serve_sendgrid(httpserver)
    conn = conn_for(settings)  # type: ignore[operator]
    report = suppressions.sync(conn, settings)
    assert_marked(conn, "sendgrid")
    assert report.not_on_the_list == 497
    offsets = [
        request.args.get("offset")
        for request, _ in httpserver.log
        if request.path == "/v3/suppression/bounces"
    ]
    assert offsets == ["0", "500"]


def test_a_rate_limited_page_is_fetched_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, httpserver: HTTPServer, conn_for: object
) -> None:
    settings = provider_settings(tmp_path, monkeypatch, httpserver, "sendgrid")
    httpserver.expect_ordered_request("/v3/suppression/bounces").respond_with_json(
        {"errors": [{"message": "too many requests"}]}, status=429, headers={"Retry-After": "0"}
    )
    httpserver.expect_ordered_request("/v3/suppression/bounces").respond_with_json(
        [{"created": 1, "email": ADDRESSES["hard"], "reason": "550", "status": "5.1.1"}]
    )
    httpserver.expect_ordered_request("/v3/suppression/spam_reports").respond_with_json([])
    httpserver.expect_ordered_request("/v3/suppression/unsubscribes").respond_with_json([])
    conn = conn_for(settings)  # type: ignore[operator]
    suppressions.sync(conn, settings)
    assert statuses(conn)[ADDRESSES["hard"]] is Status.BOUNCED


def test_a_refused_credential_is_an_error_naming_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, httpserver: HTTPServer, conn_for: object
) -> None:
    settings = provider_settings(tmp_path, monkeypatch, httpserver, "sendgrid")
    httpserver.expect_request("/v3/suppression/bounces").respond_with_json(
        {"errors": [{"message": "authorization required"}]}, status=401
    )
    conn = conn_for(settings)  # type: ignore[operator]
    with pytest.raises(ProviderError, match="SENDGRID_API_KEY"):
        suppressions.sync(conn, settings)
    assert statuses(conn)[ADDRESSES["hard"]] is Status.ACTIVE


# --- Postmark -------------------------------------------------------------------------------


def test_postmark_sync_reads_the_stream_dump(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, httpserver: HTTPServer, conn_for: object
) -> None:
    settings = provider_settings(tmp_path, monkeypatch, httpserver, "postmark")

    def entry(address: str, reason: str, origin: str = "Recipient") -> dict[str, str]:
        return {
            "EmailAddress": address,
            "SuppressionReason": reason,
            "Origin": origin,
            "CreatedAt": "2019-12-17T08:58:33-05:00",
        }

    httpserver.expect_request(
        "/message-streams/broadcast/suppressions/dump",
        method="GET",
        headers={"X-Postmark-Server-Token": "pm-test-0123456789"},
    ).respond_with_json(
        {
            "Suppressions": [
                entry(ADDRESSES["hard"], "HardBounce"),
                entry(ADDRESSES["complainer"], "SpamComplaint"),
                entry(ADDRESSES["leaver"], "ManualSuppression"),
                entry(ADDRESSES["pending"], "ManualSuppression", "Customer"),
                entry(ADDRESSES["gone"], "ManualSuppression"),
                entry(ADDRESSES["both"], "HardBounce"),
                entry(ADDRESSES["both"], "SpamComplaint"),
            ]
        }
    )
    conn = conn_for(settings)  # type: ignore[operator]
    suppressions.sync(conn, settings)
    assert_marked(conn, "postmark")
    assert store.require_subscriber(conn, ADDRESSES["pending"]).status_reason == (
        "postmark ManualSuppression (Customer)"
    )


# --- Resend ---------------------------------------------------------------------------------


def test_resend_sync_pages_through_contacts_with_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, httpserver: HTTPServer, conn_for: object
) -> None:
    settings = provider_settings(tmp_path, monkeypatch, httpserver, "resend")

    def contact(number: int, address: str, unsubscribed: bool) -> dict[str, object]:
        return {
            "id": f"contact-{number}",
            "email": address,
            "first_name": "",
            "last_name": "",
            "created_at": "2023-10-06 23:47:56.678+00",
            "unsubscribed": unsubscribed,
        }

    auth = {"Authorization": "Bearer re_test_0123456789"}
    httpserver.expect_request(
        "/contacts", query_string={"limit": "100"}, headers=auth
    ).respond_with_json(
        {
            "object": "list",
            "has_more": True,
            "data": [
                contact(1, ADDRESSES["active"], False),
                contact(2, ADDRESSES["leaver"], True),
            ],
        }
    )
    httpserver.expect_request(
        "/contacts", query_string={"limit": "100", "after": "contact-2"}, headers=auth
    ).respond_with_json(
        {
            "object": "list",
            "has_more": False,
            "data": [contact(3, ADDRESSES["pending"], True), contact(4, ADDRESSES["hard"], False)],
        }
    )
    conn = conn_for(settings)  # type: ignore[operator]
    report = suppressions.sync(conn, settings)
    found = statuses(conn)
    assert found[ADDRESSES["leaver"]] is Status.UNSUBSCRIBED
    assert found[ADDRESSES["pending"]] is Status.UNSUBSCRIBED
    assert found[ADDRESSES["active"]] is Status.ACTIVE
    assert found[ADDRESSES["hard"]] is Status.ACTIVE
    assert len(report.changes) == 2


# --- the command ----------------------------------------------------------------------------


def test_sync_command_dry_run_reports_and_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, httpserver: HTTPServer, conn_for: object
) -> None:
    settings = provider_settings(tmp_path, monkeypatch, httpserver, "mailgun")
    serve_mailgun(httpserver)
    conn = conn_for(settings)  # type: ignore[operator]
    before = list(store.iter_subscribers(conn))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["subscribers", "sync", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert (
        f"{ADDRESSES['hard']}: active -> bounced (mailgun bounce 550: No such mailbox) [dry run]"
        in result.output
    )
    assert "5 subscribers would change, 1 already suppressed, 1 not on the list." in result.output
    assert list(store.iter_subscribers(conn)) == before
    result = CliRunner().invoke(main, ["subscribers", "sync"])
    assert result.exit_code == 0, result.output
    assert "5 subscribers changed" in result.output
    assert_marked(conn, "mailgun")


def test_sync_with_a_provider_without_suppression_lists_says_so(tmp_path: Path) -> None:
    settings = write_settings(tmp_path)  # the outbox provider
    with (
        closing(store.open_store(settings.paths.database)) as conn,
        pytest.raises(ProviderConfigError, match="no suppression list to sync"),
    ):
        suppressions.sync(conn, settings)


def test_sync_is_defined_with_the_other_subscribers_commands() -> None:
    from newsletter.cli import subscribers as subscribers_cli
    from newsletter.cli import web as web_cli

    assert subscribers_cli.subscribers.commands["sync"] is subscribers_cli.sync
    assert not hasattr(web_cli, "sync")


# --- stopped part-way -------------------------------------------------------------------------


def _serve_many_mailgun_bounces(httpserver: HTTPServer, addresses: list[str]) -> None:
    for name in ("complaints", "unsubscribes"):
        httpserver.expect_request(f"/v3/example.org/{name}").respond_with_json(
            {"items": [], "paging": {"next": ""}}
        )
    path = "/v3/example.org/bounces"
    url = httpserver.url_for(path)
    pages = [addresses[i : i + 1000] for i in range(0, len(addresses), 1000)]
    queries = [{"limit": "1000"}] + [
        {"page": "next", "address": page[-1], "limit": "1000"} for page in pages
    ]
    for index, query in enumerate(queries):
        items = pages[index] if index < len(pages) else []
        following = queries[index + 1] if index + 1 < len(queries) else query
        httpserver.expect_request(path, query_string=query).respond_with_json(
            {
                "items": [
                    {"address": a, "code": "550", "error": "No such mailbox", "created_at": ""}
                    for a in items
                ],
                "paging": {"next": url + "?" + "&".join(f"{k}={v}" for k, v in following.items())},
            }
        )


def test_a_killed_sync_printed_what_it_applied_and_a_rerun_applies_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, httpserver: HTTPServer
) -> None:
    settings = provider_settings(tmp_path, monkeypatch, httpserver, "mailgun")
    addresses = [f"bounced{n}@example.net" for n in range(2500)]
    with closing(store.open_store(settings.paths.database)) as conn:
        for address in addresses:
            store.add_subscriber(conn, address)
    _serve_many_mailgun_bounces(httpserver, addresses)
    command = [sys.executable, "-m", "newsletter", "--config", str(settings.source)]
    with subprocess.Popen(
        [*command, "subscribers", "sync"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    ) as child:
        assert child.stdout is not None
        printed = [child.stdout.readline() for _ in range(40)]
        child.kill()
        printed += child.stdout.read().splitlines(keepends=True)
    changed_lines = {line.split(":")[0] for line in printed if " -> bounced " in line}
    with closing(store.open_store(settings.paths.database)) as conn:
        bounced = {s.email for s in store.iter_subscribers(conn, status=Status.BOUNCED)}
    # Every change it printed was made; at most the one in hand when killed was not printed.
    assert len(changed_lines) >= 40
    assert changed_lines <= bounced
    assert len(bounced - changed_lines) <= 1
    assert len(bounced) < len(addresses)

    again = CliRunner().invoke(main, ["--config", str(settings.source), "subscribers", "sync"])
    assert again.exit_code == 0, again.output
    assert f"{len(addresses) - len(bounced):,} subscribers changed" in again.output
    with closing(store.open_store(settings.paths.database)) as conn:
        assert store.count_subscribers(conn, status=Status.BOUNCED) == len(addresses)


def test_sync_interrupted_in_the_library_has_applied_exactly_what_it_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, httpserver: HTTPServer, conn_for: object
) -> None:
    settings = provider_settings(tmp_path, monkeypatch, httpserver, "mailgun")
    serve_mailgun(httpserver)
    conn = conn_for(settings)  # type: ignore[operator]
    heard: list[suppressions.SyncChange] = []

    def stop_after_two(change: suppressions.SyncChange) -> None:
        heard.append(change)
        if len(heard) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        suppressions.sync(conn, settings, on_change=stop_after_two)
    found = statuses(conn)
    assert sorted(c.email for c in heard) == sorted(
        e
        for e, s in found.items()
        if s in (Status.BOUNCED, Status.COMPLAINED)
        or (s is Status.UNSUBSCRIBED and e != ADDRESSES["gone"])
    )
    rest = suppressions.sync(conn, settings)
    assert len(rest.changes) == 5 - len(heard)
    assert_marked(conn, "mailgun")
