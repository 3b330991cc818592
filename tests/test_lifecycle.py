"""The subscriber's lifecycle: the welcome email, consent evidence, download and erasure, the
audit log; over real HTTP on loopback, with a real SMTP server (aiosmtpd) where mail is sent."""

from __future__ import annotations

import csv
import email
import email.policy
import json
import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from email.message import EmailMessage
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from newsletter import consent, events, store, welcome
from newsletter.cli import main
from newsletter.errors import SettingsError
from newsletter.settings import Settings
from newsletter.store import Status
from newsletter.web import WebApp

from .conftest import WELCOME_SAMPLE
from .smtp_servers import SinkHandler, free_port, smtp_server
from .web_server import PUBLIC_URL, add, local, serving, signer_for, web_settings

# The same tests on both stores (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("store_backend")

AGENT = "Mozilla/5.0 (lifecycle test)"


@pytest.fixture
def sink() -> Iterator[tuple[SinkHandler, int]]:
    handler = SinkHandler()
    with smtp_server(handler) as port:
        yield handler, port


def smtp_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, port: int, extra: str = ""
) -> Settings:
    table = f'[provider]\nname = "smtp"\nhost = "127.0.0.1"\nport = {port}\ntimeout = 5\nsecurity = "none"\n'
    return web_settings(tmp_path, monkeypatch, extra + "\n" + table)


def with_welcome(settings: Settings, text: str | None = None) -> Path:
    path = settings.welcome_path
    path.parent.mkdir(parents=True, exist_ok=True)
    if text is None:
        shutil.copy(WELCOME_SAMPLE, path)
    else:
        path.write_text(text, "utf-8")
    return path


def received(handler: SinkHandler) -> list[EmailMessage]:
    with handler.lock:
        contents = [r.content for r in handler.received]
    return [
        email.message_from_bytes(c, policy=email.policy.default)  # type: ignore[misc]
        for c in contents
    ]


def welcomes(handler: SinkHandler) -> list[EmailMessage]:
    return [m for m in received(handler) if str(m["Subject"]).startswith("Welcome")]


def wait_until(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not callable(condition) or not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)


def text_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert isinstance(part, EmailMessage)
    return str(part.get_content())


def links_in(message: EmailMessage) -> set[str]:
    found: set[str] = set()
    for part in message.walk():
        if part.get_content_maintype() == "text":
            found |= set(re.findall(r"https?://[^\s\"'<>)\]]+", str(part.get_content())))
    for header in ("List-Unsubscribe",):
        found |= set(re.findall(r"<(https?://[^>]+)>", str(message[header] or "")))
    return {link.rstrip(".,") for link in found}


