"""End to end: a send through loopback providers, their events posted to the webhooks, the report.

Also ``newsletter webhooks test`` against the running app.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from pytest_httpserver import HTTPServer

from newsletter import store
from newsletter.cli import main
from newsletter.errors import InvalidInput
from newsletter.report import issue_report
from newsletter.settings import Settings
from newsletter.store import Status
from newsletter.web import WebApp

from .sending_helpers import make_folder, run_send
from .web_server import serving
from .webhook_senders import (
    MAILGUN_KEY,
    POSTMARK_PASSWORD,
    POSTMARK_USER,
    RESEND_SECRET,
    MailgunSender,
    PostmarkSender,
    SendgridSender,
    now,
)

# The same tests on both stores (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("store_backend")

BATCH_ID = "<20261123101500.1.ABCDEF@example.org>"


@pytest.fixture
def sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, httpserver: HTTPServer
) -> Iterator[tuple[Settings, str]]:
    """Issue 2026-10 sent to reader1..reader5 through Mailgun (a loopback stand-in), and the
    web app with Mailgun's and Postmark's webhooks running."""
    monkeypatch.setenv("MAILGUN_API_KEY", "key-test-0123456789")
    monkeypatch.setenv("MAILGUN_WEBHOOK_SIGNING_KEY", MAILGUN_KEY)
    monkeypatch.setenv("POSTMARK_WEBHOOK_PASSWORD", POSTMARK_PASSWORD)
    httpserver.expect_request("/v3/example.org/messages", method="POST").respond_with_json(
        {"id": BATCH_ID, "message": "Queued. Thank you."}
    )
    toml = (
        "[newsletter]\n"
        'from_email = "digest@example.org"\n'
        f'[provider]\nname = "mailgun"\nbase_url = "{httpserver.url_for("").rstrip("/")}"\n'
        "[webhooks.mailgun]\n"
        f'[webhooks.postmark]\nusername = "{POSTMARK_USER}"\n'
    )
    settings, issue = make_folder(tmp_path, toml, 5)
    report = run_send(settings, issue)
    assert report.sent == 5
    with serving(WebApp(settings)) as base:
        yield settings, base


def post(base: str, source: str, request: tuple[dict[str, str], bytes]) -> None:
    import requests

    headers, body = request
    response = requests.post(f"{base}/webhooks/{source}", data=body, headers=headers, timeout=10)
    assert response.status_code == 200, response.text


def status_of(settings: Settings, email: str) -> Status:
    with closing(store.open_store(settings.paths.database)) as conn:
        return store.require_subscriber(conn, email).status


def run(settings: Settings, *args: str) -> str:
    result = CliRunner().invoke(main, ["--config", str(settings.source), *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_events_for_a_sent_issue_show_in_its_report(sent: tuple[Settings, str]) -> None:
    settings, base = sent
    mailgun = MailgunSender()
    message_id = BATCH_ID.strip("<>")  # Mailgun's events name it without the brackets
    for kind, reader in [
        ("delivered", 1),
        ("delivered", 2),
        ("hard_bounce", 3),
        ("complaint", 4),
        ("delivered", 4),
    ]:
        email = f"reader{reader}@example.net"
        post(base, "mailgun", mailgun.event(kind, email, now=now(), message_id=message_id))
    # Postmark names our own Message-ID's issue and subscriber too: <nl.2026-10.5.…@example.org>
    with closing(store.open_store(settings.paths.database)) as conn:
        reader5 = store.require_subscriber(conn, "reader5@example.net").id
    ours = f"<nl.2026-10.{reader5}.abc@example.org>"
    postmark = PostmarkSender()
    post(
        base,
        "postmark",
        postmark.event("soft_bounce", "reader5@example.net", now=now(), message_id=ours),
    )
    # An event for a message of no issue of this store counts nowhere.
    post(
        base,
        "mailgun",
        mailgun.event("complaint", "reader2@example.net", now=now(), message_id="other@x"),
    )

    assert status_of(settings, "reader3@example.net") is Status.BOUNCED
    assert status_of(settings, "reader4@example.net") is Status.COMPLAINED
    assert status_of(settings, "reader2@example.net") is Status.COMPLAINED
    assert status_of(settings, "reader1@example.net") is Status.ACTIVE

    found = json.loads(run(settings, "report", "2026-10", "--json", "--details"))
    assert found["sent"] == 5
    assert found["counts"] == {
        "delivered": 3,
        "soft_bounce": 1,
        "hard_bounce": 1,
        "complaint": 1,
        "unsubscribe": 0,
    }
    assert found["complaint_rate"] == 0.2
    assert found["bounce_rate"] == 0.2
    assert found["addresses"]["hard_bounce"] == ["reader3@example.net"]
    assert found["addresses"]["complaint"] == ["reader4@example.net"]
    assert found["addresses"]["soft_bounce"] == ["reader5@example.net"]
    assert len(found["warnings"]) == 2

    text = run(settings, "report", "2026-10", "--details")
    assert re.search(r"Complaints\s+1\s+20\.00% of sent", text)
    assert "Warning: the complaint rate is 20.00%, above 0.1 %" in text
    assert "Warning: the bounce rate is 20.00%, above 2 %" in text
    assert "      reader3@example.net" in text
    assert "addresses" not in json.loads(run(settings, "report", "2026-10", "--json"))


def test_the_html_report_has_a_chart_and_no_secret(
    sent: tuple[Settings, str], tmp_path: Path
) -> None:
    settings, base = sent
    post(
        base,
        "mailgun",
        MailgunSender().event("hard_bounce", "reader1@example.net", now=now(), message_id=BATCH_ID),
    )
    page = tmp_path / "report.html"
    output = run(settings, "report", "2026-10", "--html", str(page), "--details")
    html = page.read_text("utf-8")
    assert "<svg" in html and "day 0: 1 hard_bounce" in html
    assert "reader1@example.net" in html
    for secret in (MAILGUN_KEY, POSTMARK_PASSWORD, "key-test-0123456789"):
        assert secret not in html and secret not in output


def test_a_report_of_an_issue_never_sent_says_so(sent: tuple[Settings, str]) -> None:
    settings, _ = sent
    with pytest.raises(InvalidInput, match="no send of 2025-01 is recorded"):
        issue_report(settings, "2025-01")


def test_a_clean_issue_has_no_warning(sent: tuple[Settings, str]) -> None:
    settings, base = sent
    post(
        base,
        "mailgun",
        MailgunSender().event("delivered", "reader1@example.net", now=now(), message_id=BATCH_ID),
    )
    found = issue_report(settings, "2026-10")
    assert found.warnings == []
    assert found.as_json()["counts"] == {
        "delivered": 1,
        "soft_bounce": 0,
        "hard_bounce": 0,
        "complaint": 0,
        "unsubscribe": 0,
    }


# --- newsletter webhooks test -----------------------------------------------------------------


def test_webhooks_test_posts_signed_samples_the_app_accepts(
    sent: tuple[Settings, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, base = sent
    output = run(settings, "webhooks", "test", "mailgun", "--url", base)
    assert output.splitlines() == [
        "delivered (alice@example.com): 200 recorded 1, duplicates 0, status changes 0",
        "failed (bob@example.com): 200 recorded 1, duplicates 0, status changes 0",
        "complained (carol@example.com): 200 recorded 1, duplicates 0, status changes 0",
    ]
    assert "Delivery: 200 recorded 1" in run(
        settings, "webhooks", "test", "postmark", "--url", base + "/webhooks/postmark"
    )


def test_webhooks_test_says_when_the_app_refuses(
    sent: tuple[Settings, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, base = sent
    monkeypatch.setenv("MAILGUN_WEBHOOK_SIGNING_KEY", "not-the-apps-key")
    result = CliRunner().invoke(
        main, ["--config", str(settings.source), "webhooks", "test", "mailgun", "--url", base]
    )
    assert result.exit_code == 1
    assert "401 refused: the signature or credentials do not match" in result.output
    assert "not-the-apps-key" not in result.output


def test_webhooks_test_for_sendgrid_and_resend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from .web_server import web_settings

    sendgrid = SendgridSender()
    monkeypatch.setenv("RESEND_WEBHOOK_SECRET", RESEND_SECRET)
    settings = web_settings(
        tmp_path,
        monkeypatch,
        f'[webhooks.sendgrid]\npublic_key = "{sendgrid.public_key}"\n[webhooks.resend]\n',
    )
    key_file = tmp_path / "sendgrid-test-key.pem"
    key_file.write_bytes(
        sendgrid.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with serving(WebApp(settings)) as base:
        output = run(
            settings, "webhooks", "test", "sendgrid", "--url", base, "--private-key", str(key_file)
        )
        assert output.strip() == (
            "delivered, bounce, spamreport (one batch): 200 recorded 3, duplicates 0, "
            "status changes 0"
        )
        resend = run(settings, "webhooks", "test", "resend", "--url", base)
        assert resend.count(": 200 recorded 1") == 3
    result = CliRunner().invoke(
        main, ["--config", str(settings.source), "webhooks", "test", "ses", "--url", base]
    )
    assert result.exit_code == 1 and "simulator.amazonses.com" in result.output


def test_sendgrid_events_find_their_issue_by_the_batchs_message_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, httpserver: HTTPServer
) -> None:
    """SendGrid names the message by X-Message-Id (one for the whole call) plus a suffix; the
    address picks the recipient's journal row."""
    from werkzeug import Response

    sendgrid = SendgridSender()
    monkeypatch.setenv("SENDGRID_API_KEY", "SG.test-0123456789")
    httpserver.expect_request("/v3/mail/send", method="POST").respond_with_response(
        Response(status=202, headers={"X-Message-Id": "sgBatch0001"})
    )
    toml = (
        "[newsletter]\n"
        'from_email = "digest@example.org"\n'
        f'[provider]\nname = "sendgrid"\nbase_url = "{httpserver.url_for("").rstrip("/")}"\n'
        f'[webhooks.sendgrid]\npublic_key = "{sendgrid.public_key}"\n'
    )
    settings, issue = make_folder(tmp_path, toml, 3)
    assert run_send(settings, issue).sent == 3
    with serving(WebApp(settings)) as base:
        for kind, reader in [("hard_bounce", 1), ("unsubscribe", 2), ("delivered", 3)]:
            request = sendgrid.event(
                kind, f"reader{reader}@example.net", now=now(), message_id="sgBatch0001"
            )
            post(base, "sendgrid", request)
    found = issue_report(settings, "2026-10").as_json(details=True)
    assert found["counts"] == {
        "delivered": 1,
        "soft_bounce": 0,
        "hard_bounce": 1,
        "complaint": 0,
        "unsubscribe": 1,
    }
    assert found["addresses"]["unsubscribe"] == ["reader2@example.net"]
    assert status_of(settings, "reader2@example.net") is Status.UNSUBSCRIBED


def test_a_rehearsal_through_the_null_provider_is_not_counted_as_sent(tmp_path: Path) -> None:
    settings, issue = make_folder(tmp_path, '[provider]\nname = "null"\n', 4)
    assert run_send(settings, issue).sent == 4
    found = issue_report(settings, "2026-10")
    assert found.sent == 0
    assert found.warnings == []
