"""The web endpoints, driven over real HTTP on loopback with requests."""

from __future__ import annotations

import email
import email.policy
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import urlencode

import psycopg
import pytest
import requests
from click.testing import CliRunner

from newsletter import store
from newsletter.cli import main
from newsletter.errors import StoreError, TokenError
from newsletter.messages import Recipient, prepare_issue
from newsletter.providers import create_provider
from newsletter.settings import Settings, load_settings
from newsletter.store import Status
from newsletter.tokens import Signer, unsubscribe_url
from newsletter.web import MAX_BODY_BYTES, WebApp, create_app

from .conftest import REPO, make_rendered
from .web_server import (
    PUBLIC_URL,
    SECRET,
    add,
    current,
    local,
    post_cut_short,
    serving,
    settled,
    signer_for,
    web_settings,
)

EMPATHY = "Empathy"
TRAINING = "Common Factors"

# The same tests on both stores (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("store_backend")


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    return web_settings(tmp_path, monkeypatch)


@pytest.fixture
def base(settings: Settings) -> Iterator[str]:
    with serving(WebApp(settings)) as url:
        yield url


def unsubscribe_path(settings: Settings, subscriber_id: int) -> str:
    return f"/unsubscribe/{signer_for(settings).unsubscribe_token(subscriber_id)}"


def confirmation_emails(settings: Settings) -> list[EmailMessage]:
    """The confirmation emails in the outbox, once the queue is empty."""
    settled(settings)
    found = sorted((settings.paths.build / "outbox").glob("confirm-*/*.eml"))
    return [
        email.message_from_bytes(path.read_bytes(), policy=email.policy.default)  # type: ignore[misc]
        for path in found
    ]


def text_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert isinstance(part, EmailMessage)
    return str(part.get_content())


# --- signed links ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),  # signature changed
        lambda t: t.replace("u.", "u.1", 1),  # another subscriber's id
        lambda t: t[:-5],  # cut short
        lambda t: t.rpartition(".")[0],  # no signature at all
        lambda t: "c" + t[1:],  # the purpose changed
        lambda t: t + "%C3%A9",  # a non-ASCII character appended
    ],
    ids=["signature", "subscriber", "truncated", "unsigned", "purpose", "non-ascii"],
)
def test_forged_or_altered_unsubscribe_links_change_nothing(
    settings: Settings, base: str, mangle: object
) -> None:
    ana = add(settings, "ana@example.org")
    token = signer_for(settings).unsubscribe_token(ana.id)
    forged = mangle(token)  # type: ignore[operator]
    page = requests.get(f"{base}/unsubscribe/{forged}", timeout=5)
    assert page.status_code == 400
    assert "not valid" in page.text
    posted = requests.post(
        f"{base}/unsubscribe/{forged}", data={"List-Unsubscribe": "One-Click"}, timeout=5
    )
    assert posted.status_code == 400
    assert current(settings, ana.id).status is Status.ACTIVE


def test_a_token_of_another_newsletter_is_refused(settings: Settings, base: str) -> None:
    ana = add(settings, "ana@example.org")
    other = Signer(SECRET.encode(), "another-list.example.org")
    posted = requests.post(
        f"{base}/unsubscribe/{other.unsubscribe_token(ana.id)}",
        data={"List-Unsubscribe": "One-Click"},
        timeout=5,
    )
    assert posted.status_code == 400
    assert current(settings, ana.id).status is Status.ACTIVE


def break_store(settings: Settings) -> None:
    """Make every use of the store fail: junk in the SQLite file; no subscribers table on
    PostgreSQL (whose server the other tests share, so it keeps running)."""
    location = settings.paths.database
    if isinstance(location, Path):
        location.write_bytes(b"not a database at all" * 100)
    else:
        with closing(store.open_store(location)) as conn:
            conn.execute("ALTER TABLE subscribers RENAME TO subscribers_gone")


