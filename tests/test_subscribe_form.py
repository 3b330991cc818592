"""The subscribe form as a stranger would use it: floods, proxies, a provider that is down or
slow, and what the answers give away. Real HTTP on loopback, real SMTP (aiosmtpd)."""

from __future__ import annotations

import re
import threading
import time
from contextlib import closing
from pathlib import Path

import pytest
import requests

from newsletter import store, subscribe_requests
from newsletter.due import run_due
from newsletter.errors import SettingsError
from newsletter.settings import Settings
from newsletter.store import Status
from newsletter.web import WebApp

from .smtp_servers import SinkHandler, free_port, smtp_server
from .web_server import add, serving, settled, web_settings

# The same tests on both stores (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("store_backend")

FORM = "/subscribe"


def _post(base: str, address: str, **headers: str) -> requests.Response:
    return requests.post(base + FORM, data={"email": address}, headers=headers, timeout=10)


def _queued(settings: Settings) -> int:
    with closing(store.open_store(settings.paths.database)) as conn:
        return subscribe_requests.queued_count(conn)


def _smtp_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, port: int) -> Settings:
    return web_settings(
        tmp_path,
        monkeypatch,
        f'[provider]\nname = "smtp"\nhost = "127.0.0.1"\nport = {port}\nsecurity = "none"\n',
    )


def test_one_client_is_held_to_its_allowance_and_others_are_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = web_settings(tmp_path, monkeypatch, 'subscribe_per_client = "3/hour"\n')
    with serving(WebApp(settings)) as base:
        answers = [_post(base, f"a{n}@example.org").status_code for n in range(5)]
        # A forged X-Forwarded-For changes nothing: no proxy is trusted.
        forged = _post(base, "forged@example.org", **{"X-Forwarded-For": "198.51.100.7"})
    assert answers == [200, 200, 200, 429, 429]
    assert forged.status_code == 429
    assert forged.headers["Retry-After"] == "3600"
    assert "Please try again a little later" in forged.text
    assert "within 60 minutes" in forged.text
    # The allowance is in the store: a restarted app does not forget it.
    with serving(WebApp(settings)) as base:
        assert _post(base, "again@example.org").status_code == 429
    with closing(store.open_store(settings.paths.database)) as conn:
        assert store.count_subscribers(conn) == 3


def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_allowance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = web_settings(
        tmp_path,
        monkeypatch,
        'subscribe_per_client = "2/hour"\ntrusted_proxies = ["127.0.0.1"]\n',
    )
    with serving(WebApp(settings)) as base:

        def from_client(address: str, client: str) -> int:
            # A client may prepend anything; the proxy appends the address it saw.
            forwarded = f"203.0.113.99, {client}"
            return _post(base, address, **{"X-Forwarded-For": forwarded}).status_code

        first = [from_client(f"c{n}@example.org", "192.0.2.10") for n in range(3)]
        second = [from_client(f"d{n}@example.org", "192.0.2.20") for n in range(2)]
        # One IPv6 /64 is one client, whatever its last 64 bits.
        six = [from_client(f"e{n}@example.org", f"2001:db8:1:2::{n + 1}") for n in range(3)]
    assert first == [200, 200, 429]
    assert second == [200, 200]
    assert six == [200, 200, 429]


def test_a_flood_of_many_clients_meets_the_overall_allowance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = web_settings(
        tmp_path,
        monkeypatch,
        'subscribe_overall = "20/hour"\ntrusted_proxies = ["127.0.0.0/8"]\n',
    )
    with serving(WebApp(settings)) as base:
        codes = [
            _post(base, f"f{n}@example.org", **{"X-Forwarded-For": f"198.51.100.{n}"}).status_code
            for n in range(30)
        ]
        settled(settings)
    assert codes == [200] * 20 + [429] * 10
    emails = list((settings.paths.build / "outbox").rglob("*.eml"))
    assert len(emails) == 20