def snapshot(settings: Settings) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every table of the store."""
    with closing(store.open_store(settings.paths.database)) as conn:
        return {
            t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall(), key=repr)
            for t in store.table_names(conn)
        }


def journal_rows(settings: Settings, issue: str = "welcome") -> list[tuple[int, str]]:
    with closing(store.open_store(settings.paths.database)) as conn:
        return [
            (int(r[0]), str(r[1]))
            for r in conn.execute(
                "SELECT subscriber_id, state FROM journal WHERE issue = ? ORDER BY 1", (issue,)
            )
        ]


def find(settings: Settings, address: str | int) -> store.Subscriber:
    with closing(store.open_store(settings.paths.database)) as conn:
        return store.require_subscriber(conn, address)


def lookup(settings: Settings, address: str | int) -> store.Subscriber | None:
    with closing(store.open_store(settings.paths.database)) as conn:
        return store.get_subscriber(conn, address)


def count_all(settings: Settings) -> int:
    with closing(store.open_store(settings.paths.database)) as conn:
        return store.count_subscribers(conn)


def trail_of(settings: Settings, address: str) -> list[consent.ConsentEvent]:
    with closing(store.open_store(settings.paths.database)) as conn:
        return consent.trail(conn, store.require_subscriber(conn, address).id)


def subscribe(base: str, address: str, **headers: str) -> requests.Response:
    return requests.post(
        f"{base}/subscribe",
        data={"email": address, "name": "Ana"},
        headers={"User-Agent": AGENT, **headers},
        timeout=10,
    )


def confirmation_link(handler: SinkHandler, address: str) -> str:
    wait_until(lambda: any(address in str(m["To"]) for m in received(handler)))
    message = next(m for m in received(handler) if address in str(m["To"]))
    found = re.search(rf"{re.escape(PUBLIC_URL)}/confirm/\S+", text_of(message))
    assert found, text_of(message)
    return found.group(0)


def invoke(settings: Settings, *args: str) -> tuple[int, str]:
    assert settings.source is not None
    result = CliRunner().invoke(main, ["--config", str(settings.source), *args])
    return result.exit_code, result.output


# --- the welcome email -------------------------------------------------------------------


def test_confirming_twice_welcomes_once_through_the_provider_and_records_the_consent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sink: tuple[SinkHandler, int]
) -> None:
    handler, port = sink
    settings = smtp_settings(tmp_path, monkeypatch, port)
    with_welcome(settings)
    with serving(WebApp(settings)) as base:
        assert subscribe(base, "ana@example.org").status_code == 200
        link = local(confirmation_link(handler, "ana@example.org"), base)
        # As the confirm page posts it, with the "greet me as" box left ticked.
        ticked = {"keep_name": "yes"}
        first = requests.post(link, data=ticked, headers={"User-Agent": AGENT}, timeout=10)
        second = requests.post(link, data=ticked, headers={"User-Agent": AGENT}, timeout=10)
        assert (first.status_code, second.status_code) == (200, 200)
        wait_until(lambda: len(welcomes(handler)) == 1)
        time.sleep(0.3)  # a second welcome, if one were coming, would be here by now
    (message,) = welcomes(handler)
    assert message["To"].addresses[0].addr_spec == "ana@example.org"
    assert "Dear Ana," in text_of(message)
    assert "/unsubscribe/" in str(message["List-Unsubscribe"])
    ana = trail_of(settings, "ana@example.org")
    assert [(e.event, e.form) for e in ana] == [("subscribe", "web"), ("confirm", "web")]
    assert {e.ip for e in ana} == {"127.0.0.0/24"}  # truncated by default
    assert {e.user_agent for e in ana} == {AGENT}
    versions = [e.text_version for e in ana]
    assert all(re.fullmatch(r"[0-9a-f]{16}", v) for v in versions) and versions[0] != versions[1]
    ana_id = find(settings, "ana@example.org").id
    assert journal_rows(settings) == [(ana_id, "sent")]
    code, output = invoke(settings, "status", "welcome")
    assert code == 0 and "welcome: 0 queued, 0 sending, 1 sent" in output


def test_the_confirmation_answers_without_the_provider_and_a_provider_down_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing listens on the SMTP port: the confirm still answers, the welcome is deferred,
    and once the relay is back the next pass sends it."""
    port = free_port()
    settings = smtp_settings(tmp_path, monkeypatch, port, '\nconfirmations = "run-due"')
    with_welcome(settings)
    ana = add(settings, "ana@example.org", Status.PENDING)
    token = signer_for(settings).confirm_token(ana.id)
    with serving(WebApp(settings)) as base:
        started = time.monotonic()
        answer = requests.post(f"{base}/confirm/{token}", timeout=10)
        assert answer.status_code == 200 and time.monotonic() - started < 2
    assert journal_rows(settings) == [(ana.id, "queued")]
    with closing(store.open_store(settings.paths.database)) as conn:
        report = welcome.send_due(conn, settings, signer_for(settings))
    assert (report.sent, report.deferred) == (0, 1)
    assert journal_rows(settings) == [(ana.id, "deferred")]
    handler = SinkHandler()
    with smtp_server(handler, port=port), closing(store.open_store(settings.paths.database)) as c:
        # Not yet: a deferred welcome waits its delay.
        assert welcome.send_due(c, settings, signer_for(settings)).sent == 0
        later = time.time() + welcome.RETRY_DELAYS[0] + 1
        assert welcome.send_due(c, settings, signer_for(settings), now=later).sent == 1
        assert welcome.send_due(c, settings, signer_for(settings), now=later + 10_000).sent == 0
    assert len(welcomes(handler)) == 1
    assert journal_rows(settings) == [(ana.id, "sent")]