def test_a_forged_link_is_refused_without_opening_the_store(settings: Settings, base: str) -> None:
    # A store that cannot be used would make any store access answer 503, not 400.
    break_store(settings)
    answer = requests.post(f"{base}/unsubscribe/u.1.forgedsignature", timeout=5)
    assert answer.status_code == 400


def test_no_secret_is_a_clear_error_at_start_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = web_settings(tmp_path, monkeypatch)
    monkeypatch.delenv("NEWSLETTER_SECRET")
    with pytest.raises(TokenError, match="no secret for signing"):
        WebApp(settings)


def test_create_app_reads_the_settings_named_in_the_environment(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert settings.source is not None
    monkeypatch.setenv("NEWSLETTER_CONFIG", str(settings.source))
    monkeypatch.chdir(tmp_path.parent)
    app = create_app()
    assert app.settings.paths.database == settings.paths.database
    ana = add(settings, "ana@example.org")
    with serving(app) as base:
        requests.post(base + unsubscribe_path(settings, ana.id), timeout=5)
    assert current(settings, ana.id).status is Status.UNSUBSCRIBED


@pytest.mark.postgresql_only
def test_a_postgres_database_without_a_store_stops_the_app_at_start_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, new_postgres_database: Callable[[], str]
) -> None:
    settings = web_settings(tmp_path, monkeypatch)
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", new_postgres_database())  # an empty one
    assert settings.source is not None
    settings = load_settings(settings.source)
    with pytest.raises(StoreError, match="there is no subscriber store in this database"):
        WebApp(settings)
    with closing(psycopg.connect(str(os.environ["NEWSLETTER_DATABASE_URL"]))) as raw:
        assert raw.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ).fetchone() == (0,)


@pytest.mark.sqlite_file
@pytest.mark.parametrize("mistake", ["missing", "empty"])
def test_a_mistyped_or_empty_store_stops_the_app_at_start_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mistake: str
) -> None:
    settings = web_settings(tmp_path, monkeypatch, '[paths]\ndatabase = "newsleter.db"\n')
    mistyped = settings.paths.database
    assert mistyped.name == "newsleter.db"
    mistyped.unlink()
    if mistake == "empty":
        mistyped.touch()
    expected = "no subscriber store here" if mistake == "missing" else "empty file"
    with pytest.raises(StoreError, match=expected):
        WebApp(settings)
    monkeypatch.setenv("NEWSLETTER_CONFIG", str(settings.source))
    with pytest.raises(StoreError, match=expected):
        create_app()
    result = CliRunner().invoke(main, ["--config", str(settings.source), "serve", "--port", "0"])
    assert result.exit_code == 1 and f"Error: {mistyped}" in result.output
    # Nothing was created or filled in on the way.
    if mistake == "missing":
        assert not mistyped.exists()
    else:
        assert mistyped.stat().st_size == 0


def test_a_store_that_disappears_answers_503_never_unsubscribed(
    settings: Settings, base: str
) -> None:
    ana = add(settings, "ana@example.org")
    location = settings.paths.database
    if isinstance(location, Path):
        location.rename(location.with_suffix(".moved"))
    else:
        break_store(settings)
    answer = requests.post(
        base + unsubscribe_path(settings, ana.id), data={"List-Unsubscribe": "One-Click"}, timeout=5
    )
    assert answer.status_code == 503
    assert "You are unsubscribed" not in answer.text
    if isinstance(location, Path):
        assert not location.exists()  # no empty store made in its place
    else:
        with closing(psycopg.connect(location.url)) as raw:  # nor an empty table
            assert raw.execute("SELECT to_regclass('subscribers')").fetchone() == (None,)


# --- unsubscribe ----------------------------------------------------------------------------


