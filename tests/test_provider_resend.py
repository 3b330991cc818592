from __future__ import annotations

import json
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer

from newsletter.errors import ProviderError
from newsletter.providers.resend import ResendProvider

from .http_helpers import CREDENTIALS, batch, http_settings

VARIABLE, KEY = CREDENTIALS["resend"]
PATH = "/emails/batch"


@pytest.fixture(autouse=True)
def credential(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(VARIABLE, KEY)


def ids(count: int) -> dict[str, object]:
    return {"data": [{"id": f"ae2014de-c168-4c61-8267-70d2662a1ce{n}"} for n in range(count)]}


def test_batch_payload_and_idempotency_key(tmp_path: Path, httpserver: HTTPServer) -> None:
    httpserver.expect_request(
        PATH,
        method="POST",
        headers={"Authorization": f"Bearer {KEY}", "x-batch-validation": "permissive"},
    ).respond_with_json(ids(3))
    settings = http_settings(tmp_path, "resend", httpserver)
    messages = batch(settings, 3)
    with ResendProvider(settings) as provider:
        first = provider.send_batch(messages)
        again = provider.send_batch(messages)
        provider.send_batch(messages[:2])

    assert [r.provider_message_id for r in first] == [
        f"ae2014de-c168-4c61-8267-70d2662a1ce{n}" for n in range(3)
    ]
    assert again == first
    keys = [entry[0].headers["Idempotency-Key"] for entry in httpserver.log]
    assert keys[0] == keys[1], "the same batch sent again carries the same key"
    assert keys[2] != keys[0]
    assert all(0 < len(key) <= 256 for key in keys)
    payload = json.loads(httpserver.log[0][0].get_data())
    assert len(payload) == 3
    assert payload[0]["from"] == '"Dr. Émilie Research" <digest@example.org>'
    assert payload[0]["to"] == ["Reader 1 <reader1@example.net>"]
    assert payload[0]["reply_to"] == ["editor@example.org"]
    assert payload[2]["html"] == messages[2].html
    assert payload[2]["text"] == messages[2].text
    assert payload[2]["headers"]["List-Unsubscribe"] == messages[2].list_unsubscribe
    assert payload[2]["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_permissive_errors_fail_only_their_email(tmp_path: Path, httpserver: HTTPServer) -> None:
    body = ids(2) | {"errors": [{"index": 1, "message": "The `to` field is missing."}]}
    httpserver.expect_request(PATH, method="POST").respond_with_json(body)
    settings = http_settings(tmp_path, "resend", httpserver)
    with ResendProvider(settings) as provider:
        results = provider.send_batch(batch(settings, 3))
    assert [r.status for r in results] == ["accepted", "permanent", "accepted"]
    assert results[2].provider_message_id == "ae2014de-c168-4c61-8267-70d2662a1ce1"
    assert results[1].reason == "The `to` field is missing."


def test_concurrent_idempotent_request_is_temporary(tmp_path: Path, httpserver: HTTPServer) -> None:
    httpserver.expect_request(PATH, method="POST").respond_with_json(
        {
            "statusCode": 409,
            "message": "Same idempotency key used while original request is still in progress.",
            "name": "concurrent_idempotent_requests",
        },
        status=409,
    )
    settings = http_settings(tmp_path, "resend", httpserver)
    with ResendProvider(settings) as provider:
        results = provider.send_batch(batch(settings, 2))
    assert [r.status for r in results] == ["temporary", "temporary"]
    assert results[0].retry_after == 1.0


def test_validation_error_raises(tmp_path: Path, httpserver: HTTPServer) -> None:
    httpserver.expect_request(PATH, method="POST").respond_with_json(
        {"statusCode": 422, "message": "Invalid `from` field.", "name": "validation_error"},
        status=422,
    )
    settings = http_settings(tmp_path, "resend", httpserver)
    with (
        ResendProvider(settings) as provider,
        pytest.raises(ProviderError, match="Invalid `from` field"),
    ):
        provider.send_batch(batch(settings, 1))