def test_a_welcome_with_errors_waits_and_the_admin_is_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sink: tuple[SinkHandler, int]
) -> None:
    handler, port = sink
    settings = smtp_settings(tmp_path, monkeypatch, port, '\nconfirmations = "run-due"')
    broken = WELCOME_SAMPLE.read_text("utf-8").replace("title: Welcome\n", "month: 2026-11\n")
    path = with_welcome(settings, broken)
    ana = add(settings, "ana@example.org", Status.PENDING)
    token = signer_for(settings).confirm_token(ana.id)
    with serving(WebApp(settings)) as base:
        answer = requests.post(f"{base}/confirm/{token}", timeout=10)
    assert answer.status_code == 200 and "You are subscribed" in answer.text
    assert lookup(settings, ana.id).status is (  # type: ignore[union-attr]
        Status.ACTIVE
    )

    code, output = invoke(settings, "check", "--offline", str(path))
    assert code == 1
    assert f"{path}:2: unknown front matter key 'month'" in output
    assert "the welcome email has no month" in output
    assert f"{path}:1: front matter is missing 'title'" in output

    code, output = invoke(settings, "run-due")
    assert code == 1
    assert "welcome emails: 0 sent" in output and "1 waiting" in output
    assert f"the welcome email {path} has errors" in output
    code, output = invoke(settings, "status", "welcome")
    assert "1 queued" in output and f"the welcome email {path} has errors" in output
    assert welcomes(handler) == [] and journal_rows(settings) == [(ana.id, "queued")]

    with_welcome(settings)  # fixed
    code, output = invoke(settings, "run-due")
    assert code == 0, output
    assert "welcome emails: 1 sent" in output
    assert len(welcomes(handler)) == 1


def test_add_and_import_welcome_only_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sink: tuple[SinkHandler, int]
) -> None:
    handler, port = sink
    settings = smtp_settings(tmp_path, monkeypatch, port)
    with_welcome(settings)
    assert invoke(settings, "subscribers", "add", "quiet@example.org")[0] == 0
    assert invoke(settings, "subscribers", "add", "hello@example.org", "--welcome")[0] == 0
    csv_file = tmp_path / "people.csv"
    csv_file.write_text(
        "email,status\nimported@example.org,active\nwaiting@example.org,pending\n", "utf-8"
    )
    assert invoke(settings, "subscribers", "import", str(csv_file))[0] == 0
    other = tmp_path / "more.csv"
    other.write_text("email\nwelcomed@example.org\n", "utf-8")
    assert invoke(settings, "subscribers", "import", str(other), "--welcome")[0] == 0
    code, output = invoke(settings, "run-due")
    assert code == 0, output
    assert sorted(str(m["To"]) for m in welcomes(handler)) == [
        "hello@example.org",
        "welcomed@example.org",
    ]
    # An import's consent trail names the file and the command.
    (event,) = trail_of(settings, "welcomed@example.org")
    assert (event.event, event.form) == ("import", "import")
    assert "file more.csv" in event.detail and "subscribers import" in event.detail
    assert "--welcome" in event.detail
    (added,) = trail_of(settings, "quiet@example.org")
    assert (added.event, added.form) == ("add", "command")


# --- consent evidence --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "full", "expected"),
    [
        ("203.0.113.77", False, "203.0.113.0/24"),
        ("203.0.113.77", True, "203.0.113.77"),
        ("2001:db8:abcd:12:1:2:3:4", False, "2001:db8:abcd::/48"),
        ("::ffff:198.51.100.9", False, "198.51.100.0/24"),
        ("not an address", False, ""),
    ],
    ids=["ipv4", "ipv4-full", "ipv6", "mapped", "garbage"],
)
def test_ip_addresses_are_truncated_unless_asked(address: str, full: bool, expected: str) -> None:
    assert consent.truncated_ip(address, full=full) == expected


