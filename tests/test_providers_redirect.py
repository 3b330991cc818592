"""No credential follows a redirect to another host: every HTTP provider, send and sync.

Two real loopback servers: the API on 127.0.0.1 answers 307 to a "thief" on localhost (another
host name, another port), which records whatever reaches it. requests drops Authorization on
such a redirect but keeps custom headers (Postmark's X-Postmark-Server-Token) and the body.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from newsletter import store, suppressions
from newsletter.errors import ProviderError
from newsletter.providers import load_provider

from .http_helpers import CREDENTIALS, PATHS, batch, http_settings

PROVIDERS = sorted(CREDENTIALS)
ANY_PATH = re.compile(".*")


def own_server(host: str) -> Iterator[HTTPServer]:
    # Not the shared `httpserver`: its log may hold a late request of another test.
    server = HTTPServer(host=host, port=0)
    server.start()
    yield server
    server.clear()
    server.stop()


@pytest.fixture
def thief() -> Iterator[HTTPServer]:
    for server in own_server("localhost"):
        server.expect_request(ANY_PATH).respond_with_json({"stolen": True})
        yield server


@pytest.fixture
def redirecting(thief: HTTPServer) -> Iterator[HTTPServer]:
    """The API server, answering every request with a 307 to the same path on the thief."""

    def redirect(request: Request) -> Response:
        target = thief.url_for(request.full_path.rstrip("?"))
        return Response(status=307, headers={"Location": target})

    for server in own_server("127.0.0.1"):
        server.expect_request(ANY_PATH).respond_with_handler(redirect)
        yield server


@pytest.fixture(params=PROVIDERS)
def name(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    provider: str = request.param
    variable, value = CREDENTIALS[provider]
    monkeypatch.setenv(variable, value)
    return provider


def assert_nothing_reached(thief: HTTPServer, provider: str) -> None:
    credential = CREDENTIALS[provider][1]
    leaked = [
        request.url
        for request, _ in thief.log
        if credential in str(request.headers) or credential.encode() in request.get_data()
    ]
    assert leaked == [], f"{provider}'s credential followed the redirect"
    assert [request.url for request, _ in thief.log] == []


def test_send_refuses_a_redirect_to_another_host(
    name: str, tmp_path: Path, redirecting: HTTPServer, thief: HTTPServer
) -> None:
    settings = http_settings(tmp_path, name, redirecting)
    with (
        load_provider(name)(settings) as provider,
        pytest.raises(ProviderError, match="redirected to another host") as caught,
    ):
        provider.send_batch(batch(settings, 2))
    assert thief.url_for("/").rstrip("/") in str(caught.value)
    assert "base_url" in str(caught.value)
    assert [request.path for request, _ in redirecting.log] == [PATHS[name]]
    assert_nothing_reached(thief, name)


def test_sync_refuses_a_redirect_to_another_host(
    name: str, tmp_path: Path, redirecting: HTTPServer, thief: HTTPServer
) -> None:
    settings = http_settings(tmp_path, name, redirecting)
    with closing(store.open_store(settings.paths.database)) as conn:
        store.add_subscriber(conn, "reader@example.net")
        with pytest.raises(ProviderError, match="redirected to another host"):
            suppressions.sync(conn, settings)
    assert len(redirecting.log) == 1  # refused at once, not retried
    assert_nothing_reached(thief, name)


def test_a_redirect_on_the_same_host_is_still_followed(
    tmp_path: Path, httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    variable, token = CREDENTIALS["postmark"]
    monkeypatch.setenv(variable, token)
    httpserver.expect_request("/email/batch").respond_with_data(
        status=307, headers={"Location": "/v2/email/batch"}
    )
    httpserver.expect_request(
        "/v2/email/batch", headers={"X-Postmark-Server-Token": token}
    ).respond_with_json([{"ErrorCode": 0, "Message": "OK", "MessageID": "m1"}])
    settings = http_settings(tmp_path, "postmark", httpserver)
    with load_provider("postmark")(settings) as provider:
        results = provider.send_batch(batch(settings, 1))
    assert [r.status for r in results] == ["accepted"]