def test_the_pending_cap_answers_every_address_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = web_settings(tmp_path, monkeypatch, "max_pending = 2\n")
    add(settings, "member@example.org")
    with serving(WebApp(settings)) as base:
        assert [_post(base, f"p{n}@example.org").status_code for n in range(2)] == [200, 200]
        new, member = _post(base, "p9@example.org"), _post(base, "member@example.org")
    # Full: a new address and a subscriber get the same answer, so it reveals nothing.
    assert (new.status_code, member.status_code) == (429, 429)
    assert new.text.replace("p9@example.org", "X") == member.text.replace("member@example.org", "X")


def test_stale_pending_requests_are_forgotten_when_their_link_expires(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = web_settings(tmp_path, monkeypatch)
    week_ago = time.time() - 8 * 24 * 3600
    with serving(WebApp(settings, clock=lambda: week_ago)) as base:
        assert _post(base, "stale@example.org").status_code == 200
    imported = add(settings, "imported@example.org", status=Status.PENDING)
    run_due(settings)
    with closing(store.open_store(settings.paths.database)) as conn:
        assert store.get_subscriber(conn, "stale@example.org") is None
        # Only the form's requests expire: an admin's pending subscriber stays.
        assert store.get_subscriber(conn, imported.id) is not None


def test_a_provider_that_is_down_changes_no_answer_and_loses_no_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed_port = free_port()  # nothing answers there
    settings = _smtp_settings(tmp_path, monkeypatch, closed_port)
    add(settings, "member@example.org")
    with serving(WebApp(settings)) as base:
        new, member = _post(base, "new@example.org"), _post(base, "member@example.org")
    assert (new.status_code, member.status_code) == (200, 200)
    assert new.text.replace("new@example.org", "X") == member.text.replace(
        "member@example.org", "X"
    )
    assert _queued(settings) == 1  # waiting for the provider, with its error recorded
    handler = SinkHandler()
    with smtp_server(handler, port=closed_port):
        report = run_due(settings, now=time.time() + 3600)
    assert report.confirmations.sent == 1
    assert [m.rcpt_tos for m in handler.received] == [["new@example.org"]]
    assert _queued(settings) == 0


def test_the_answer_never_waits_for_the_provider(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    handler = SinkHandler(hold=release)
    with smtp_server(handler) as port:
        settings = _smtp_settings(tmp_path, monkeypatch, port)
        with serving(WebApp(settings)) as base:
            answer = _post(base, "ana@example.org")
            # The relay is still holding the confirmation when the visitor has the page.
            assert answer.status_code == 200 and "Check your inbox" in answer.text
            assert handler.received == []
            release.set()
            settled(settings)
    assert [m.rcpt_tos for m in handler.received] == [["ana@example.org"]]


def test_asking_again_renews_the_request_and_the_link_is_issued_when_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = web_settings(tmp_path, monkeypatch)
    day = 24 * 3600.0
    start = time.time() - 7 * day + 600  # the first request: almost a week ago
    with serving(WebApp(settings, clock=lambda: start)) as base:
        assert _post(base, "late@example.org").status_code == 200
    again = start + 6.9 * day  # lost the email; asks again
    with serving(WebApp(settings, clock=lambda: again)) as base:
        assert _post(base, "late@example.org").status_code == 200
        settled(settings)
    # A day after the first request's week, the renewed request is still there...
    run_due(settings, now=start + 8 * day)
    with closing(store.open_store(settings.paths.database)) as conn:
        found = store.get_subscriber(conn, "late@example.org")
    assert found is not None and found.status is Status.PENDING
    # ...and the second email's link works: it was issued when the email was sent.
    links = sorted((settings.paths.build / "outbox").rglob("*.eml"))
    assert len(links) == 2
    token = re.search(rb"/confirm/([A-Za-z0-9_.-]+)", links[-1].read_bytes().replace(b"=\r\n", b""))
    assert token is not None
    with serving(WebApp(settings, clock=lambda: start + 8 * day)) as base:
        confirmed = requests.post(f"{base}/confirm/{token[1].decode()}", timeout=10)
    assert confirmed.status_code == 200 and "You are subscribed" in confirmed.text


def test_a_whole_ipv6_48_is_held_like_a_few_clients_and_refusals_cost_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = web_settings(
        tmp_path,
        monkeypatch,
        'subscribe_per_client = "1/hour"\ntrusted_proxies = ["127.0.0.1"]\n',
    )
    with serving(WebApp(settings)) as base:
        codes = [
            _post(
                base, f"h{n}@example.org", **{"X-Forwarded-For": f"2001:db8:7:{n}::1"}
            ).status_code
            for n in range(8)
        ]
        # Another network is not affected by the first one's flood.
        other = _post(base, "o@example.org", **{"X-Forwarded-For": "2001:db8:8::1"})
    assert codes == [200] * 5 + [429] * 3
    assert other.status_code == 200
    with closing(store.open_store(settings.paths.database)) as conn:
        windows = dict(conn.execute("SELECT bucket, hits FROM rate_windows").fetchall())
    assert windows["network:2001:db8:7::/48"] == 5  # the three refused ones were not counted
    assert windows["all"] == 6


def test_only_the_forms_own_pending_subscribers_count_against_the_cap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = web_settings(tmp_path, monkeypatch, "max_pending = 1\n")
    for n in range(3):
        add(settings, f"imported{n}@example.org", status=Status.PENDING)
    with serving(WebApp(settings)) as base:
        assert _post(base, "first@example.org").status_code == 200
        assert _post(base, "second@example.org").status_code == 429


def test_every_kind_of_address_runs_the_same_statements(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = web_settings(tmp_path, monkeypatch)
    add(settings, "active@example.org")
    add(settings, "bounced@example.org", status=Status.BOUNCED)
    add(settings, "pending@example.org", status=Status.PENDING)
    traced: dict[str, list[str]] = {}
    with closing(store.open_store(settings.paths.database)) as conn:
        for address in (
            "new@example.org",
            "active@example.org",
            "bounced@example.org",
            "pending@example.org",
        ):
            statements: list[str] = []
            conn.set_trace_callback(statements.append)
            verdict = subscribe_requests.record_request(
                conn,
                email=address,
                name="",
                topics=(),
                client=f"192.0.2.{len(traced)}",
                limits=subscribe_requests.SubscribeLimits(),
                now=time.time(),
            )
            conn.set_trace_callback(None)
            assert verdict is subscribe_requests.Verdict.ACCEPTED
            traced[address] = [re.sub(r"'[^']*'|\b\d+(\.\d+)?\b", "?", s) for s in statements]
    shapes = list(traced.values())
    assert all(shape == shapes[0] for shape in shapes), traced
    run_due(settings)
    emails = sorted(p.name for p in (settings.paths.build / "outbox").rglob("*.eml"))
    assert len(emails) == 2  # new and pending get a confirmation; the others are dropped


def test_behind_a_proxy_on_a_unix_socket_clients_are_told_apart_only_when_trusted() -> None:
    through_socket = {"REMOTE_ADDR": "", "HTTP_X_FORWARDED_FOR": "198.51.100.4"}
    assert subscribe_requests.client_of(through_socket, ["unix"]) == "198.51.100.4"
    # Not trusted: the header is anyone's to write, and everyone is the one unknown client.
    assert subscribe_requests.client_of(through_socket, []) == "unknown"
    direct = {"REMOTE_ADDR": "203.0.113.9", "HTTP_X_FORWARDED_FOR": "198.51.100.4"}
    assert subscribe_requests.client_of(direct, ["unix"]) == "203.0.113.9"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('confirmations = "cron"', "web.confirmations: must be"),
        ('subscribe_per_client = "ten"', "web.subscribe_per_client: must be an allowance"),
        ("max_pending = 0", "web.max_pending: must be a whole number"),
        ('trusted_proxies = ["proxy.local"]', "'proxy.local' is not an IP address"),
    ],
)
def test_the_subscribe_forms_settings_are_checked_when_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, line: str, message: str
) -> None:
    with pytest.raises(SettingsError, match=message):
        web_settings(tmp_path, monkeypatch, line + "\n")