def test_behind_a_trusted_proxy_the_forwarded_client_is_recorded_and_full_ip_keeps_it_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = web_settings(
        tmp_path, monkeypatch, 'trusted_proxies = ["127.0.0.1"]\nfull_ip = true\n'
    )
    with serving(WebApp(settings)) as base:
        subscribe(base, "ana@example.org", **{"X-Forwarded-For": "6.6.6.6, 198.51.100.23"})
        subscribe(base, "bo@example.org")  # no header: the proxy itself
    assert [e.ip for e in trail_of(settings, "ana@example.org")] == ["198.51.100.23"]
    assert [e.ip for e in trail_of(settings, "bo@example.org")] == ["127.0.0.1"]


def test_show_prints_the_trail_and_it_survives_export_and_import_into_a_fresh_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, another_store: Callable[[], None]
) -> None:
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    settings = web_settings(tmp_path / "old", monkeypatch)
    with serving(WebApp(settings)) as base:
        subscribe(base, "ana@example.org")
        ana = find(settings, "ana@example.org")
        token = signer_for(settings).confirm_token(ana.id)
        requests.post(f"{base}/confirm/{token}", headers={"User-Agent": AGENT}, timeout=10)
    before = trail_of(settings, "ana@example.org")
    assert [e.event for e in before] == ["subscribe", "confirm"]
    code, output = invoke(settings, "subscribers", "show", "ana@example.org")
    assert code == 0
    assert "subscribe (web), ip 127.0.0.0/24, agent 'Mozilla/5.0 (lifecycle test)'" in output
    assert "confirm (web)" in output

    exported = tmp_path / "export.csv"
    assert invoke(settings, "subscribers", "export", str(exported), "--consent")[0] == 0
    with exported.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert json.loads(rows[0]["consent"])[0]["ip"] == "127.0.0.0/24"

    another_store()
    fresh = web_settings(tmp_path / "new", monkeypatch)
    code, output = invoke(fresh, "subscribers", "import", str(exported))
    assert code == 0, output
    after = trail_of(fresh, "ana@example.org")
    assert after[:2] == before  # the same events, field for field
    assert [(e.event, e.form) for e in after[2:]] == [("import", "import")]
    # Importing the same file again adds no duplicate events.
    invoke(fresh, "subscribers", "import", str(exported))
    assert trail_of(fresh, "ana@example.org") == after


def test_a_consent_cell_that_is_not_a_trail_rejects_its_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = web_settings(tmp_path, monkeypatch)
    bad = tmp_path / "bad.csv"
    bad.write_text('email,consent\nana@example.org,"[{""at"": 1}]"\n', "utf-8")
    code, output = invoke(settings, "subscribers", "import", str(bad))
    assert code == 1
    assert f"{bad}:2: ana@example.org: each consent event must be an object" in output


# --- download and erasure ----------------------------------------------------------------


def test_download_my_data_is_a_post_that_answers_the_json_of_everything_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = web_settings(tmp_path, monkeypatch)
    with serving(WebApp(settings)) as base:
        subscribe(base, "ana@example.org")
        with closing(store.open_store(settings.paths.database)) as conn:
            ana = store.require_subscriber(conn, "ana@example.org")
            store.set_topics(conn, ana.id, ["Empathy"], taxonomy=settings.taxonomy)
        path = f"/data/{signer_for(settings).unsubscribe_token(ana.id)}"
        assert requests.get(base + path, timeout=10).status_code == 405
        answer = requests.post(base + path, timeout=10)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "application/json; charset=utf-8"
    assert "attachment" in answer.headers["Content-Disposition"]
    data = answer.json()
    assert data["profile"]["email"] == "ana@example.org"
    assert data["profile"]["name"] == "Ana"
    assert data["topics"] == ["Empathy"]
    assert [c["event"] for c in data["consent"]] == ["subscribe"]
    assert data["topic_changes"][0]["topics"] == ["Empathy"]
    assert data["emails_sent"] == [] and data["events"] == []


