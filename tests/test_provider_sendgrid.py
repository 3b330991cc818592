from __future__ import annotations

import json
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Response

from newsletter.errors import ProviderError
from newsletter.providers.sendgrid import SendGridProvider

from .http_helpers import CREDENTIALS, batch, http_settings

VARIABLE, KEY = CREDENTIALS["sendgrid"]
PATH = "/v3/mail/send"


@pytest.fixture(autouse=True)
def credential(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(VARIABLE, KEY)


def substitute(template: str, substitutions: dict[str, str]) -> str:
    for key, value in substitutions.items():
        template = template.replace(key, value)
    return template


def test_personalizations_carry_each_recipient(tmp_path: Path, httpserver: HTTPServer) -> None:
    httpserver.expect_request(
        PATH, method="POST", headers={"Authorization": f"Bearer {KEY}"}
    ).respond_with_response(Response(status=202, headers={"X-Message-Id": "sg-batch-1"}))
    settings = http_settings(tmp_path, "sendgrid", httpserver)
    messages = batch(settings, 3, n3="")
    with SendGridProvider(settings) as provider:
        results = provider.send_batch(messages)

    assert [(r.status, r.provider_message_id) for r in results] == [("accepted", "sg-batch-1")] * 3
    request = httpserver.log[0][0]
    assert request.content_type == "application/json"
    payload = json.loads(request.get_data())
    assert payload["from"] == {"email": "digest@example.org", "name": "Dr. Émilie Research"}
    assert payload["reply_to"] == {"email": "editor@example.org"}
    assert payload["subject"] == "March 2021: what helps"
    assert [c["type"] for c in payload["content"]] == ["text/plain", "text/html"]
    assert payload["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    personalizations = payload["personalizations"]
    assert len(personalizations) == 3
    assert personalizations[0]["to"] == [{"email": "reader1@example.net", "name": "Reader 1"}]
    assert personalizations[2]["to"] == [{"email": "reader3@example.net"}]
    for message, block in zip(messages, personalizations, strict=True):
        assert block["headers"] == {"List-Unsubscribe": message.list_unsubscribe}
        assert block["custom_args"] == {"newsletter_recipient": str(message.recipient_id)}
        text, html = (substitute(c["value"], block["substitutions"]) for c in payload["content"])
        assert text == message.text
        assert html == message.html


def test_a_refused_personalization_fails_only_that_recipient(
    tmp_path: Path, httpserver: HTTPServer
) -> None:
    httpserver.expect_request(PATH, method="POST").respond_with_json(
        {
            "errors": [
                {
                    "message": "Does not contain a valid address.",
                    "field": "personalizations.1.to.0.email",
                    "help": "http://sendgrid.com/docs/API_Reference/Web_API_v3/Mail/errors.html",
                }
            ]
        },
        status=400,
    )
    settings = http_settings(tmp_path, "sendgrid", httpserver)
    with SendGridProvider(settings) as provider:
        results = provider.send_batch(batch(settings, 3))
    assert [r.status for r in results] == ["temporary", "permanent", "temporary"]
    assert results[1].reason == "Does not contain a valid address."
    assert "another recipient" in results[0].reason


def test_a_request_level_error_raises(tmp_path: Path, httpserver: HTTPServer) -> None:
    httpserver.expect_request(PATH, method="POST").respond_with_json(
        {
            "errors": [
                {
                    "message": "The from address does not match a verified Sender Identity.",
                    "field": "from",
                    "help": None,
                }
            ]
        },
        status=400,
    )
    settings = http_settings(tmp_path, "sendgrid", httpserver)
    with (
        SendGridProvider(settings) as provider,
        pytest.raises(ProviderError, match="verified Sender Identity"),
    ):
        provider.send_batch(batch(settings, 2))
