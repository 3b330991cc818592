"""A multipart form part in a character set Python does not know is a 400, not a 500, on
every endpoint that reads a form (the RFC 8058 one-click POST may be multipart/form-data)."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from newsletter.settings import Settings
from newsletter.store import Status
from newsletter.web import WebApp

from .web_server import add, current, serving, signer_for, web_settings

BOUNDARY = "nl-test-boundary"


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    return web_settings(tmp_path, monkeypatch)


def multipart(name: str, value: bytes, charset: str) -> tuple[bytes, dict[str, str]]:
    body = (
        (
            f"--{BOUNDARY}\r\n"
            f'Content-Disposition: form-data; name="{name}"\r\n'
            f"Content-Type: text/plain; charset={charset}\r\n\r\n"
        ).encode()
        + value
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    return body, {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


@pytest.mark.parametrize("charset", ["x-no-such-charset", "base64", "rot13"])
def test_an_unknown_charset_is_a_400_on_subscribe_but_never_loses_an_unsubscribe(
    settings: Settings, charset: str
) -> None:
    reader = add(settings, "reader@example.net")
    token = signer_for(settings).unsubscribe_token(reader.id)
    with serving(WebApp(settings)) as base:
        body, headers = multipart("List-Unsubscribe", b"One-Click", charset)
        one_click = requests.post(
            f"{base}/unsubscribe/{token}", data=body, headers=headers, timeout=5
        )
        body, headers = multipart("email", b"new@example.net", charset)
        subscribe = requests.post(f"{base}/subscribe", data=body, headers=headers, timeout=5)
    assert subscribe.status_code == 400, subscribe.text[:300]
    assert "character set this server does not know" in subscribe.text
    # The signed token is the authority: a body it cannot read still unsubscribes.
    assert one_click.status_code == 200 and "You are unsubscribed" in one_click.text
    assert current(settings, reader.id).status == Status.UNSUBSCRIBED


def test_a_known_charset_is_decoded(settings: Settings) -> None:
    reader = add(settings, "reader@example.net")
    token = signer_for(settings).unsubscribe_token(reader.id)
    with serving(WebApp(settings)) as base:
        body, headers = multipart("List-Unsubscribe", "One-Click".encode("utf-16"), "utf-16")
        answer = requests.post(f"{base}/unsubscribe/{token}", data=body, headers=headers, timeout=5)
    assert answer.status_code == 200
    assert current(settings, reader.id).status == Status.UNSUBSCRIBED


def test_a_one_click_post_with_an_oversized_body_still_unsubscribes(settings: Settings) -> None:
    reader = add(settings, "reader@example.net")
    token = signer_for(settings).unsubscribe_token(reader.id)
    with serving(WebApp(settings)) as base:
        answer = requests.post(
            f"{base}/unsubscribe/{token}",
            data={"List-Unsubscribe": "One-Click", "padding": "x" * 70_000},
            timeout=5,
        )
    assert answer.status_code == 200
    assert current(settings, reader.id).status == Status.UNSUBSCRIBED
