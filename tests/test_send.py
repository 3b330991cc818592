from __future__ import annotations

import email
import email.policy
import json
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from newsletter.cli import main
from newsletter.errors import IssueFileError, SendError, TokenError
from newsletter.journal import JournalState
from newsletter.rate import TokenBucket, parse_rate
from newsletter.send import SendOptions
from newsletter.status import issue_status
from newsletter.store import Status, add_subscriber, open_store, set_status

from .sending_helpers import SECRET, make_folder, run_send
from .smtp_servers import SinkHandler, smtp_server

# The same tests on both stores (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("store_backend")

NULL = '[provider]\nname = "null"\nbatch_size = 7\n'


def _no_sleep(seconds: float) -> None:
    pass


def test_a_send_reaches_every_active_subscriber_once_and_a_rerun_sends_nothing(
    tmp_path: Path,
) -> None:
    statuses = {3: Status.UNSUBSCRIBED, 4: Status.BOUNCED, 5: Status.PENDING}
    settings, issue = make_folder(tmp_path, NULL, 30, statuses=statuses)
    report = run_send(settings, issue, SendOptions())
    assert (report.sent, report.failed, report.deferred, report.uncertain) == (27, 0, 0, [])
    status = issue_status(settings, "2026-10")
    assert status.counts[JournalState.SENT] == 27
    again = run_send(settings, issue, SendOptions())
    assert (again.sent, again.skipped_already_sent, again.to_send) == (0, 27, 0)


def test_a_new_subscriber_gets_the_issue_on_the_next_run(tmp_path: Path) -> None:
    settings, issue = make_folder(tmp_path, NULL, 5)
    run_send(settings, issue, SendOptions())
    conn = open_store(settings.paths.database)
    from newsletter.store import add_subscriber

    add_subscriber(conn, "late@example.net")
    conn.close()
    assert run_send(settings, issue, SendOptions()).sent == 1


def test_limit_sends_part_of_the_list_and_the_next_run_the_rest(tmp_path: Path) -> None:
    settings, issue = make_folder(tmp_path, NULL, 20)
    assert run_send(settings, issue, SendOptions(limit=8)).sent == 8
    assert run_send(settings, issue, SendOptions()).sent == 12


def test_smtp_send_delivers_one_copy_each_with_its_own_unsubscribe_link(tmp_path: Path) -> None:
    handler = SinkHandler()
    with smtp_server(handler) as port:
        provider = f'[provider]\nname = "smtp"\nhost = "127.0.0.1"\nport = {port}\nsecurity = "none"\nconnections = 3\n'
        settings, issue = make_folder(tmp_path, provider, 12)
        report = run_send(settings, issue, SendOptions())
    assert report.sent == 12
    recipients = sorted(r.rcpt_tos[0] for r in handler.received)
    assert recipients == sorted(f"reader{n}@example.net" for n in range(1, 13))
    links = set()
    for received in handler.received:
        message = email.message_from_bytes(received.content, policy=email.policy.default)
        links.add(message["List-Unsubscribe"])
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert len(links) == 12  # one signed link per subscriber


def test_permanent_smtp_refusals_are_recorded_and_not_retried(tmp_path: Path) -> None:
    handler = SinkHandler(
        rcpt_replies={"reader2@": "550 5.1.1 No such user", "reader5@": "552 5.2.2 Mailbox full"}
    )
    with smtp_server(handler) as port:
        provider = (
            f'[provider]\nname = "smtp"\nhost = "127.0.0.1"\nport = {port}\nsecurity = "none"\n'
        )
        settings, issue = make_folder(tmp_path, provider, 6)
        report = run_send(settings, issue, SendOptions())
        assert (report.sent, report.failed) == (4, 2)
        assert sorted(e for _, e, _ in report.failures) == [
            "reader2@example.net",
            "reader5@example.net",
        ]
        assert "550" in dict((e, r) for _, e, r in report.failures)["reader2@example.net"]
        before = handler.count
        again = run_send(settings, issue, SendOptions())
        assert (again.sent, handler.count) == (0, before)  # nothing retried
        retried = run_send(settings, issue, SendOptions(retry_failed=True))
        assert retried.failed == 2 and handler.count == before  # refused again at RCPT


