from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer

from newsletter.errors import ProviderError
from newsletter.providers.mailgun import MailgunProvider

from .conftest import make_recipient
from .http_helpers import CREDENTIALS, batch, http_settings

VARIABLE, KEY = CREDENTIALS["mailgun"]
BASIC = "Basic " + base64.b64encode(f"api:{KEY}".encode()).decode()
PATH = "/v3/example.org/messages"


@pytest.fixture(autouse=True)
def credential(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(VARIABLE, KEY)


def fill_like_mailgun(template: str, variables: dict[str, str]) -> str:
    for key, value in variables.items():
        template = template.replace(f"%recipient.{key}%", value)
    return template


def test_one_call_per_batch_with_recipient_variables(
    tmp_path: Path, httpserver: HTTPServer
) -> None:
    httpserver.expect_request(
        PATH, method="POST", headers={"Authorization": BASIC}
    ).respond_with_json({"id": "<20210301.1@example.org>", "message": "Queued. Thank you."})
    settings = http_settings(tmp_path, "mailgun", httpserver)
    messages = batch(settings, 3, n2='Bo "B" <Smith> & Co')
    with MailgunProvider(settings) as provider:
        results = provider.send_batch(messages)

    assert [r.status for r in results] == ["accepted"] * 3
    assert {r.provider_message_id for r in results} == {"<20210301.1@example.org>"}
    assert len(httpserver.log) == 1
    request = httpserver.log[0][0]
    assert request.content_type.startswith("multipart/form-data")
    assert request.headers["User-Agent"].startswith("newsletter/")
    form = request.form
    assert form.getlist("to") == [
        "Reader 1 <reader1@example.net>",
        '"Bo \\"B\\" <Smith> & Co" <reader2@example.net>',
        "Reader 3 <reader3@example.net>",
    ]
    assert form["from"] == '"Dr. Émilie Research" <digest@example.org>'
    assert form["subject"] == "March 2021: what helps"
    assert form["h:List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert form["h:Reply-To"] == "editor@example.org"
    assert form["h:List-Id"].endswith("<practice-research-digest.example.org>")
    variables = json.loads(form["recipient-variables"])
    assert list(variables) == [f"reader{n}@example.net" for n in (1, 2, 3)]
    # What Mailgun will deliver to each recipient is exactly what the MIME path builds.
    for message in messages:
        mine = variables[message.recipient.email]
        assert fill_like_mailgun(form["text"], mine) == message.text
        assert fill_like_mailgun(form["html"], mine) == message.html
        assert fill_like_mailgun(form["h:List-Unsubscribe"], mine) == message.list_unsubscribe


def test_region_eu_uses_the_eu_endpoint(tmp_path: Path) -> None:
    from .conftest import write_settings

    settings = write_settings(tmp_path, '[provider]\nname = "mailgun"\nregion = "eu"\n')
    assert MailgunProvider(settings).base_url == "https://api.eu.mailgun.net"
    settings = write_settings(tmp_path, '[provider]\nname = "mailgun"\n')
    assert MailgunProvider(settings).base_url == "https://api.mailgun.net"


def test_a_refused_batch_raises_with_mailguns_reply(tmp_path: Path, httpserver: HTTPServer) -> None:
    httpserver.expect_request(PATH, method="POST").respond_with_json(
        {"message": "'from' parameter is not a valid address. please check documentation"},
        status=400,
    )
    settings = http_settings(tmp_path, "mailgun", httpserver)
    with (
        MailgunProvider(settings) as provider,
        pytest.raises(ProviderError, match="not a valid address"),
    ):
        provider.send_batch(batch(settings, 2))


def test_the_same_address_twice_is_sent_once(tmp_path: Path, httpserver: HTTPServer) -> None:
    httpserver.expect_request(PATH, method="POST").respond_with_json(
        {"id": "<x@example.org>", "message": "Queued. Thank you."}
    )
    settings = http_settings(tmp_path, "mailgun", httpserver)
    messages = batch(settings, 2)

    twin = messages[0].issue.message_for(make_recipient(9, email="READER1@example.net"))
    with MailgunProvider(settings) as provider:
        results = provider.send_batch([*messages, twin])
    assert [r.status for r in results] == ["accepted", "accepted", "permanent"]
    assert "subscriber 1" in results[2].reason
    assert len(httpserver.log[0][0].form.getlist("to")) == 2
