from __future__ import annotations

import json
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer

from newsletter.errors import ProviderError
from newsletter.providers.postmark import PostmarkProvider

from .http_helpers import CREDENTIALS, batch, http_settings

VARIABLE, TOKEN = CREDENTIALS["postmark"]
PATH = "/email/batch"


@pytest.fixture(autouse=True)
def credential(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(VARIABLE, TOKEN)


def ok(number: int, to: str) -> dict[str, object]:
    return {
        "ErrorCode": 0,
        "Message": "OK",
        "MessageID": f"b7bc2f4a-e38e-4336-af7d-e6c392c2f81{number}",
        "SubmittedAt": "2010-11-26T12:01:05.1794748-05:00",
        "To": to,
    }


def test_each_message_is_a_batch_entry_on_the_broadcast_stream(
    tmp_path: Path, httpserver: HTTPServer
) -> None:
    httpserver.expect_request(
        PATH,
        method="POST",
        headers={"X-Postmark-Server-Token": TOKEN, "Accept": "application/json"},
    ).respond_with_json([ok(n, f"reader{n}@example.net") for n in (1, 2)])
    settings = http_settings(tmp_path, "postmark", httpserver)
    messages = batch(settings, 2, n2="Zoë <Z>")
    with PostmarkProvider(settings) as provider:
        results = provider.send_batch(messages)

    assert [r.status for r in results] == ["accepted", "accepted"]
    assert results[1].provider_message_id == "b7bc2f4a-e38e-4336-af7d-e6c392c2f812"
    payload = json.loads(httpserver.log[0][0].get_data())
    assert isinstance(payload, list) and len(payload) == 2
    entry = payload[1]
    assert entry["From"] == '"Dr. Émilie Research" <digest@example.org>'
    assert entry["To"] == '"Zoë <Z>" <reader2@example.net>'
    assert entry["ReplyTo"] == "editor@example.org"
    assert entry["MessageStream"] == "broadcast"
    assert entry["TextBody"] == messages[1].text
    assert entry["HtmlBody"] == messages[1].html
    headers = {h["Name"]: h["Value"] for h in entry["Headers"]}
    assert headers["List-Unsubscribe"] == messages[1].list_unsubscribe
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_per_message_error_codes_in_a_200_reply(tmp_path: Path, httpserver: HTTPServer) -> None:
    httpserver.expect_request(PATH, method="POST").respond_with_json(
        [
            ok(1, "reader1@example.net"),
            {
                "ErrorCode": 406,
                "Message": "You tried to send to a recipient that has been marked as inactive.",
            },
            {"ErrorCode": 300, "Message": "Invalid 'To' address: 'reader3@example'."},
            {"ErrorCode": 429, "Message": "Rate limit exceeded."},
        ]
    )
    settings = http_settings(tmp_path, "postmark", httpserver, 'message_stream = "digest"\n')
    with PostmarkProvider(settings) as provider:
        results = provider.send_batch(batch(settings, 4))
    assert [r.status for r in results] == ["accepted", "permanent", "permanent", "temporary"]
    assert results[1].reason.startswith("ErrorCode 406: You tried to send")
    entries = json.loads(httpserver.log[0][0].get_data())
    assert {e["MessageStream"] for e in entries} == {"digest"}


def test_a_422_for_the_whole_batch_raises(tmp_path: Path, httpserver: HTTPServer) -> None:
    httpserver.expect_request(PATH, method="POST").respond_with_json(
        {"ErrorCode": 300, "Message": "Invalid 'From' address: not a verified sender signature."},
        status=422,
    )
    settings = http_settings(tmp_path, "postmark", httpserver)
    with (
        PostmarkProvider(settings) as provider,
        pytest.raises(ProviderError, match="verified sender signature"),
    ):
        provider.send_batch(batch(settings, 2))


def test_batch_size_cannot_exceed_500(tmp_path: Path, httpserver: HTTPServer) -> None:
    from newsletter.errors import ProviderConfigError

    settings = http_settings(tmp_path, "postmark", httpserver, "batch_size = 501\n")
    with pytest.raises(ProviderConfigError, match="between 1 and 500"):
        PostmarkProvider(settings)
    assert PostmarkProvider(http_settings(tmp_path, "postmark", httpserver)).batch_size == 500
