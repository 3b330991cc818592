"""A loopback stand-in for Crossref's REST API and doi.org, serving tests/fixtures/.

``/works/{doi}`` answers with the Crossref-shaped record in tests/fixtures/crossref/ whose
DOI matches (404 "Resource not found." otherwise, as Crossref does); ``/doi/{doi}`` answers
with the CSL JSON in tests/fixtures/doi.org/ when asked for CSL. A test can queue other
answers for one DOI (429, 503, a slow one) in ``queued``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from newsletter.settings import Settings

from .conftest import write_settings

FIXTURES = Path(__file__).parent / "fixtures"


def _by_doi(folder: Path) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    for path in folder.glob("*.json"):
        data = json.loads(path.read_text("utf-8"))
        doi = data["message"]["DOI"] if "message" in data else data["DOI"]
        out[str(doi).casefold()] = data
    return out


@dataclass
class Registries:
    server: HTTPServer
    queued: dict[str, list[Callable[[], Response]]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)

    def answer(self, request: Request) -> Response:
        self.requests.append(request)
        crossref = request.path.startswith("/works/")
        doi = request.path.removeprefix("/works/" if crossref else "/doi/")
        queue = self.queued.get(doi)
        if queue:
            return queue.pop(0)()
        if crossref:
            found = _by_doi(FIXTURES / "crossref").get(doi.casefold())
            if found is None:
                return Response("Resource not found.", status=404, content_type="text/plain")
            return Response(json.dumps(found), content_type="application/json")
        if "application/vnd.citationstyles.csl+json" not in request.headers.get("Accept", ""):
            return Response("ask for CSL JSON", status=406)
        csl = _by_doi(FIXTURES / "doi.org").get(doi.casefold())
        if csl is None:
            return Response("DOI Not Found", status=404, content_type="text/html")
        return Response(json.dumps(csl), content_type="application/vnd.citationstyles.csl+json")

    @property
    def dois_asked(self) -> list[str]:
        return [r.path for r in self.requests]


@pytest.fixture
def registries(httpserver: HTTPServer) -> Iterator[Registries]:
    stub = Registries(httpserver)
    httpserver.expect_request(re.compile("^/(works|doi)/.+")).respond_with_handler(stub.answer)
    yield stub


@pytest.fixture
def doi_settings(tmp_path: Path, registries: Registries) -> Settings:
    base = registries.server.url_for("/").rstrip("/")
    return write_settings(
        tmp_path,
        f'[crossref]\nbase_url = "{base}"\ndoi_base_url = "{base}/doi"\n'
        'mailto = "editor@example.org"\ntimeout = 1\n',
    )