def test_get_shows_a_confirm_button_and_topics_and_changes_nothing(
    settings: Settings, base: str
) -> None:
    ana = add(settings, "ana@example.org", topics=(EMPATHY,))
    before = current(settings, ana.id)
    url = base + unsubscribe_path(settings, ana.id)
    for _ in range(3):
        page = requests.get(url, timeout=5)
        assert page.status_code == 200
        assert requests.head(url, timeout=5).status_code == 200
    assert 'id="confirm-unsubscribe"' in page.text
    assert 'method="post"' in page.text
    assert re.search(rf'value="{EMPATHY}" checked', page.text)
    assert f'value="{TRAINING}">' in page.text
    assert page.headers["Cache-Control"] == "no-store"
    assert page.headers["Referrer-Policy"] == "no-referrer"
    assert current(settings, ana.id) == before


def test_one_click_post_exactly_as_a_mail_provider_sends_it(settings: Settings, base: str) -> None:
    ana = add(settings, "ana@example.org")
    # RFC 8058 section 4's example: multipart/form-data, no cookies, no authentication.
    body = (
        b"--FormBoundaryjWmhtjORrn\r\n"
        b'Content-Disposition: form-data; name="List-Unsubscribe"\r\n'
        b"\r\n"
        b"One-Click\r\n"
        b"--FormBoundaryjWmhtjORrn--\r\n"
    )
    answer = requests.post(
        base + unsubscribe_path(settings, ana.id),
        data=body,
        headers={"Content-Type": "multipart/form-data; boundary=FormBoundaryjWmhtjORrn"},
        allow_redirects=False,
        timeout=5,
    )
    assert answer.status_code == 200
    assert "Location" not in answer.headers
    assert "Set-Cookie" not in answer.headers
    stored = current(settings, ana.id)
    assert stored.status is Status.UNSUBSCRIBED
    assert stored.status_source == "web"
    assert stored.status_reason == "one-click unsubscribe (RFC 8058)"


def test_one_click_post_form_encoded_and_from_requests_multipart(
    settings: Settings, base: str
) -> None:
    ana = add(settings, "ana@example.org")
    bea = add(settings, "bea@example.org")
    first = requests.post(
        base + unsubscribe_path(settings, ana.id),
        data="List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        allow_redirects=False,
        timeout=5,
    )
    second = requests.post(
        base + unsubscribe_path(settings, bea.id),
        files={"List-Unsubscribe": (None, "One-Click")},
        allow_redirects=False,
        timeout=5,
    )
    assert (first.status_code, second.status_code) == (200, 200)
    for person in (ana, bea):
        stored = current(settings, person.id)
        assert stored.status is Status.UNSUBSCRIBED
        assert stored.status_reason == "one-click unsubscribe (RFC 8058)"


def test_unsubscribe_is_idempotent_and_keeps_the_first_time(settings: Settings, base: str) -> None:
    ana = add(settings, "ana@example.org")
    url = base + unsubscribe_path(settings, ana.id)
    assert requests.post(url, data={"confirm": "yes"}, timeout=5).status_code == 200
    first = current(settings, ana.id)
    assert first.status_reason == "unsubscribe page"
    again = requests.post(url, data={"List-Unsubscribe": "One-Click"}, timeout=5)
    assert again.status_code == 200
    assert "You are unsubscribed" in again.text
    assert current(settings, ana.id) == first
    # Once unsubscribed, the GET page says so instead of offering the button again.
    assert 'id="confirm-unsubscribe"' not in requests.get(url, timeout=5).text


def test_bounced_address_stays_bounced_when_its_link_is_posted(
    settings: Settings, base: str
) -> None:
    ana = add(settings, "ana@example.org", status=Status.BOUNCED)
    answer = requests.post(base + unsubscribe_path(settings, ana.id), timeout=5)
    assert answer.status_code == 200
    assert current(settings, ana.id).status is Status.BOUNCED