def test_temporary_smtp_failures_are_retried_with_backoff(tmp_path: Path) -> None:
    class Flaky(SinkHandler):
        attempts = 0

        async def handle_RCPT(
            self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
        ) -> str:
            if "reader3@" in address:
                Flaky.attempts += 1
                if Flaky.attempts < 3:
                    return "451 4.3.0 Try again later"
            return await super().handle_RCPT(server, session, envelope, address, options)

    handler = Flaky()
    waits: list[float] = []
    with smtp_server(handler) as port:
        provider = (
            f'[provider]\nname = "smtp"\nhost = "127.0.0.1"\nport = {port}\nsecurity = "none"\n'
        )
        settings, issue = make_folder(tmp_path, provider, 4)
        report = run_send(settings, issue, SendOptions(sleep=waits.append))
    assert report.sent == 4 and report.deferred == 0
    assert Flaky.attempts == 3 and len(waits) == 2
    assert 0.5 <= waits[0] <= 1.0 and 1.0 <= waits[1] <= 2.0  # exponential, with jitter


def test_a_subscriber_who_leaves_mid_send_is_not_sent_to(tmp_path: Path) -> None:
    settings, issue = make_folder(tmp_path, NULL, 30)
    seen: list[int] = []

    def unsubscribe_reader_25(progress: Any) -> None:
        seen.append(progress.done)
        if len(seen) == 1:
            conn = open_store(settings.paths.database)
            set_status(conn, "reader25@example.net", Status.UNSUBSCRIBED, "clicked the link")
            conn.close()

    from newsletter.send import Sender, prepare_send

    sender = Sender(prepare_send(settings, issue, SendOptions()), unsubscribe_reader_25)
    report = sender.run()
    assert report.sent == 29 and report.left_the_list == 1
    conn = open_store(settings.paths.database)
    states = dict(conn.execute("SELECT subscriber_id, state FROM journal").fetchall())
    conn.close()
    assert 25 not in states or states[25] != "sent"


def test_a_name_with_a_line_break_fails_that_subscriber_only(tmp_path: Path) -> None:
    settings, issue = make_folder(tmp_path, NULL, 3)
    conn = open_store(settings.paths.database)
    conn.execute("UPDATE subscribers SET name = 'Eve\r\nBcc: all@example.net' WHERE id = 2")
    conn.close()
    report = run_send(settings, issue, SendOptions())
    assert report.sent == 2 and report.failed == 1
    assert "line break" in report.failures[0][2] or "CR" in report.failures[0][2]


def test_no_signing_secret_stops_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NEWSLETTER_SECRET", raising=False)
    settings, issue = make_folder(tmp_path, NULL, 3)
    (tmp_path / ".newsletter-secret").unlink()
    with pytest.raises(TokenError, match="no secret for signing"):
        run_send(settings, issue, SendOptions())
    assert issue_status(settings, "2026-10").counts[JournalState.QUEUED] == 0


def test_an_issue_with_errors_is_not_sent(tmp_path: Path) -> None:
    settings, issue = make_folder(tmp_path, NULL, 3)
    issue.write_text(
        issue.read_text("utf-8").replace("## Practice Implications\nNotice", "Notice"), "utf-8"
    )
    with pytest.raises(IssueFileError, match="Practice Implications"):
        run_send(settings, issue, SendOptions())


# --- HTTP providers against a loopback server ---------------------------------------------


@pytest.fixture
def resend_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("RESEND_API_KEY", "re_test_key_123")
    yield


def _resend_settings(server: HTTPServer, extra: str = "") -> str:
    return f'[provider]\nname = "resend"\nbase_url = "{server.url_for("")}"\ntimeout = 2\n{extra}'


