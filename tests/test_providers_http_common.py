"""Replies every HTTP provider must classify the same way, tested against each of them."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from newsletter.errors import ProviderConfigError, ProviderError
from newsletter.providers import load_provider

from .conftest import write_settings
from .http_helpers import CREDENTIALS, PATHS, batch, http_settings
from .smtp_servers import free_port

PROVIDERS = sorted(CREDENTIALS)


@pytest.fixture(params=PROVIDERS)
def name(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    provider: str = request.param
    variable, value = CREDENTIALS[provider]
    monkeypatch.setenv(variable, value)
    return provider


def test_429_is_temporary_with_retry_after(
    name: str, tmp_path: Path, httpserver: HTTPServer
) -> None:
    httpserver.expect_request(PATHS[name], method="POST").respond_with_json(
        {"message": "Too many requests"}, status=429, headers={"Retry-After": "7"}
    )
    settings = http_settings(tmp_path, name, httpserver)
    with load_provider(name)(settings) as provider:
        results = provider.send_batch(batch(settings, 2))
    assert [(r.status, r.retry_after) for r in results] == [("temporary", 7.0)] * 2
    assert "429" in results[0].reason


@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx_is_temporary(name: str, status: int, tmp_path: Path, httpserver: HTTPServer) -> None:
    httpserver.expect_request(PATHS[name], method="POST").respond_with_data(
        "upstream unavailable", status=status
    )
    settings = http_settings(tmp_path, name, httpserver)
    with load_provider(name)(settings) as provider:
        results = provider.send_batch(batch(settings, 2))
    assert {r.status for r in results} == {"temporary"}
    assert not results[0].uncertain
    assert f"({status})" in results[0].reason


def test_refused_credential_raises_without_echoing_it(
    name: str, tmp_path: Path, httpserver: HTTPServer, capsys: pytest.CaptureFixture[str]
) -> None:
    httpserver.expect_request(PATHS[name], method="POST").respond_with_json(
        {"message": "Invalid API key"}, status=401
    )
    settings = http_settings(tmp_path, name, httpserver)
    secret = CREDENTIALS[name][1]
    provider = load_provider(name)(settings)
    with provider, pytest.raises(ProviderError) as caught:
        provider.send_batch(batch(settings, 1))
    assert CREDENTIALS[name][0] in str(caught.value)
    assert "Invalid API key" in str(caught.value)
    assert secret not in str(caught.value)
    assert secret not in repr(provider)
    out, err = capsys.readouterr()
    assert secret not in out + err


def test_missing_credential_names_the_variable(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    variable = CREDENTIALS[name][0]
    monkeypatch.delenv(variable)
    settings = write_settings(tmp_path, f'[provider]\nname = "{name}"\n')
    with pytest.raises(ProviderConfigError, match=f"environment variable {variable} is not set"):
        load_provider(name)(settings)


def test_no_server_is_temporary_and_certain(name: str, tmp_path: Path) -> None:
    port = free_port()
    extra = f'[provider]\nname = "{name}"\nbase_url = "http://127.0.0.1:{port}"\n'
    settings = write_settings(tmp_path, extra)
    with load_provider(name)(settings) as provider:
        results = provider.send_batch(batch(settings, 2))
    assert {r.status for r in results} == {"temporary"}
    assert not any(r.uncertain for r in results), "nothing can have been sent"


def test_no_reply_in_time_is_uncertain(name: str, tmp_path: Path, httpserver: HTTPServer) -> None:
    def slow(request: Request) -> Response:
        time.sleep(1.0)
        return Response("late", status=200)

    httpserver.expect_request(PATHS[name], method="POST").respond_with_handler(slow)
    base_url = httpserver.url_for("/").rstrip("/")
    table = f'[provider]\nname = "{name}"\nbase_url = "{base_url}"\ntimeout = 0.3\n'
    settings = write_settings(tmp_path, table)
    with load_provider(name)(settings) as provider:
        results = provider.send_batch(batch(settings, 1))
    assert results[0].status == "temporary"
    assert results[0].uncertain