def test_twenty_concurrent_posts_make_one_status_change(settings: Settings, base: str) -> None:
    ana = add(settings, "ana@example.org")
    with closing(store.open_store(settings.paths.database)) as conn:
        conn.execute("CREATE TABLE status_writes (n INTEGER)")
        if conn.dialect == "postgresql":
            conn.execute(
                "CREATE FUNCTION count_status_write() RETURNS trigger LANGUAGE plpgsql AS "
                "'BEGIN INSERT INTO status_writes VALUES (1); RETURN NEW; END'"
            )
            conn.execute(
                "CREATE TRIGGER count_status_writes AFTER UPDATE OF status ON subscribers"
                " FOR EACH ROW EXECUTE FUNCTION count_status_write()"
            )
        else:
            conn.execute(
                "CREATE TRIGGER count_status_writes AFTER UPDATE OF status ON subscribers"
                " BEGIN INSERT INTO status_writes VALUES (1); END"
            )
    url = base + unsubscribe_path(settings, ana.id)
    start = threading.Barrier(20)
    codes: list[int] = []

    def post() -> None:
        start.wait()
        codes.append(
            requests.post(url, data={"List-Unsubscribe": "One-Click"}, timeout=30).status_code
        )

    threads = [threading.Thread(target=post) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert codes == [200] * 20
    with closing(store.open_store(settings.paths.database)) as conn:
        assert conn.execute("SELECT count(*) FROM status_writes").fetchone()[0] == 1
    assert current(settings, ana.id).status is Status.UNSUBSCRIBED


def test_an_oversized_body_is_refused(settings: Settings, base: str) -> None:
    # (On an unsubscribe link the signed token is enough: tests/test_web_multipart.py.)
    answer = requests.post(
        f"{base}/subscribe",
        data={"email": "ana@example.org", "padding": "x" * MAX_BODY_BYTES},
        timeout=5,
    )
    assert answer.status_code == 413
    with closing(store.open_store(settings.paths.database)) as conn:
        assert store.get_subscriber(conn, "ana@example.org") is None


def test_a_form_cut_short_changes_nothing(settings: Settings, base: str) -> None:
    ana = add(settings, "ana@example.org")
    path = unsubscribe_path(settings, ana.id).replace("/unsubscribe/", "/preferences/")
    assert requests.post(base + path, data={"topic": [TRAINING, EMPATHY]}, timeout=5).ok
    body = urlencode([("topic", TRAINING), ("topic", EMPATHY)]).encode()
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    # The connection ends after the first topic: what arrived reads as a form holding one.
    sent = len(urlencode([("topic", TRAINING)]))
    assert post_cut_short(base, path, form, body, sent) == 400
    assert set(current(settings, ana.id).topics) == {EMPATHY, TRAINING}


def test_unknown_paths_and_methods(settings: Settings, base: str) -> None:
    assert requests.get(f"{base}/admin", timeout=5).status_code == 404
    refused = requests.get(f"{base}/preferences/u.1.x", timeout=5)
    assert refused.status_code == 405
    assert refused.headers["Allow"] == "POST"
    assert requests.put(f"{base}/subscribe", timeout=5).status_code == 405


# --- preferences ----------------------------------------------------------------------------


def test_preferences_post_saves_topics_with_source_and_time(settings: Settings, base: str) -> None:
    ana = add(settings, "ana@example.org")
    url = base + unsubscribe_path(settings, ana.id).replace("/unsubscribe/", "/preferences/")
    answer = requests.post(url, data={"topic": [TRAINING, EMPATHY]}, timeout=5)
    assert answer.status_code == 200
    assert "Your topics are saved" in answer.text
    stored = current(settings, ana.id)
    assert set(stored.topics) == {EMPATHY, TRAINING}
    assert stored.status is Status.ACTIVE
    with closing(store.open_store(settings.paths.database)) as conn:
        history = store.topic_history(conn, ana.id)
    assert len(history) == 1
    assert set(history[0][1]) == {EMPATHY, TRAINING}
    assert history[0][2] == "web"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", history[0][0])


def test_preferences_with_every_topic_means_all_and_none_is_refused(
    settings: Settings, base: str
) -> None:
    ana = add(settings, "ana@example.org", topics=(EMPATHY,))
    url = base + unsubscribe_path(settings, ana.id).replace("/unsubscribe/", "/preferences/")
    refused = requests.post(url, data={}, timeout=5)
    assert refused.status_code == 400
    assert "Choose at least one topic" in refused.text
    assert current(settings, ana.id).topics == (EMPATHY,)
    assert requests.post(url, data={"topic": "No such topic"}, timeout=5).status_code == 400
    every = requests.post(url, data={"topic": list(settings.taxonomy.topics)}, timeout=5)
    assert every.status_code == 200
    assert current(settings, ana.id).topics == ()


# --- subscribe and confirm ------------------------------------------------------------------


def test_subscribe_records_pending_and_sends_one_confirmation(
    settings: Settings, base: str
) -> None:
    form = requests.get(f"{base}/subscribe", timeout=5)
    assert form.status_code == 200
    assert 'name="email"' in form.text
    answer = requests.post(
        f"{base}/subscribe",
        data={"email": "Ana@Example.org", "name": "Ana Lima", "topic": EMPATHY},
        timeout=5,
    )
    assert answer.status_code == 200
    assert "Check your inbox" in answer.text
    ana = current(settings, "ana@example.org")
    assert (ana.status, ana.name, ana.topics, ana.source) == (
        Status.PENDING,
        "Ana Lima",
        (EMPATHY,),
        "web",
    )
    [sent] = confirmation_emails(settings)
    # The name came from a form anyone can fill in: it goes nowhere in the email.
    assert sent["To"] == "Ana@example.org"
    assert "Ana Lima" not in sent.as_string() and "Hello," in text_of(sent)
    assert sent["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert f"<{PUBLIC_URL}/unsubscribe/" in sent["List-Unsubscribe"]
    assert f"{PUBLIC_URL}/confirm/" in text_of(sent)


def test_confirmation_rate_limit_is_one_an_hour_and_survives_a_restart(
    settings: Settings,
) -> None:
    clock = [1_800_000_000.0]
    for _ in range(2):  # two app instances: a restart in between
        with serving(WebApp(settings, clock=lambda: clock[0])) as base:
            for _ in range(3):
                answer = requests.post(
                    f"{base}/subscribe", data={"email": "ana@example.org"}, timeout=5
                )
                assert answer.status_code == 200
    assert len(confirmation_emails(settings)) == 1
    clock[0] += 3601
    with serving(WebApp(settings, clock=lambda: clock[0])) as base:
        requests.post(f"{base}/subscribe", data={"email": "ANA@example.org"}, timeout=5)
        requests.post(f"{base}/subscribe", data={"email": "ana@example.org"}, timeout=5)
    assert len(confirmation_emails(settings)) == 2


def test_active_and_bounced_addresses_get_no_email_and_the_same_page(
    settings: Settings, base: str
) -> None:
    add(settings, "ana@example.org", name="Ana", topics=(EMPATHY,))
    add(settings, "bea@example.org", status=Status.BOUNCED)
    pages = [
        requests.post(f"{base}/subscribe", data={"email": address, "name": "Mallory"}, timeout=5)
        for address in ("ana@example.org", "bea@example.org", "new@example.org")
    ]
    assert [page.status_code for page in pages] == [200, 200, 200]
    texts = [
        page.text.replace(address, "X")
        for page, address in zip(
            pages, ("ana@example.org", "bea@example.org", "new@example.org"), strict=True
        )
    ]
    assert texts[0] == texts[1] == texts[2]
    assert [m["To"] for m in confirmation_emails(settings)] == ["new@example.org"]
    # The form cannot change an existing subscriber's details.
    ana = current(settings, "ana@example.org")
    assert (ana.name, ana.topics) == ("Ana", (EMPATHY,))


def test_subscribe_form_errors_are_shown_escaped(settings: Settings, base: str) -> None:
    answer = requests.post(
        f"{base}/subscribe", data={"email": "<script>alert(1)</script>", "name": "x"}, timeout=5
    )
    assert answer.status_code == 400
    assert "<script>alert(1)</script>" not in answer.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in answer.text
    assert 'role="alert"' in answer.text
    with closing(store.open_store(settings.paths.database)) as conn:
        assert store.count_subscribers(conn) == 0


def test_the_hidden_field_keeps_robots_out(settings: Settings, base: str) -> None:
    answer = requests.post(
        f"{base}/subscribe",
        data={"email": "bot@example.org", "website": "http://spam.example"},
        timeout=5,
    )
    assert answer.status_code == 200
    with closing(store.open_store(settings.paths.database)) as conn:
        assert store.get_subscriber(conn, "bot@example.org") is None
    assert confirmation_emails(settings) == []


def test_confirmation_link_get_shows_a_button_and_post_confirms(
    settings: Settings, base: str
) -> None:
    requests.post(f"{base}/subscribe", data={"email": "ana@example.org"}, timeout=5)
    [sent] = confirmation_emails(settings)
    found = re.search(rf"{re.escape(PUBLIC_URL)}/confirm/\S+", text_of(sent))
    assert found
    url = local(found.group(0), base)
    page = requests.get(url, timeout=5)
    assert page.status_code == 200
    assert 'id="confirm-subscription"' in page.text
    assert current(settings, "ana@example.org").status is Status.PENDING
    done = requests.post(url, timeout=5)
    assert done.status_code == 200
    assert "You are subscribed" in done.text
    ana = current(settings, "ana@example.org")
    assert (ana.status, ana.status_source) == (Status.ACTIVE, "web")
    assert ana.confirmed_at is not None
    assert requests.post(url, timeout=5).status_code == 200  # idempotent
    assert current(settings, "ana@example.org") == ana


def test_an_old_confirmation_link_does_not_undo_a_later_unsubscribe(
    settings: Settings, base: str
) -> None:
    ana = add(settings, "ana@example.org")
    signer = signer_for(settings)
    old_link = f"{base}/confirm/{signer.confirm_token(ana.id, now=1_000_000_000)}"
    requests.post(base + unsubscribe_path(settings, ana.id), timeout=5)
    with serving(WebApp(settings, clock=lambda: 1_000_000_100)) as early:
        answer = requests.post(early + old_link[len(base) :], timeout=5)
    assert answer.status_code == 409
    assert current(settings, ana.id).status is Status.UNSUBSCRIBED
    # Asking again (a new link, issued after the unsubscribe) brings the reader back.
    fresh = f"{base}/confirm/{signer.confirm_token(ana.id, now=time.time() + 1)}"
    assert requests.post(fresh, timeout=5).status_code == 200
    assert current(settings, ana.id).status is Status.ACTIVE


def test_an_expired_confirmation_link_is_refused(settings: Settings, base: str) -> None:
    ana = add(settings, "ana@example.org", status=Status.PENDING)
    token = signer_for(settings).confirm_token(ana.id, now=1_000_000_000)
    answer = requests.post(f"{base}/confirm/{token}", timeout=5)
    assert answer.status_code == 400
    assert "expired" in answer.text
    assert current(settings, ana.id).status is Status.PENDING


def test_a_newsletter_can_override_a_page(settings: Settings) -> None:
    override = settings.paths.templates / "pages" / "error.html"
    override.parent.mkdir(parents=True)
    override.write_text("<p>Our own error page: {{ heading }}</p>", "utf-8")
    with serving(WebApp(settings)) as base:
        answer = requests.get(f"{base}/nowhere", timeout=5)
    assert answer.status_code == 404
    assert answer.text == "<p>Our own error page: Page not found</p>"


# --- done when ------------------------------------------------------------------------------


def test_list_unsubscribe_of_a_sent_message_leaves_the_reader_out_of_the_next_send(
    settings: Settings, base: str
) -> None:
    ana = add(settings, "ana@example.org", name="Ana")
    bea = add(settings, "bea@example.org", name="Bea")
    signer = signer_for(settings)
    prepared = prepare_issue(make_rendered(), settings)
    with closing(store.open_store(settings.paths.database)) as conn:
        recipients = [
            Recipient(s.id, s.email, s.name, unsubscribe_url(settings, signer, s.id))
            for batch in store.iter_subscriber_batches(conn, status=Status.ACTIVE)
            for s in batch
        ]
    with create_provider(settings) as outbox:
        outbox.send_batch(list(prepared.messages_for(recipients)))
    eml = settings.paths.build / "outbox" / prepared.month / f"{ana.id}.eml"
    message = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default)
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    https_url = re.search(r"<(https://[^>]+)>", str(message["List-Unsubscribe"]))
    assert https_url
    answer = requests.post(
        local(https_url.group(1), base),
        files={"List-Unsubscribe": (None, "One-Click")},
        allow_redirects=False,
        timeout=5,
    )
    assert answer.status_code == 200
    assert current(settings, ana.id).status is Status.UNSUBSCRIBED
    with closing(store.open_store(settings.paths.database)) as conn:
        next_send = [
            s.id
            for batch in store.iter_subscriber_batches(conn, status=Status.ACTIVE)
            for s in batch
        ]
    assert next_send == [bea.id]


def test_a_removed_persons_links_never_act_on_the_next_newcomer(
    settings: Settings, base: str
) -> None:
    from newsletter.csvio import import_csv

    with closing(store.open_store(settings.paths.database)) as conn:
        import_csv(conn, REPO / "subscribers.example.csv", settings.taxonomy)
        last = max(s.id for s in store.iter_subscribers(conn))
        removed = store.require_subscriber(conn, last)
    signer = signer_for(settings)
    old_unsubscribe = f"{base}/unsubscribe/{signer.unsubscribe_token(removed.id)}"
    old_confirm = f"{base}/confirm/{signer.confirm_token(removed.id, now=time.time())}"
    with closing(store.open_store(settings.paths.database)) as conn:
        store.remove_subscriber(conn, removed.id)
    answer = requests.post(f"{base}/subscribe", data={"email": "newcomer@example.org"}, timeout=5)
    assert answer.status_code == 200
    newcomer = current(settings, "newcomer@example.org")
    assert newcomer.id != removed.id
    # The old confirm link must not activate a stranger without their consent...
    requests.post(old_confirm, timeout=5)
    # ...and the old unsubscribe link must not unsubscribe them.
    requests.post(old_unsubscribe, data={"List-Unsubscribe": "One-Click"}, timeout=5)
    assert current(settings, newcomer.id).status is Status.PENDING


def test_serve_on_a_port_in_use_is_an_error_line(settings: Settings) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(
            main, ["--config", str(settings.source), "serve", "--port", str(port)]
        )
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert f"Error: cannot listen on 127.0.0.1:{port}" in result.output


@pytest.mark.parametrize("keep", [True, False], ids=["kept", "forgotten"])
def test_a_name_typed_in_the_form_is_shown_on_the_confirm_page_and_kept_only_if_ticked(
    settings: Settings, base: str, keep: bool
) -> None:
    hostile = "Your account is locked <see evil.example>"
    requests.post(
        f"{base}/subscribe", data={"email": "vic@example.org", "name": hostile}, timeout=5
    )
    [sent] = confirmation_emails(settings)
    found = re.search(rf"{re.escape(PUBLIC_URL)}/confirm/\S+", text_of(sent))
    assert found
    url = local(found.group(0), base)
    page = requests.get(url, timeout=5)
    assert (
        "Greet me as <strong>Your account is locked &lt;see evil.example&gt;</strong>" in page.text
    )
    assert 'name="keep_name" value="yes"' in page.text and " checked" in page.text
    done = requests.post(url, data={"keep_name": "yes"} if keep else {}, timeout=5)
    assert done.status_code == 200
    vic = current(settings, "vic@example.org")
    assert vic.status is Status.ACTIVE
    assert vic.name == (hostile if keep else "")