def _accept(request: Request) -> Response:
    batch = json.loads(request.data)
    data = [{"id": f"re-{i}"} for i in range(len(batch))]
    return Response(json.dumps({"data": data}), status=200, content_type="application/json")


def test_429_with_retry_after_is_honoured(
    tmp_path: Path, httpserver: HTTPServer, resend_env: None
) -> None:
    calls = {"n": 0}

    def handler(request: Request) -> Response:
        calls["n"] += 1
        if calls["n"] == 1:
            return Response(
                '{"name":"rate_limit_exceeded"}', status=429, headers={"Retry-After": "7"}
            )
        return _accept(request)

    httpserver.expect_request("/emails/batch", method="POST").respond_with_handler(handler)
    settings, issue = make_folder(tmp_path, _resend_settings(httpserver), 5)
    waits: list[float] = []
    report = run_send(settings, issue, SendOptions(sleep=waits.append))
    assert report.sent == 5 and waits and waits[0] >= 7


def test_a_provider_that_fails_every_call_stops_the_send(
    tmp_path: Path, httpserver: HTTPServer, resend_env: None
) -> None:
    httpserver.expect_request("/emails/batch").respond_with_data("upstream down", status=503)
    settings, issue = make_folder(tmp_path, _resend_settings(httpserver, "batch_size = 2\n"), 50)
    with pytest.raises(
        SendError, match=r"accepted nothing in 6 calls in a row \(last: service error \(503\)"
    ):
        run_send(settings, issue, SendOptions(sleep=_no_sleep))
    assert len(httpserver.log) == 6
    counts = issue_status(settings, "2026-10").counts
    assert counts[JournalState.DEFERRED] == 2 and counts[JournalState.SENT] == 0
    assert counts[JournalState.SENDING] == 0


def test_a_refused_credential_stops_the_send_and_loses_nothing(
    tmp_path: Path, httpserver: HTTPServer, resend_env: None
) -> None:
    httpserver.expect_request("/emails/batch").respond_with_data(
        '{"message":"API key is invalid"}', status=401
    )
    settings, issue = make_folder(tmp_path, _resend_settings(httpserver), 5)
    with pytest.raises(SendError, match="check RESEND_API_KEY"):
        run_send(settings, issue, SendOptions(sleep=_no_sleep))
    counts = issue_status(settings, "2026-10").counts
    assert counts[JournalState.DEFERRED] == 5 and counts[JournalState.SENDING] == 0


