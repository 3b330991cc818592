from __future__ import annotations

import base64
import email
import email.policy
import io
import json
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request

from newsletter.errors import ProviderError
from newsletter.providers import mailgun
from newsletter.providers.http import ApiRequest
from newsletter.providers.mailgun import MailgunProvider
from newsletter.settings import Settings

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


def stdlib_fields(request: ApiRequest) -> list[tuple[str, str]]:
    assert request.body is not None
    head = f"MIME-Version: 1.0\r\nContent-Type: {request.content_type}\r\n\r\n".encode()
    parsed = email.message_from_bytes(head + request.body, policy=email.policy.HTTP)
    assert not parsed.defects
    fields = []
    for part in parsed.iter_parts():
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        fields.append((str(part.get_param("name", header="content-disposition")), payload.decode()))
    return fields


def werkzeug_fields(request: ApiRequest) -> list[tuple[str, str]]:
    assert request.body is not None
    parsed = Request.from_values(
        input_stream=io.BytesIO(request.body),
        content_length=len(request.body),
        content_type=request.content_type,
        method="POST",
    )
    return list(parsed.form.items(multi=True))


def test_the_hand_built_body_parses_the_same_with_two_parsers(tmp_path: Path) -> None:
    settings = http_settings_without_server(tmp_path)
    messages = batch(settings, 3, n1="Zoë Ångström", n2='Bo "B" <Smith> & Co', n3="")
    request = MailgunProvider(settings).build_request(messages)
    assert request.content_type.startswith("multipart/form-data; boundary=")
    fields = stdlib_fields(request)
    assert fields == werkzeug_fields(request)
    names = [name for name, _ in fields]
    assert names == [
        "from",
        "subject",
        "text",
        "html",
        "h:List-Unsubscribe",
        "h:List-Unsubscribe-Post",
        "h:List-Id",
        "o:tag",
        "h:Reply-To",
        "to",
        "to",
        "to",
        "recipient-variables",
    ]
    assert [value for name, value in fields if name == "to"] == [
        "Zoë Ångström <reader1@example.net>",
        '"Bo \\"B\\" <Smith> & Co" <reader2@example.net>',
        "reader3@example.net",
    ]
    variables = json.loads(fields[-1][1])
    assert variables["reader1@example.net"]["nl_text_name"] == "Zoë Ångström"
    assert (
        variables["reader2@example.net"]["nl_html_name"]
        == "Bo &quot;B&quot; &lt;Smith&gt; &amp; Co"
    )
    assert variables["reader3@example.net"]["nl_text_name"] == "reader"
    assert variables["reader3@example.net"]["nl_recipient_id"] == "3"


def test_a_value_holding_the_boundary_gets_a_new_boundary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    boundaries = iter(["0f" * 16, "a1" * 16])
    monkeypatch.setattr(mailgun, "multipart_boundary", lambda: next(boundaries))
    settings = http_settings_without_server(tmp_path)
    messages = batch(settings, 2, n2="0f" * 16)
    request = MailgunProvider(settings).build_request(messages)
    assert request.content_type.endswith("a1" * 16)
    fields = werkzeug_fields(request)
    assert fields == stdlib_fields(request)
    assert [value for name, value in fields if name == "to"][
        1
    ] == f"{'0f' * 16} <reader2@example.net>"


def http_settings_without_server(tmp_path: Path) -> Settings:
    from .conftest import write_settings

    table = '[provider]\nname = "mailgun"\ndomain = "example.org"\n'
    return write_settings(tmp_path, table)