def test_the_providers_events_about_a_person_are_in_their_download_and_go_with_the_erase(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = web_settings(tmp_path, monkeypatch)
    with closing(store.open_store(settings.paths.database)) as conn:
        ana = store.add_subscriber(conn, "ana@example.org")
        store.add_subscriber(conn, "bo@example.org")
        events.record_events(
            conn,
            [
                events.DeliveryEvent(
                    "mailgun",
                    f"e-{who}",
                    events.EventKind.SOFT_BOUNCE,
                    who,
                    "2026-11-02T10:00:00Z",
                    reason=f"mailbox of {who} full",
                )
                for who in ("ana@example.org", "bo@example.org")
            ],
            via=events.VIA_WEBHOOK,
        )
    token = signer_for(settings).unsubscribe_token(ana.id)
    with serving(WebApp(settings)) as base:
        data = requests.post(f"{base}/data/{token}", timeout=10).json()
        assert [(e["kind"], e["reason"]) for e in data["events"]] == [
            ("soft_bounce", "mailbox of ana@example.org full")
        ]
        done = requests.post(f"{base}/erase/{token}", data={"confirm": "yes"}, timeout=10)
        assert done.status_code == 200
    kept = snapshot(settings)
    assert "ana@example.org" not in repr(kept).casefold()
    assert [row[4] for row in kept["delivery_events"]] == ["bo@example.org"]
    assert ana.id not in [row[0] for row in kept["soft_bounce_scores"]]


def test_erase_asks_first_then_forgets_everything_and_an_import_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = web_settings(tmp_path, monkeypatch)
    with serving(WebApp(settings)) as base:
        subscribe(base, "Ana@Example.org")
        ana = find(settings, "ana@example.org")
        path = f"/erase/{signer_for(settings).unsubscribe_token(ana.id)}"
        assert requests.get(base + path, timeout=10).status_code == 405
        asked = requests.post(base + path, timeout=10)
        assert asked.status_code == 200 and 'id="confirm-erase"' in asked.text
        assert lookup(settings, ana.id)
        done = requests.post(base + path, data={"confirm": "yes"}, timeout=10)
        assert done.status_code == 200 and 'data-outcome="erased"' in done.text
        again = requests.post(base + path, data={"confirm": "yes"}, timeout=10)
        assert again.status_code == 404  # an erase for an address that no longer exists
    kept = snapshot(settings)
    assert kept["subscribers"] == [] and kept["consent_events"] == []
    assert kept["topic_changes"] == [] and kept["confirmation_queue"] == []
    assert "ana@example.org" not in repr(kept).casefold()
    (hashed,) = kept["erased_addresses"]
    assert re.fullmatch(r"[0-9a-f]{64}", str(hashed[0]))

    again_csv = tmp_path / "again.csv"
    again_csv.write_text("email,status\nANA@example.org,active\nbo@example.org,active\n", "utf-8")
    code, output = invoke(settings, "subscribers", "import", str(again_csv))
    assert code == 1
    assert f"{again_csv}:2: ANA@example.org: this address was erased at its owner's" in output
    assert "Only the person can, by subscribing again through the form and confirming" in output
    assert count_all(settings) == 0
    code, output = invoke(settings, "subscribers", "add", "ana@example.org")
    assert code == 1 and "erased at its owner's request" in output

    # The person may come back: a fresh double opt-in lifts the refusal.
    with serving(WebApp(settings)) as base:
        subscribe(base, "ana@example.org")
        back = find(settings, "ana@example.org")
        token = signer_for(settings).confirm_token(back.id)
        assert requests.post(f"{base}/confirm/{token}", timeout=10).status_code == 200
    assert snapshot(settings)["erased_addresses"] == []
    assert back.id != ana.id


def test_erasure_blanks_the_journal_and_keeps_its_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = web_settings(tmp_path, monkeypatch)
    ana = add(settings, "ana@example.org")
    with closing(store.open_store(settings.paths.database)) as conn:
        conn.execute(
            "INSERT INTO journal (issue, subscriber_id, state, provider_message_id, reason,"
            " queued_at, updated_at, sent_at) VALUES ('2026-10', ?, 'sent', '<m@x>',"
            " 'ana@example.org accepted', 't', 't', 't')",
            (ana.id,),
        )
    code, output = invoke(settings, "subscribers", "erase", "ana@example.org", "--yes")
    assert code == 0, output
    assert snapshot(settings)["journal"] == [
        ("2026-10", ana.id, "sent", 0, "", "", "", "t", "t", "t")
    ]


# --- what a link scanner and a stranger can reach ---------------------------------------


def test_a_scanner_that_gets_every_link_of_every_email_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sink: tuple[SinkHandler, int]
) -> None:
    handler, port = sink
    settings = smtp_settings(tmp_path, monkeypatch, port)
    with_welcome(settings)
    with serving(WebApp(settings)) as base:
        subscribe(base, "ana@example.org")
        subscribe(base, "bo@example.org")
        requests.post(local(confirmation_link(handler, "ana@example.org"), base), timeout=10)
        confirmation_link(handler, "bo@example.org")
        wait_until(lambda: len(welcomes(handler)) == 1)
        time.sleep(0.2)
        before = snapshot(settings)
        links = set().union(*(links_in(m) for m in received(handler)))
        ours = sorted(link for link in links if link.startswith(PUBLIC_URL))
        assert any("/confirm/" in link for link in ours)
        assert any("/unsubscribe/" in link for link in ours)
        for link in ours:
            assert requests.get(local(link, base), timeout=10).status_code < 500
            # The preferences page's own forms are POST-only: a scanner's GET is refused.
            token = link.rsplit("/", 1)[1]
            for action in ("data", "erase", "preferences"):
                assert requests.get(f"{base}/{action}/{token}", timeout=10).status_code == 405
        time.sleep(0.2)
        assert snapshot(settings) == before