def test_dry_run_builds_the_real_payloads_without_secrets_and_marks_nothing(
    tmp_path: Path, httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RESEND_API_KEY", raising=False)
    settings, issue = make_folder(tmp_path, _resend_settings(httpserver, "batch_size = 4\n"), 10)
    report = run_send(settings, issue, SendOptions(dry_run=True))
    assert report.sent == 10 and report.missing_credentials == ["RESEND_API_KEY"]
    files = sorted((tmp_path / "build" / "outbox" / "2026-10").glob("resend-batch-*.json"))
    assert len(files) == 3
    document = json.loads(files[0].read_text("utf-8"))
    assert document["url"].endswith("/emails/batch") and len(document["payload"]) == 4
    assert document["payload"][0]["to"] == ["Reader 1 <reader1@example.net>"]
    assert "List-Unsubscribe" in document["payload"][0]["headers"]
    assert httpserver.log == []  # nothing left the machine
    assert issue_status(settings, "2026-10").counts[JournalState.QUEUED] == 0

    monkeypatch.setenv("RESEND_API_KEY", "re_secret_value_987")
    run_send(settings, issue, SendOptions(dry_run=True))
    for path in (tmp_path / "build" / "outbox" / "2026-10").iterdir():
        assert "re_secret_value_987" not in path.read_text("utf-8", errors="replace")
    assert SECRET not in "".join(
        p.read_text("utf-8", errors="replace") for p in (tmp_path / "build").rglob("*.json")
    )


def test_token_bucket_holds_the_rate() -> None:
    slept: list[float] = []
    clock = {"t": 0.0}

    def fake_sleep(seconds: float) -> None:
        slept.append(seconds)
        clock["t"] += seconds

    bucket = TokenBucket(10.0, fake_sleep)
    import newsletter.send as send_module

    real = send_module.time.monotonic
    send_module.time.monotonic = lambda: clock["t"]  # type: ignore[method-assign]
    try:
        bucket.updated = 0.0
        for _ in range(5):
            bucket.take(10)
    finally:
        send_module.time.monotonic = real  # type: ignore[method-assign]
    # 50 messages at 10/s: the first 10 go at once, the other 40 take 4 seconds.
    assert sum(slept) == pytest.approx(4.0)


@pytest.mark.parametrize(
    ("text", "rate"), [("50/s", 50.0), ("50", 50.0), ("3000/min", 50.0), ("7200/h", 2.0)]
)
def test_parse_rate(text: str, rate: float) -> None:
    assert parse_rate(text) == rate


def test_parse_rate_refuses_nonsense() -> None:
    with pytest.raises(SendError, match="not a rate"):
        parse_rate("fast")


# --- the commands ---------------------------------------------------------------------------


def test_send_command_refuses_without_terminal_or_yes(tmp_path: Path) -> None:
    settings, issue = make_folder(tmp_path, NULL, 3)
    runner = CliRunner()
    result = runner.invoke(
        main, ["--config", str(tmp_path / "newsletter.toml"), "send", str(issue)]
    )
    assert result.exit_code == 1
    assert "pass --yes" in result.output
    assert issue_status(settings, "2026-10").counts[JournalState.SENT] == 0


def test_send_and_status_commands(tmp_path: Path) -> None:
    _settings, issue = make_folder(tmp_path, NULL, 4)
    runner = CliRunner()
    config = ["--config", str(tmp_path / "newsletter.toml")]
    result = runner.invoke(main, [*config, "send", "--yes", str(issue)])
    assert result.exit_code == 0, result.output
    assert "to 4 subscribers via null" in result.output
    assert "4 sent, 0 failed permanently, 0 uncertain" in result.output
    status = runner.invoke(main, [*config, "status", "--json", "2026-10"])
    data = json.loads(status.output)
    assert data["counts"]["sent"] == 4 and data["uncertain"] == []
    text = runner.invoke(main, [*config, "status", str(issue)])
    assert "2026-10: 0 queued, 0 sending, 4 sent" in text.output


def test_test_send_goes_to_one_address_outside_the_journal(tmp_path: Path) -> None:
    handler = SinkHandler()
    with smtp_server(handler) as port:
        provider = (
            f'[provider]\nname = "smtp"\nhost = "127.0.0.1"\nport = {port}\nsecurity = "none"\n'
        )
        settings, issue = make_folder(tmp_path, provider, 3)
        result = CliRunner().invoke(
            main,
            [
                "--config",
                str(tmp_path / "newsletter.toml"),
                "send",
                "--to",
                "editor@example.org",
                str(issue),
            ],
        )
    assert result.exit_code == 0, result.output
    assert [r.rcpt_tos for r in handler.received] == [["editor@example.org"]]
    assert issue_status(settings, "2026-10").counts[JournalState.SENT] == 0


def test_interruption_leaves_a_consistent_journal_and_says_how_to_resume(tmp_path: Path) -> None:
    settings, issue = make_folder(tmp_path, NULL, 40)
    from newsletter.send import Sender, prepare_send

    calls = {"n": 0}

    def ctrl_c(progress: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt

    sender = Sender(prepare_send(settings, issue, SendOptions()), ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        sender.run()
    counts = issue_status(settings, "2026-10").counts
    assert counts[JournalState.SENT] == 14 and counts[JournalState.SENDING] == 0
    assert counts[JournalState.QUEUED] == 26
    assert run_send(settings, issue, SendOptions()).sent == 26


def test_ctrl_c_in_the_command_prints_how_to_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _settings, issue = make_folder(tmp_path, NULL, 10)
    import newsletter.cli.sending as sending

    def interrupted(self: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(sending.Sender, "run", interrupted)
    result = CliRunner().invoke(
        main, ["--config", str(tmp_path / "newsletter.toml"), "send", "--yes", str(issue)]
    )
    assert result.exit_code == 1
    assert "interrupted. The journal is consistent: run the same command to resume" in result.output


def test_sample_issue_to_the_example_subscribers_through_smtp(tmp_path: Path) -> None:
    """The issue's "done when": one copy each, a rerun sends nothing, status tells the truth."""
    import csv
    import shutil

    from .conftest import REPO

    handler = SinkHandler()
    with smtp_server(handler) as port:
        (tmp_path / "newsletter.toml").write_text(
            f'[provider]\nname = "smtp"\nhost = "127.0.0.1"\nport = {port}\nsecurity = "none"\nconnections = 2\n',
            "utf-8",
        )
        (tmp_path / ".newsletter-secret").write_text(SECRET, "utf-8")
        shutil.copy(REPO / "subscribers.example.csv", tmp_path)
        issue = shutil.copy(REPO / "issues" / "2026-09.md", tmp_path)
        config = ["--config", str(tmp_path / "newsletter.toml")]
        runner = CliRunner()
        imported = runner.invoke(
            main, [*config, "subscribers", "import", str(tmp_path / "subscribers.example.csv")]
        )
        assert imported.exit_code == 0, imported.output
        first = runner.invoke(main, [*config, "send", "--yes", str(issue)])
        assert first.exit_code == 0, first.output
        second = runner.invoke(main, [*config, "send", "--yes", str(issue)])
        assert second.exit_code == 0, second.output
    from newsletter.parse import parse_issue

    issue_topics = set(parse_issue(REPO / "issues" / "2026-09.md").topics)
    with open(REPO / "subscribers.example.csv", encoding="utf-8") as handle:
        active = {
            row["email"].lower()
            for row in csv.DictReader(handle)
            if row["status"] == "active"
            and (
                not row["topics"].strip()
                or issue_topics & {t.strip() for t in row["topics"].split(";")}
            )
        }
    assert 3 <= len(active) < 20, active
    delivered = [r.rcpt_tos[0].lower() for r in handler.received]
    assert sorted(delivered) == sorted(active), first.output  # one copy each, nobody else
    assert (
        f"0 sent, 0 failed permanently, 0 uncertain, 0 deferred, {len(active)} skipped as already sent"
        in second.output
    )
    status = json.loads(runner.invoke(main, [*config, "status", "--json", "2026-09"]).output)
    assert status["counts"] == {
        "queued": 0,
        "sending": 0,
        "sent": len(active),
        "failed": 0,
        "deferred": 0,
    }


def test_an_issue_goes_to_those_who_chose_one_of_its_topics_or_chose_none(tmp_path: Path) -> None:
    settings, issue = make_folder(tmp_path, NULL, 4)
    conn = open_store(settings.paths.database)
    from newsletter.store import set_topics

    set_topics(
        conn, 1, ["Common Factors"], taxonomy=settings.taxonomy, source="test"
    )  # in the issue
    set_topics(
        conn, 2, ["Trauma and/or PTSD"], taxonomy=settings.taxonomy, source="test"
    )  # not in the issue
    set_topics(
        conn,
        3,
        ["Empathy", "Feedback and Progress Monitoring"],
        taxonomy=settings.taxonomy,
        source="test",
    )  # one in it
    conn.close()  # subscriber 4 chose nothing: every issue
    report = run_send(settings, issue, SendOptions())
    assert report.sent == 3
    conn = open_store(settings.paths.database)
    sent = sorted(
        r[0] for r in conn.execute("SELECT subscriber_id FROM journal WHERE state = 'sent'")
    )
    conn.close()
    assert sent == [1, 3, 4]
    assert issue_status(settings, "2026-10").not_yet_queued == 0
    # Status reports the audience the send used, whatever becomes of the issue file.
    issue.unlink()
    conn = open_store(settings.paths.database)
    for address, topic in (
        ("new1@example.net", "Trauma and/or PTSD"),
        ("new2@example.net", "Common Factors"),
    ):
        add_subscriber(conn, address, topics=[topic], taxonomy=settings.taxonomy)
    conn.close()
    found = issue_status(settings, "2026-10")
    assert found.not_yet_queued == 1  # new2 only: new1 chose a topic the issue did not have
    assert found.topics is not None and "Common Factors" in found.topics


def test_status_before_any_send_says_none_has_started(tmp_path: Path) -> None:
    _settings, _issue = make_folder(tmp_path, NULL, 2)
    config = ["--config", str(tmp_path / "newsletter.toml")]
    result = CliRunner().invoke(main, [*config, "status", "2026-10"])
    assert result.exit_code == 0, result.output
    assert result.output == "2026-10: no send of this issue has started\n"
    data = json.loads(CliRunner().invoke(main, [*config, "status", "--json", "2026-10"]).output)
    assert data["started"] is False and data["not_yet_queued"] is None


def test_a_send_reads_parses_and_renders_the_issue_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import newsletter.check
    import newsletter.parse

    settings, issue = make_folder(tmp_path, NULL, 3)
    calls: list[str] = []
    real_read, real_render = newsletter.parse.read_issue, newsletter.check.render_issue

    def counting_read(*args: Any, **kwargs: Any) -> Any:
        calls.append("read")
        return real_read(*args, **kwargs)

    def counting_render(*args: Any, **kwargs: Any) -> Any:
        calls.append("render")
        return real_render(*args, **kwargs)

    monkeypatch.setattr(newsletter.check, "read_issue", counting_read)
    monkeypatch.setattr(newsletter.check, "render_issue", counting_render)
    monkeypatch.setattr(newsletter.parse, "read_issue", counting_read)
    assert run_send(settings, issue, SendOptions()).sent == 3
    assert calls == ["read", "render"]


# --- what a review of the send path found ---------------------------------------------------


def _smtp(port: int, extra: str = "") -> str:
    return (
        f'[provider]\nname = "smtp"\nhost = "127.0.0.1"\nport = {port}\nsecurity = "none"\n{extra}'
    )


def test_a_rehearsal_through_the_outbox_does_not_stop_the_real_send(tmp_path: Path) -> None:
    settings, issue = make_folder(tmp_path, '[provider]\nname = "outbox"\n', 5)
    assert run_send(settings, issue, SendOptions()).sent == 5  # written to build/outbox only
    handler = SinkHandler()
    with smtp_server(handler) as port:
        (tmp_path / "newsletter.toml").write_text(_smtp(port), "utf-8")
        from newsletter.settings import load_settings

        real = load_settings(tmp_path / "newsletter.toml")
        report = run_send(real, issue, SendOptions())
        assert (report.sent, report.skipped_already_sent) == (5, 0)
        again = run_send(real, issue, SendOptions())
        assert (again.sent, again.skipped_already_sent) == (0, 5)
    assert len(handler.received) == 5


def test_what_the_relay_took_before_refusing_the_sender_is_not_sent_again(tmp_path: Path) -> None:
    class Suspends(SinkHandler):
        suspended = False

        async def handle_MAIL(
            self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
        ) -> str:
            if self.suspended or self.count >= 3:
                return "554 5.7.1 Sending suspended"
            envelope.mail_from = address
            return "250 OK"

    handler = Suspends()
    with smtp_server(handler) as port:
        settings, issue = make_folder(tmp_path, _smtp(port, "connections = 2\nbatch_size = 6\n"), 8)
        with pytest.raises(SendError, match="refused the sender"):
            run_send(settings, issue, SendOptions(sleep=_no_sleep))
        taken = handler.count  # 3, or 4 when both connections passed the check at once
        assert 3 <= taken < 8
        counts = issue_status(settings, "2026-10").counts
        assert counts[JournalState.SENT] == taken and counts[JournalState.SENDING] == 0
        handler.count = -100  # the relay lifts the suspension
        report = run_send(settings, issue, SendOptions(sleep=_no_sleep))
    assert report.sent == 8 - taken
    delivered = [r.rcpt_tos[0] for r in handler.received]
    assert sorted(delivered) == sorted(
        f"reader{n}@example.net" for n in range(1, 9)
    )  # no one twice


def test_a_relay_that_refuses_everyone_stops_the_send(tmp_path: Path) -> None:
    handler = SinkHandler(rcpt_replies={"@": "550 5.7.1 Relaying denied"})
    with smtp_server(handler) as port:
        settings, issue = make_folder(tmp_path, _smtp(port), 70)
        with pytest.raises(SendError, match="accepted nothing in 50 calls in a row"):
            run_send(settings, issue, SendOptions(sleep=_no_sleep))
    counts = issue_status(settings, "2026-10").counts
    assert counts[JournalState.FAILED] == 50 and counts[JournalState.QUEUED] == 20


def test_a_run_of_dead_addresses_alone_does_not_stop_the_send(tmp_path: Path) -> None:
    handler = SinkHandler(
        rcpt_replies={f"reader{n}@": "550 5.1.1 No such user" for n in range(1, 21)}
    )
    with smtp_server(handler) as port:
        settings, issue = make_folder(tmp_path, _smtp(port), 25)
        report = run_send(settings, issue, SendOptions(sleep=_no_sleep))
    assert (report.failed, report.sent) == (20, 5)


def test_plain_http_links_stop_the_send_before_anything_happens(tmp_path: Path) -> None:
    settings, issue = make_folder(tmp_path, NULL + '[web]\nurl = "http://news.example.org"\n', 3)
    with pytest.raises(SendError, match=r"one-click unsubscribe \(RFC 8058\) only over https"):
        run_send(settings, issue, SendOptions())
    assert issue_status(settings, "2026-10").counts[JournalState.QUEUED] == 0


def test_a_bad_rate_setting_names_the_key(tmp_path: Path) -> None:
    settings, issue = make_folder(tmp_path, NULL + 'rate = "fast"\n', 3)
    with pytest.raises(
        SendError, match=r"newsletter.toml: \[provider\] rate: rate 'fast' is not a rate"
    ):
        run_send(settings, issue, SendOptions())


def test_dry_run_with_mailgun_writes_the_form_fields(
    tmp_path: Path, httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAILGUN_API_KEY", "key-very-secret-123")
    provider = f'[provider]\nname = "mailgun"\nbase_url = "{httpserver.url_for("")}"\n'
    settings, issue = make_folder(tmp_path, provider, 3)
    report = run_send(settings, issue, SendOptions(dry_run=True))
    assert report.sent == 3 and httpserver.log == []
    (batch,) = (tmp_path / "build" / "outbox" / "2026-10").glob("mailgun-batch-*.json")
    text = batch.read_text("utf-8")
    assert "key-very-secret-123" not in text
    fields = {f["name"]: f["value"] for f in json.loads(text)["payload"]}
    assert fields["subject"] == "Ruptures, feedback and dropout"
    assert set(json.loads(fields["recipient-variables"])) == {
        f"reader{n}@example.net" for n in range(1, 4)
    }


@pytest.mark.sqlite_file
def test_a_mistyped_store_path_is_an_error_not_an_empty_list(tmp_path: Path) -> None:
    make_folder(tmp_path, NULL, 3)
    (tmp_path / "newsletter.toml").write_text(
        NULL + '[paths]\ndatabase = "typo/newsletter.db"\n', "utf-8"
    )
    from newsletter.errors import StoreError
    from newsletter.settings import load_settings

    settings = load_settings(tmp_path / "newsletter.toml")
    issue = tmp_path / "issues" / "2026-10.md"

    with pytest.raises(StoreError, match="there is no subscriber store here"):
        run_send(settings, issue, SendOptions())
    result = CliRunner().invoke(
        main, ["--config", str(tmp_path / "newsletter.toml"), "subscribers", "list"]
    )
    assert result.exit_code == 1 and "Check [paths] database" in result.output
    assert not (tmp_path / "typo").exists()


@pytest.mark.sqlite_file
def test_two_sends_of_one_issue_cannot_run_at_once(tmp_path: Path) -> None:
    from newsletter.send_lock import send_lock

    settings, issue = make_folder(tmp_path, NULL, 3)
    running = r"another send of 2026-10 is running \(process \d+\)"
    with (
        closing(open_store(settings.paths.database)) as other,
        send_lock(other, "2026-10"),
        pytest.raises(SendError, match=running),
    ):
        run_send(settings, issue, SendOptions())
    assert run_send(settings, issue, SendOptions()).sent == 3  # released


@pytest.mark.postgresql_only  # SQLite: test_two_sends_of_one_issue_cannot_run_at_once
def test_on_postgresql_senders_share_an_issue_but_a_requeueing_run_goes_alone(
    tmp_path: Path,
) -> None:
    from newsletter.send_lock import send_lock

    settings, issue = make_folder(tmp_path, NULL, 3)
    with closing(open_store(settings.paths.database)) as other:
        with send_lock(other, "2026-10") as held:
            assert not held.others_running()
            # A second ordinary sender shares the issue; it finishes while the other "runs",
            # so it cannot tell in-flight rows from uncertain ones and lists none.
            report = run_send(settings, issue, SendOptions())
            assert report.sent == 3 and report.other_senders and report.uncertain == []
            alone = r"another send of 2026-10 is running.*--resend-uncertain or --retry-failed"
            with pytest.raises(SendError, match=alone):
                run_send(settings, issue, SendOptions(resend_uncertain=True))
        with (
            send_lock(other, "2026-10", alone=True),
            pytest.raises(SendError, match="which must run alone"),
        ):
            run_send(settings, issue, SendOptions())
    assert run_send(settings, issue, SendOptions(retry_failed=True)).skipped_already_sent == 3


@pytest.mark.sqlite_file
@pytest.mark.parametrize("command", ["status", "send", "list"])
def test_a_damaged_store_is_a_clear_error_that_keeps_the_file(tmp_path: Path, command: str) -> None:
    settings, issue = make_folder(tmp_path, NULL, 2000)
    run_send(settings, issue, SendOptions(limit=1000))
    database = settings.paths.database
    size = database.stat().st_size
    with database.open("r+b") as handle:
        for page in (size // 4096 // 3, size // 4096 // 2, size // 4096 - 2):
            handle.seek(page * 4096 + 100)
            handle.write(b"\xff" * 3000)
    damaged = database.read_bytes()
    args = {
        "status": ["status", "2026-10"],
        "send": ["send", "--yes", str(issue)],
        "list": ["subscribers", "list"],
    }[command]
    result = CliRunner().invoke(main, ["--config", str(tmp_path / "newsletter.toml"), *args])
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    assert "is damaged (database disk image is malformed)" in result.output
    assert "restore the store from a backup" in result.output
    assert database.read_bytes() == damaged


@pytest.mark.sqlite_file
def test_a_value_no_schema_allows_is_reported_as_damage(tmp_path: Path) -> None:
    settings, _issue = make_folder(tmp_path, NULL, 2)
    conn = open_store(settings.paths.database)
    conn.execute("PRAGMA ignore_check_constraints = 1")
    conn.execute("UPDATE subscribers SET status = 'zombie', topics = '{' WHERE id = 2")
    conn.close()
    result = CliRunner().invoke(
        main, ["--config", str(tmp_path / "newsletter.toml"), "subscribers", "list"]
    )
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert "is damaged (subscriber 2:" in result.output
