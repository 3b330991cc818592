"""POST /webhooks/<source>, over real HTTP on loopback, for every provider."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa

from newsletter import store
from newsletter.errors import SettingsError, WebhookConfigError
from newsletter.settings import Settings
from newsletter.store import Status
from newsletter.web import WebApp
from newsletter.webhooks import WebhookReceiver

from .conftest import store_out_of_reach
from .web_server import add, current, post_cut_short, serving, web_settings
from .webhook_senders import (
    MAILGUN_KEY,
    POSTMARK_PASSWORD,
    POSTMARK_USER,
    RESEND_KEY,
    RESEND_SECRET,
    TOPIC,
    MailgunSender,
    PostmarkSender,
    Request,
    ResendSender,
    SendgridSender,
    SesSender,
    SnsServer,
    now,
    signing_certificate,
    sns_server,
)

# The same tests on both stores (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("store_backend")

SOURCES = ["mailgun", "sendgrid", "postmark", "ses", "resend"]
# Postmark signs nothing: no body to tamper with, no timestamp, no delivery id.
SIGNED = ["mailgun", "sendgrid", "ses", "resend"]
MAX_BODY = 16384
ENVIRONMENT = {
    "MAILGUN_WEBHOOK_SIGNING_KEY": MAILGUN_KEY,
    "POSTMARK_WEBHOOK_PASSWORD": POSTMARK_PASSWORD,
    "RESEND_WEBHOOK_SECRET": RESEND_SECRET,
}


class Sender(Protocol):
    def event(
        self, kind: str, email: str, *, now: float, event_id: str = "", message_id: str = ""
    ) -> Request: ...


@dataclass
class Hooks:
    settings: Settings
    base: str
    senders: dict[str, Any]
    sns: SnsServer
    ses_key: rsa.RSAPrivateKey

    def post(self, source: str, request: Request) -> requests.Response:
        headers, body = request
        return requests.post(
            f"{self.base}/webhooks/{source}", data=body, headers=headers, timeout=10
        )

    def event_rows(self) -> list[tuple[Any, ...]]:
        with closing(store.open_store(self.settings.paths.database)) as conn:
            return conn.execute(
                "SELECT provider, kind, email, issue, status_change FROM delivery_events"
            ).fetchall()


def webhook_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, public_key: str) -> Settings:
    for name, value in ENVIRONMENT.items():
        monkeypatch.setenv(name, value)
    return web_settings(
        tmp_path,
        monkeypatch,
        f"[webhooks]\nmax_body_bytes = {MAX_BODY}\n"
        "[webhooks.mailgun]\n"
        f'[webhooks.sendgrid]\npublic_key = "{public_key}"\n'
        f'[webhooks.postmark]\nusername = "{POSTMARK_USER}"\n'
        f'[webhooks.ses]\ntopic_arns = ["{TOPIC}"]\n'
        "[webhooks.resend]\n",
    )


@pytest.fixture
def hooks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Hooks]:
    sendgrid = SendgridSender()
    ses_key, certificate = signing_certificate()
    with sns_server(tmp_path, certificate) as sns:
        settings = webhook_settings(tmp_path, monkeypatch, sendgrid.public_key)
        receiver = WebhookReceiver(
            settings, sns_host=re.compile(r"localhost:\d+"), sns_ca_file=str(sns.ca_file)
        )
        senders = {
            "mailgun": MailgunSender(),
            "sendgrid": sendgrid,
            "postmark": PostmarkSender(),
            "ses": SesSender(ses_key, f"{sns.base}/SimpleNotificationService-1.pem"),
            "resend": ResendSender(),
        }
        with serving(WebApp(settings, webhooks=receiver)) as base:
            yield Hooks(settings, base, senders, sns, ses_key)


def assert_refused(response: requests.Response, status: int) -> None:
    # Every refusal has the same shape: a status, an empty body, the same headers.
    assert response.status_code == status
    assert response.content == b""
    assert response.headers["Content-Type"] == "text/plain; charset=utf-8"


def assert_unchanged(hooks: Hooks, email: str = "reader@example.net") -> None:
    assert hooks.event_rows() == []
    assert current(hooks.settings, email).status is Status.ACTIVE


# --- what a valid event does ------------------------------------------------------------------


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize(
    ("kind", "status"),
    [("hard_bounce", Status.BOUNCED), ("complaint", Status.COMPLAINED)],
    ids=["hard-bounce", "complaint"],
)
def test_a_valid_event_is_recorded_and_changes_the_subscriber(
    hooks: Hooks, source: str, kind: str, status: Status
) -> None:
    add(hooks.settings, "reader@example.net")
    response = hooks.post(
        source, hooks.senders[source].event(kind, "reader@example.net", now=now())
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"received": 1, "recorded": 1, "duplicates": 0, "status_changes": 1}
    assert current(hooks.settings, "reader@example.net").status is status
    assert hooks.event_rows() == [
        (source, kind, "reader@example.net", None, f"active -> {status.value}")
    ]


@pytest.mark.parametrize("source", ["mailgun", "sendgrid", "postmark"])
def test_an_unsubscribe_event_unsubscribes(hooks: Hooks, source: str) -> None:
    add(hooks.settings, "reader@example.net")
    request = hooks.senders[source].event("unsubscribe", "reader@example.net", now=now())
    assert hooks.post(source, request).status_code == 200
    assert current(hooks.settings, "reader@example.net").status is Status.UNSUBSCRIBED


@pytest.mark.parametrize("source", SOURCES)
def test_an_event_for_an_unknown_address_is_acknowledged_and_kept(
    hooks: Hooks, source: str
) -> None:
    request = hooks.senders[source].event("hard_bounce", "stranger@example.net", now=now())
    response = hooks.post(source, request)
    assert response.status_code == 200
    assert response.json()["recorded"] == 1
    assert [row[2] for row in hooks.event_rows()] == ["stranger@example.net"]


@pytest.mark.parametrize("source", ["sendgrid", "postmark"])
def test_nobody_is_ever_reactivated(hooks: Hooks, source: str) -> None:
    add(hooks.settings, "left@example.net", status=Status.UNSUBSCRIBED)
    sender = hooks.senders[source]
    for kind in ("delivered", "hard_bounce", "complaint"):
        assert hooks.post(source, sender.event(kind, "left@example.net", now=now())).ok
    assert current(hooks.settings, "left@example.net").status is Status.UNSUBSCRIBED
    assert [row[4] for row in hooks.event_rows()] == ["", "", ""]


# --- soft bounces -----------------------------------------------------------------------------


def test_soft_bounces_count_once_a_day_and_a_delivery_resets_them(hooks: Hooks) -> None:
    add(hooks.settings, "flaky@example.net")
    sender = hooks.senders["mailgun"]
    day = 86400.0
    start = now() - 10 * day

    def soft(at: float) -> None:
        request = sender.event("soft_bounce", "flaky@example.net", now=at)
        # The signature's own timestamp must be fresh; the event's time is when it happened.
        headers, body = request
        payload = json.loads(body)
        fresh = sender.event("soft_bounce", "flaky@example.net", now=now())
        fresh_payload = json.loads(fresh[1])
        fresh_payload["event-data"] = payload["event-data"]
        assert hooks.post("mailgun", (headers, json.dumps(fresh_payload).encode())).ok

    soft(start)
    soft(start + 60)  # the same day: counts once
    soft(start + day)
    assert current(hooks.settings, "flaky@example.net").status is Status.ACTIVE
    assert hooks.post("mailgun", sender.event("delivered", "flaky@example.net", now=now())).ok
    soft(start + 2 * day)
    soft(start + 3 * day)
    soft(start + 2 * day + 60)  # a late event of a day already counted: no new day
    assert current(hooks.settings, "flaky@example.net").status is Status.ACTIVE
    soft(start + 4 * day)  # the third day since the delivery: the default threshold is 3
    subscriber = current(hooks.settings, "flaky@example.net")
    assert subscriber.status is Status.BOUNCED
    assert "3 soft bounces on different days" in subscriber.status_reason


# --- what is refused --------------------------------------------------------------------------


def tamper(source: str, request: Request) -> Request:
    headers, body = request
    if source == "mailgun":
        # Mailgun signs timestamp + token: change what it signs.
        payload = json.loads(body)
        payload["signature"]["timestamp"] = str(int(payload["signature"]["timestamp"]) - 1)
        return headers, json.dumps(payload).encode()
    tampered = body.replace(b"reader@example.net", b"victim@example.net")
    assert tampered != body
    return headers, tampered


@pytest.mark.parametrize("source", SIGNED)
def test_a_tampered_body_is_refused(hooks: Hooks, source: str) -> None:
    add(hooks.settings, "reader@example.net")
    add(hooks.settings, "victim@example.net")
    request = hooks.senders[source].event("hard_bounce", "reader@example.net", now=now())
    assert_refused(hooks.post(source, tamper(source, request)), 401)
    assert_unchanged(hooks)
    assert current(hooks.settings, "victim@example.net").status is Status.ACTIVE


def wrong_sender(hooks: Hooks, source: str) -> Any:
    if source == "mailgun":
        return MailgunSender("another-signing-key")
    if source == "sendgrid":
        return SendgridSender()
    if source == "postmark":
        return PostmarkSender(POSTMARK_PASSWORD[:-1] + "X")
    if source == "resend":
        return ResendSender(RESEND_KEY[::-1])
    other, _ = signing_certificate()
    return SesSender(other, hooks.senders["ses"].cert_url)


@pytest.mark.parametrize("source", SOURCES)
def test_the_wrong_key_is_refused(hooks: Hooks, source: str) -> None:
    add(hooks.settings, "reader@example.net")
    request = wrong_sender(hooks, source).event("hard_bounce", "reader@example.net", now=now())
    assert_refused(hooks.post(source, request), 401)
    assert_unchanged(hooks)


@pytest.mark.parametrize("source", SIGNED)
def test_an_expired_timestamp_is_refused(hooks: Hooks, source: str) -> None:
    add(hooks.settings, "reader@example.net")
    age = 3600 if source == "ses" else 300
    request = hooks.senders[source].event("hard_bounce", "reader@example.net", now=now() - age - 60)
    assert_refused(hooks.post(source, request), 403)
    assert_unchanged(hooks)


@pytest.mark.parametrize("source", SIGNED)
def test_a_replayed_delivery_is_acknowledged_and_changes_nothing(hooks: Hooks, source: str) -> None:
    # Acknowledged, not refused: a provider retrying a delivery whose 200 it lost would
    # otherwise retry until it disabled the endpoint. Its events are kept already.
    add(hooks.settings, "reader@example.net")
    request = hooks.senders[source].event("delivered", "reader@example.net", now=now())
    assert hooks.post(source, request).status_code == 200
    add(hooks.settings, "second@example.net")
    before = hooks.event_rows()
    again = hooks.post(source, request)
    assert (again.status_code, again.json()) == (200, {"duplicate": True})
    assert hooks.event_rows() == before


def test_postmark_twice_is_one_event(hooks: Hooks) -> None:
    add(hooks.settings, "reader@example.net")
    request = hooks.senders["postmark"].event("hard_bounce", "reader@example.net", now=now())
    assert hooks.post("postmark", request).json()["recorded"] == 1
    assert hooks.post("postmark", request).json() == {
        "received": 1,
        "recorded": 0,
        "duplicates": 1,
        "status_changes": 0,
    }
    assert len(hooks.event_rows()) == 1


def test_the_same_event_in_two_deliveries_is_one_row(hooks: Hooks) -> None:
    sender = hooks.senders["sendgrid"]
    first = sender.event("delivered", "reader@example.net", now=now(), event_id="ev-1")
    again = sender.event("delivered", "reader@example.net", now=now(), event_id="ev-1")
    assert hooks.post("sendgrid", first).json()["recorded"] == 1
    assert hooks.post("sendgrid", again).json()["duplicates"] == 1
    assert len(hooks.event_rows()) == 1


@pytest.mark.parametrize("source", SOURCES)
def test_an_oversized_body_is_refused(hooks: Hooks, source: str) -> None:
    headers, _ = hooks.senders[source].event("delivered", "reader@example.net", now=now())
    response = hooks.post(source, (headers, b"{" + b" " * MAX_BODY + b"}"))
    assert_refused(response, 413)
    assert hooks.event_rows() == []


@pytest.mark.parametrize("source", SOURCES)
def test_a_body_cut_short_is_refused_as_incomplete(hooks: Hooks, source: str) -> None:
    add(hooks.settings, "reader@example.net")
    headers, body = hooks.senders[source].event("hard_bounce", "reader@example.net", now=now())
    # 400, not a signature refusal (401): the request never arrived whole.
    assert post_cut_short(hooks.base, f"/webhooks/{source}", headers, body, len(body) - 1) == 400
    assert_unchanged(hooks)


def malformed(hooks: Hooks, source: str) -> Request:
    body = b'{"event": "bounce", '
    if source == "sendgrid":
        return hooks.senders[source].sign(body, now())
    if source == "resend":
        return hooks.senders[source].sign(body, now())
    if source == "postmark":
        return hooks.senders[source].sign(body, now())
    if source == "ses":
        # A correctly signed envelope whose SES message is not JSON.
        return hooks.senders[source].envelope("Notification", '{"notificationType": ', now=now())
    return {"Content-Type": "application/json"}, body


@pytest.mark.parametrize("source", SOURCES)
def test_malformed_json_is_refused(hooks: Hooks, source: str) -> None:
    add(hooks.settings, "reader@example.net")
    assert_refused(hooks.post(source, malformed(hooks, source)), 400)
    assert_unchanged(hooks)


def test_an_unknown_topic_is_refused_before_any_certificate_is_fetched(hooks: Hooks) -> None:
    add(hooks.settings, "reader@example.net")
    sender = SesSender(hooks.ses_key, hooks.senders["ses"].cert_url, topic=TOPIC + "-other")
    assert_refused(
        hooks.post("ses", sender.event("hard_bounce", "reader@example.net", now=now())), 403
    )
    assert hooks.sns.fetches == []
    assert_unchanged(hooks)


@pytest.mark.parametrize(
    "url",
    [
        "https://sns.eu-west-1.amazonaws.com.evil.example/SimpleNotificationService-1.pem",
        "https://evil.example/SimpleNotificationService-1.pem",
        "http://{host}/SimpleNotificationService-1.pem",
        "https://user@{host}/SimpleNotificationService-1.pem",
        "https://{host}/not-a-certificate",
    ],
    ids=["lookalike-host", "foreign-host", "plain-http", "user-info", "not-pem"],
)
def test_a_certificate_url_on_a_foreign_host_is_refused(hooks: Hooks, url: str) -> None:
    add(hooks.settings, "reader@example.net")
    host = hooks.sns.base.removeprefix("https://")
    sender = SesSender(hooks.ses_key, url.format(host=host))
    assert_refused(
        hooks.post("ses", sender.event("hard_bounce", "reader@example.net", now=now())), 403
    )
    assert hooks.sns.fetches == []
    assert_unchanged(hooks)


def test_the_certificate_is_fetched_once_and_both_signature_versions_verify(hooks: Hooks) -> None:
    sender = hooks.senders["ses"]
    for version, address in (("1", "one@example.net"), ("2", "two@example.net")):
        sender.version = version
        assert hooks.post("ses", sender.event("delivered", address, now=now())).status_code == 200
    assert len(hooks.sns.fetches) == 1
    assert len(hooks.event_rows()) == 2


def test_an_sns_subscription_is_confirmed_and_logged(
    hooks: Hooks, capfd: pytest.CaptureFixture[str]
) -> None:
    sender = hooks.senders["ses"]
    request = sender.envelope(
        "SubscriptionConfirmation",
        "You have chosen to subscribe to the topic.",
        now=now(),
        SubscribeURL=f"{hooks.sns.base}/confirm?Action=ConfirmSubscription&Token=tok123",
        Token="tok123",
    )
    assert hooks.post("ses", request).status_code == 200
    assert hooks.sns.confirmations == ["/confirm?Action=ConfirmSubscription&Token=tok123"]
    assert f"confirmed the subscription to {TOPIC}" in capfd.readouterr().err


def test_a_subscribe_url_on_a_foreign_host_is_not_followed(hooks: Hooks) -> None:
    request = hooks.senders["ses"].envelope(
        "SubscriptionConfirmation",
        "Subscribe",
        now=now(),
        SubscribeURL="https://evil.example/confirm?Token=t",
        Token="t",
    )
    assert_refused(hooks.post("ses", request), 403)
    assert hooks.sns.confirmations == []


def test_unknown_sources_and_methods(hooks: Hooks) -> None:
    assert_refused(requests.post(f"{hooks.base}/webhooks/mandrill", data=b"{}", timeout=5), 404)
    response = requests.get(f"{hooks.base}/webhooks/mailgun", timeout=5)
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"


def test_a_source_not_configured_is_not_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = web_settings(tmp_path, monkeypatch)
    with serving(WebApp(settings)) as base:
        response = requests.post(f"{base}/webhooks/mailgun", data=b"{}", timeout=5)
    assert_refused(response, 404)


def test_no_secret_or_signature_reaches_the_log(
    hooks: Hooks, capfd: pytest.CaptureFixture[str]
) -> None:
    add(hooks.settings, "reader@example.net")
    sent = []
    for source in SOURCES:
        good = hooks.senders[source].event("delivered", "reader@example.net", now=now())
        bad = wrong_sender(hooks, source).event("delivered", "reader@example.net", now=now())
        for request in (good, bad, good):
            hooks.post(source, request)
            sent.append(request)
    log = capfd.readouterr().err
    assert "refused" in log
    secrets_and_signatures = [MAILGUN_KEY, POSTMARK_PASSWORD, RESEND_SECRET]
    for headers, body in sent:
        secrets_and_signatures += [
            v for k, v in headers.items() if "signature" in k.lower() or k == "Authorization"
        ]
        payload = json.loads(body)
        if isinstance(payload, dict):
            signature = payload.get("signature") or payload.get("Signature")
            if isinstance(signature, dict):
                secrets_and_signatures += [signature["signature"], signature["token"]]
            elif isinstance(signature, str):
                secrets_and_signatures.append(signature)
    for value in secrets_and_signatures:
        for part in value.split():
            assert part.removeprefix("v1,")[:16] not in log


def test_a_missing_secret_stops_start_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = webhook_settings(tmp_path, monkeypatch, SendgridSender().public_key)
    monkeypatch.delenv("RESEND_WEBHOOK_SECRET")
    with pytest.raises(WebhookConfigError, match="RESEND_WEBHOOK_SECRET"):
        WebApp(settings)


def test_an_unusable_sendgrid_key_stops_start_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = webhook_settings(tmp_path, monkeypatch, "bm90IGEga2V5")
    with pytest.raises(WebhookConfigError, match=r"\[webhooks.sendgrid\] public_key"):
        WebApp(settings)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("[webhooks.mandrill]\n", r"webhooks.mandrill: unknown key"),
        ("[webhooks.ses]\n", r"webhooks.ses.topic_arns: missing"),
        ('[webhooks.ses]\ntopic_arns = ["not-an-arn"]\n', r"must be a list of SNS topic ARNs"),
        ("[webhooks.mailgun]\nsecret = 'x'\n", r"webhooks.mailgun.secret: unknown key"),
        ("[webhooks]\nsoft_bounce_threshold = 0\n", r"soft_bounce_threshold: must be a whole"),
        ("[webhooks.postmark]\n", r"webhooks.postmark.username: missing"),
    ],
)
def test_webhook_settings_are_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, table: str, message: str
) -> None:
    with pytest.raises(SettingsError, match=message):
        web_settings(tmp_path, monkeypatch, table)


# --- many at once, and a failing store --------------------------------------------------------


def test_concurrent_requests_are_all_kept_and_a_replay_among_them_is_kept_once(
    hooks: Hooks,
) -> None:
    for n in range(40):
        add(hooks.settings, f"reader{n}@example.net")
    sender = hooks.senders["resend"]
    requests_ = [
        sender.event("hard_bounce", f"reader{n}@example.net", now=now()) for n in range(40)
    ]
    replayed = requests_[0]
    with ThreadPoolExecutor(max_workers=12) as pool:
        answers = list(pool.map(lambda r: hooks.post("resend", r), [*requests_, replayed]))
    assert [a.status_code for a in answers] == [200] * 41
    assert sum(a.json() == {"duplicate": True} for a in answers) == 1
    assert len(hooks.event_rows()) == 40
    assert all(
        current(hooks.settings, f"reader{n}@example.net").status is Status.BOUNCED
        for n in range(40)
    )


def test_a_missing_store_answers_503_and_the_retry_is_accepted_later(hooks: Hooks) -> None:
    add(hooks.settings, "reader@example.net")
    request = hooks.senders["mailgun"].event("hard_bounce", "reader@example.net", now=now())
    with store_out_of_reach(hooks.settings.paths.database):
        assert_refused(hooks.post("mailgun", request), 503)
    # Nothing of the refused request was kept, its token included: the provider's retry counts.
    assert hooks.post("mailgun", request).status_code == 200
    assert current(hooks.settings, "reader@example.net").status is Status.BOUNCED


def test_serve_says_which_secret_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from newsletter.cli import main

    settings = webhook_settings(tmp_path, monkeypatch, SendgridSender().public_key)
    monkeypatch.delenv("MAILGUN_WEBHOOK_SIGNING_KEY")
    result = CliRunner().invoke(main, ["--config", str(settings.source), "serve", "--port", "0"])
    assert result.exit_code == 1
    assert (
        "Error: [webhooks.mailgun] is set up but the environment variable "
        "MAILGUN_WEBHOOK_SIGNING_KEY is not" in result.output
    )