def test_forged_and_expired_tokens_are_refused_before_the_store_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = web_settings(tmp_path, monkeypatch)
    ana = add(settings, "ana@example.org")
    signer = signer_for(settings)
    good = signer.unsubscribe_token(ana.id)
    forged = good[:-2] + ("AA" if not good.endswith("AA") else "BB")
    expired = signer.confirm_token(ana.id, now=time.time() - 8 * 24 * 3600)
    before = snapshot(settings)
    with serving(WebApp(settings)) as base:
        for action in ("data", "erase"):
            answer = requests.post(f"{base}/{action}/{forged}", data={"confirm": "yes"}, timeout=10)
            assert answer.status_code == 400 and "not valid" in answer.text
            # A confirmation token is not a key to the reader's data.
            other = signer.confirm_token(ana.id)
            assert requests.post(f"{base}/{action}/{other}", timeout=10).status_code == 400
        answer = requests.post(f"{base}/confirm/{expired}", timeout=10)
        assert answer.status_code == 400 and "expired" in answer.text
    assert snapshot(settings) == before


def test_what_a_stranger_can_reach_answers_the_same_whatever_the_store_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = web_settings(tmp_path, monkeypatch)
    add(settings, "active@example.org")
    add(settings, "left@example.org", Status.UNSUBSCRIBED)
    erased = add(settings, "erased@example.org")
    assert invoke(settings, "subscribers", "erase", "erased@example.org", "--yes")[0] == 0
    with serving(WebApp(settings)) as base:
        pages = {}
        for address in ("new@example.org", "active@example.org", "left@example.org"):
            answer = subscribe(base, address)
            pages[address] = (answer.status_code, answer.text.replace(address, "ADDRESS"))
        answer = subscribe(base, "erased@example.org")
        pages["erased"] = (answer.status_code, answer.text.replace("erased@example.org", "ADDRESS"))
        assert len(set(pages.values())) == 1
        # A made-up token for an id that exists, for one that was erased, for one never used.
        forged = {
            requests.post(f"{base}/data/u.{n}.AAAAAAAAAAAAAAAAAAAAAA", timeout=10).text
            for n in (1, erased.id, 999)
        }
        assert len(forged) == 1


# --- the audit log -----------------------------------------------------------------------


def test_the_audit_log_records_what_the_admin_and_the_web_did(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = web_settings(tmp_path, monkeypatch)
    people = tmp_path / "people.csv"
    people.write_text("email\na@example.org\nb@example.org\nc@example.org\n", "utf-8")
    assert invoke(settings, "subscribers", "import", str(people))[0] == 0
    assert invoke(settings, "subscribers", "export", str(tmp_path / "out.csv"))[0] == 0
    assert invoke(settings, "subscribers", "unsubscribe", "a@example.org")[0] == 0
    b = find(settings, "b@example.org")
    assert invoke(settings, "subscribers", "remove", "b@example.org", "--yes")[0] == 0
    assert all(row[1] != b.id for row in snapshot(settings)["consent_events"])
    c = find(settings, "c@example.org")
    with serving(WebApp(settings)) as base:
        token = signer_for(settings).unsubscribe_token(c.id)
        requests.post(f"{base}/erase/{token}", data={"confirm": "yes"}, timeout=10)
    code, output = invoke(settings, "audit")
    assert code == 0
    lines = output.splitlines()
    assert [line.split()[2] for line in lines] == [
        "import",
        "export",
        "unsubscribe",
        "remove",
        "erase",
    ]
    assert "people.csv: 3 added" in lines[0] and lines[0].endswith("[3]")
    assert lines[1].endswith("[3]")
    assert lines[4].split()[1] == "web"
    assert "@" not in lines[3] + lines[4]  # removals and erasures name ids, never addresses
    code, output = invoke(settings, "audit", "--since", "2999-01-01")
    assert code == 0 and output.strip() == "(nothing recorded since 2999-01-01)"
    code, output = invoke(settings, "audit", "--since", "yesterday")
    assert code == 2 and "is not a date" in output


def test_a_send_is_in_the_audit_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = web_settings(tmp_path, monkeypatch)
    add(settings, "ana@example.org")
    issue = settings.paths.issues / "2026-10.md"
    issue.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(WELCOME_SAMPLE.parent / "2026-10.md", issue)
    code, output = invoke(settings, "send", str(issue), "--yes")
    assert code == 0, output
    code, output = invoke(settings, "audit", "--json")
    (entry,) = json.loads(output)
    assert entry["action"] == "send" and entry["count"] == 1
    assert entry["detail"].startswith("issue 2026-10 via outbox: 1 sent")


def test_the_consent_text_version_changes_with_the_page_that_shows_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = web_settings(tmp_path, monkeypatch)
    with serving(WebApp(settings)) as base:
        subscribe(base, "ana@example.org")
    override = settings.paths.templates / "pages" / "subscribe.html"
    override.parent.mkdir(parents=True)
    packaged = Path(__import__("newsletter").__file__).parent / "templates/pages/subscribe.html"
    override.write_text(
        packaged.read_text("utf-8").replace("One email a month", "One email each month"), "utf-8"
    )
    with serving(WebApp(settings)) as base:
        subscribe(base, "bo@example.org")
    (first,) = trail_of(settings, "ana@example.org")
    (second,) = trail_of(settings, "bo@example.org")
    assert first.text_version != second.text_version


@pytest.mark.parametrize(
    ("days", "sent_days_ago", "topics", "expected"),
    [
        (30, 3, (), ["2026-10", "welcome"]),  # recent, and the reader wants every topic
        (30, 3, ("Empathy",), ["welcome"]),  # recent, but about none of the reader's topics
        (30, 40, (), ["welcome"]),  # too old
        (0, 3, (), ["welcome"]),  # off (the default)
    ],
    ids=["recent-matching", "recent-other-topics", "too-old", "off"],
)
def test_the_latest_issue_comes_with_the_welcome_when_recent_and_on_topic(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    sink: tuple[SinkHandler, int],
    days: int,
    sent_days_ago: int,
    topics: tuple[str, ...],
    expected: list[str],
) -> None:
    handler, port = sink
    extra = f'confirmations = "run-due"\n[welcome]\nlatest_issue_days = {days}\n'
    settings = smtp_settings(tmp_path, monkeypatch, port, extra)
    with_welcome(settings)
    shutil.copy(WELCOME_SAMPLE.parent / "2026-10.md", settings.paths.issues / "2026-10.md")
    sent_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - sent_days_ago * 86400))
    with closing(store.open_store(settings.paths.database)) as conn:
        conn.execute(
            "INSERT INTO journal_issues VALUES ('2026-10', ?, 'October', ?, ?)",
            (json.dumps(["Efficacy of Treatments"]), sent_at, sent_at),
        )
    ana = add(settings, "ana@example.org", Status.PENDING, topics=topics)
    with serving(WebApp(settings)) as base:
        token = signer_for(settings).confirm_token(ana.id)
        assert requests.post(f"{base}/confirm/{token}", timeout=10).status_code == 200
    for _ in range(2):
        code, output = invoke(settings, "run-due")
        assert code == 0, output
    got = sorted(
        "welcome" if str(m["Subject"]).startswith("Welcome") else "2026-10"
        for m in received(handler)
    )
    assert got == expected
    if "2026-10" in expected:
        assert journal_rows(settings, "2026-10") == [(ana.id, "sent")]


def test_the_welcome_file_can_be_named_in_the_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = web_settings(tmp_path, monkeypatch, '[welcome]\nfile = "hello/first-mail.md"\n')
    assert settings.welcome_path == tmp_path / "hello" / "first-mail.md"
    path = with_welcome(settings)
    code, output = invoke(settings, "check", "--offline", str(path))
    assert code == 0, output  # read as the welcome: no month, no articles
    code, output = invoke(settings, "preview", str(path))
    assert code == 0 and str(settings.paths.build / "welcome" / "email.html") in output
    code, output = invoke(settings, "subscribers", "add", "ana@example.org", "--welcome")
    assert code == 0 and journal_rows(settings) == [(1, "queued")]
    (tmp_path / "bad").mkdir()
    bad = web_settings(tmp_path / "bad", monkeypatch, "[welcome]\nlatest_issue_days = -1\n")
    with pytest.raises(SettingsError, match=r"welcome\.latest_issue_days: must be a whole number"):
        welcome.latest_issue_days(bad)


def test_an_unsubscribed_reader_can_still_download_and_erase(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = web_settings(tmp_path, monkeypatch)
    ana = add(settings, "ana@example.org")
    token = signer_for(settings).unsubscribe_token(ana.id)
    with serving(WebApp(settings)) as base:
        left = requests.post(f"{base}/unsubscribe/{token}", timeout=10)
        assert f'action="/data/{token}"' in left.text and 'id="erase-me"' in left.text
        page = requests.get(f"{base}/unsubscribe/{token}", timeout=10)
        assert f'action="/erase/{token}"' in page.text
        data = requests.post(f"{base}/data/{token}", timeout=10).json()
        assert data["profile"]["status"] == "unsubscribed"


def test_a_one_click_unsubscribe_for_a_reader_who_is_gone_still_answers_200(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = web_settings(tmp_path, monkeypatch)
    ana = add(settings, "ana@example.org")
    assert invoke(settings, "subscribers", "erase", "ana@example.org", "--yes")[0] == 0
    token = signer_for(settings).unsubscribe_token(ana.id)
    with serving(WebApp(settings)) as base:
        answer = requests.post(
            f"{base}/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"}, timeout=10
        )
    assert answer.status_code == 200 and 'id="erase-me"' not in answer.text


def test_an_expired_request_takes_its_consent_record_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from newsletter.due import run_due

    settings = web_settings(tmp_path, monkeypatch, 'confirmations = "run-due"\n')
    week_ago = time.time() - 8 * 24 * 3600
    with serving(WebApp(settings, clock=lambda: week_ago)) as base:
        subscribe(base, "stale@example.org")
    with serving(WebApp(settings)) as base:
        subscribe(base, "fresh@example.org")
    assert len(snapshot(settings)["consent_events"]) == 2
    run_due(settings)
    (kept,) = snapshot(settings)["consent_events"]
    fresh = find(settings, "fresh@example.org")
    assert kept[1] == fresh.id


def test_an_import_into_a_list_with_erasures_needs_the_secret_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = web_settings(tmp_path, monkeypatch)
    people = tmp_path / "people.csv"
    people.write_text("email\nbo@example.org\n", "utf-8")
    monkeypatch.delenv("NEWSLETTER_SECRET")
    assert invoke(settings, "subscribers", "import", str(people))[0] == 0  # nobody erased yet
    monkeypatch.setenv("NEWSLETTER_SECRET", "a-test-secret-of-enough-length-0123456789")
    add(settings, "ana@example.org")
    assert invoke(settings, "subscribers", "erase", "ana@example.org", "--yes")[0] == 0
    monkeypatch.delenv("NEWSLETTER_SECRET")
    code, output = invoke(settings, "subscribers", "import", str(people))
    assert code == 1
    assert "no secret for signing" in output
    assert "This list has erased addresses, which an import must recognise" in output
