"""A DOI's record, in the project's citation format: from Crossref, or from doi.org.

``DoiClient.lookup`` asks Crossref's REST API (``/works/{doi}``, with the settings' ``mailto``
for its polite pool); a DOI that Crossref does not know (DataCite's, say) is asked of doi.org
by content negotiation (CSL JSON). The record is turned into the lines an issue file takes
(``Authors:``, ``Year:``, …) and kept on disk, so that a second look is instant and works
offline. Retractions come from the record's ``updated-by`` relations (which include
Retraction Watch's data) and, for a retraction notice itself, ``update-to``.

Nothing here retries forever: a 429 or a 5xx is retried twice when the wait it asks for is
short, then reported with what to do.
"""

from __future__ import annotations

import dataclasses
import html
import json
import re
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import requests

from newsletter import __version__
from newsletter.errors import DoiLookupError, DoiNotFound
from newsletter.issue import ELLIPSES
from newsletter.settings import Settings

CSL_JSON = "application/vnd.citationstyles.csl+json"
# APA 7 lists up to 20 authors; past that, the first 19, an ellipsis and the last.
APA_MAX_AUTHORS = 20
# Update types that withdraw a work, and the one that warns about it.
RETRACTING = {"retraction", "partial_retraction", "removal", "withdrawal"}
CONCERN = {"expression_of_concern"}
_PARTICLES = {"van", "von", "de", "der", "den", "del", "della", "di", "da", "du", "le", "la"}
_PARTICLES |= {"ten", "ter", "dos", "das", "zu"}
CACHE_VERSION = 1


@dataclass(frozen=True)
class Update:
    """A notice about the work: a retraction, an expression of concern, a correction."""

    kind: str  # Crossref's update type, e.g. "retraction"
    notice: str  # the notice's DOI
    date: str = ""  # YYYY-MM-DD
    source: str = ""  # "publisher", "retraction-watch"

    def describe(self) -> str:
        parts = [f"notice {self.notice}" if self.notice else "", self.date]
        if self.source:
            parts.append(f"source: {self.source.replace('-', ' ').title()}")
        return ", ".join(p for p in parts if p)


@dataclass(frozen=True)
class DoiRecord:
    doi: str
    authors: tuple[str, ...]  # "Surname, A. B.", APA's shape; "…" before the last of 21+
    year: int | None
    title: str
    journal: str  # the container: journal, or the book a chapter is in
    volume: str = ""  # "55(4)"
    pages: str = ""  # "508–519"
    kind: str = ""  # Crossref's type: journal-article, book-chapter, dataset, …
    online_first: bool = False
    updated_by: tuple[Update, ...] = ()  # notices about this work
    notice_for: tuple[Update, ...] = ()  # works this record is itself a notice about
    registry: str = "Crossref"  # or "doi.org"

    @property
    def retractions(self) -> tuple[Update, ...]:
        return tuple(u for u in self.updated_by if u.kind in RETRACTING)

    @property
    def concerns(self) -> tuple[Update, ...]:
        return tuple(u for u in self.updated_by if u.kind in CONCERN)

    def citation_lines(self) -> list[str]:
        """The record as an article's citation lines, ready to paste under its heading."""
        lines = [f"Authors: {'; '.join(self.authors)}"]
        lines.append(f"Year: {self.year}" if self.year else "Year: ")
        lines += [f"Title: {self.title}", f"Journal: {self.journal}"]
        if self.volume:
            lines.append(f"Volume: {self.volume}")
        if self.pages:
            lines.append(f"Pages: {self.pages}")
        if self.online_first:
            lines.append("Online first: yes")
        lines.append(f"DOI: {self.doi}")
        return lines


# --- from the registries' JSON to a record -------------------------------------------------


def from_crossref(message: dict[str, Any]) -> DoiRecord:
    """A record from Crossref's ``/works/{doi}`` message."""
    return _record(message, registry="Crossref")


def from_csl(data: dict[str, Any]) -> DoiRecord:
    """A record from doi.org's CSL JSON (the shape DataCite and Crossref both serve)."""
    return _record(data, registry="doi.org")


def _record(data: dict[str, Any], registry: str) -> DoiRecord:
    volume, issue = _text(data.get("volume")), _text(data.get("issue"))
    pages = _pages(_text(data.get("page")))
    kind = _text(data.get("type"))
    journal = _text(data.get("container-title")) or _text(data.get("publisher"))
    title = _text(data.get("title"))
    subtitle = _text(data.get("subtitle"))
    if subtitle and subtitle.casefold() not in title.casefold():
        title = f"{title}: {subtitle}"
    journal_like = kind in ("journal-article", "article-journal")
    return DoiRecord(
        doi=_text(data.get("DOI")),
        authors=_authors(data.get("author") or []),
        year=_year(data),
        title=title,
        journal=journal,
        volume=f"{volume}({issue})" if volume and issue else volume,
        pages=pages,
        kind=kind,
        online_first=journal_like and not volume and not pages,
        updated_by=_updates(data.get("updated-by")),
        notice_for=_updates(data.get("update-to")),
        registry=registry,
    )


def _text(value: Any) -> str:
    """A field's text: Crossref gives many as one-item lists, and some titles carry markup."""
    if isinstance(value, list):
        value = value[0] if value else ""
    if value is None:
        return ""
    text = html.unescape(re.sub(r"<[^>]+>", "", str(value)))
    return " ".join(text.split())


def _pages(page: str) -> str:
    # APA joins a page range with an en dash.
    return re.sub(r"(?<=\w)\s*[-‐‑–—]+\s*(?=\w)", "–", page)


def _year(data: dict[str, Any]) -> int | None:
    for key in ("issued", "published", "published-online", "published-print", "created"):
        parts = (data.get(key) or {}).get("date-parts") or [[None]]
        if parts and parts[0] and isinstance(parts[0][0], int):
            return int(parts[0][0])
    return None


def _updates(entries: Any) -> tuple[Update, ...]:
    found: list[Update] = []
    for entry in entries or []:
        if not isinstance(entry, dict):
            continue
        date = (entry.get("updated") or {}).get("date-parts") or [[]]
        found.append(
            Update(
                kind=str(entry.get("type", "")).lower().replace("-", "_"),
                notice=str(entry.get("DOI", "")),
                date="-".join(f"{int(p):02d}" for p in date[0] if isinstance(p, int)),
                source=str(entry.get("source", "")),
            )
        )
    return tuple(found)


def _authors(people: list[Any]) -> tuple[str, ...]:
    names = [name for name in (_author(p) for p in people if isinstance(p, dict)) if name]
    if len(names) > APA_MAX_AUTHORS:
        names = [*names[: APA_MAX_AUTHORS - 1], "…", names[-1]]
    return tuple(names)


def _author(person: dict[str, Any]) -> str:
    """ "Surname, A. B." from Crossref's or CSL's parts; an organisation keeps its name."""
    family = _text(person.get("family"))
    given = _text(person.get("given"))
    if not family:
        return _text(person.get("name") or person.get("literal") or given)
    # A particle given with the first names ("Kim de", "Jong") belongs to the surname;
    # only in lower case, so that "Al" or "Van" as a first name stays one.
    words = given.split()
    while len(words) > 1 and words[-1] in _PARTICLES:
        family = f"{words.pop()} {family}"
    particle = _text(person.get("non-dropping-particle"))
    if particle and not family.casefold().startswith(particle.casefold()):
        family = f"{particle} {family}"
    if family.isupper() and len(family) > 1:
        family = _capitalise(family)
    name = f"{family}, {_initials(' '.join(words))}" if words else family
    suffix = _text(person.get("suffix"))
    return f"{name}, {suffix}" if suffix else name


def _capitalise(name: str) -> str:
    # "HØGLEND" -> "Høglend", "VAN SLUIS" -> "van Sluis", "BØGWALD-HANSEN" -> "Bøgwald-Hansen"
    words = [
        w.lower() if w.lower() in _PARTICLES else "-".join(p.capitalize() for p in w.split("-"))
        for w in name.split()
    ]
    return " ".join(words)


def _initials(given: str) -> str:
    """ "Jan Arne" -> "J. A.", "Kjell-Petter" -> "K.-P.", "J.A." -> "J. A."."""
    out: list[str] = []
    for token in re.split(r"[\s.]+", given):
        parts = [p for p in token.split("-") if p]
        letters = [p[0].upper() + "." for p in parts if p[0].isalpha()]
        if letters:
            out.append("-".join(letters))
    return " ".join(out)


# --- fetching ---------------------------------------------------------------------------------


class DoiClient:
    """Looks DOIs up, through an on-disk cache; one ``requests.Session`` for all of them.

    ``offline`` answers from the cache only, whatever the records' age; otherwise a cached
    record older than ``max_age`` seconds is fetched again (retractions come later).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        cache: Path | None = None,
        offline: bool = False,
        max_age: float = 7 * 24 * 3600,
        max_wait: float = 30.0,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.config = settings.crossref
        self.cache = cache if cache is not None else settings.paths.build / "cache" / "doi"
        self.offline = offline
        self.max_age = max_age
        self.max_wait = max_wait
        self._sleep = sleep
        self.session = session or requests.Session()
        contact = f" (mailto:{self.config.mailto})" if self.config.mailto else ""
        self.session.headers["User-Agent"] = f"newsletter/{__version__}{contact}"

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> DoiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def lookup(self, doi: str) -> DoiRecord:
        """The record of ``doi``; raises DoiNotFound or DoiLookupError with what to do."""
        doi = doi.strip()
        cached = self._cached(doi)
        if cached is not None:
            return cached
        if self.offline:
            raise DoiLookupError(
                f"{doi} is not in the DOI cache ({self.cache}) and --offline forbids asking "
                "Crossref: run once with the network"
            )
        message = self._crossref(doi)
        if message is not None:
            record = from_crossref(message)
        else:
            data = self._doi_org(doi)
            if data is None:
                raise DoiNotFound(
                    f"DOI {doi} is not registered: neither Crossref nor doi.org knows it; "
                    f"check it against the article (https://doi.org/{doi})"
                )
            record = from_csl(data)
        if not record.doi:
            record = dataclasses.replace(record, doi=doi)
        self._store(doi, record)
        return record

    def _crossref(self, doi: str) -> dict[str, Any] | None:
        url = f"{self.config.base_url}/works/{quote(doi, safe='/')}"
        params = {"mailto": self.config.mailto} if self.config.mailto else None
        response = self._get(url, "Crossref", doi, params=params)
        if response is None:
            return None
        body = self._json(response, "Crossref", doi)
        message = body.get("message") if isinstance(body, dict) else None
        if not isinstance(message, dict):
            raise DoiLookupError(f"Crossref's answer for {doi} has no 'message' record")
        return message

    def _doi_org(self, doi: str) -> dict[str, Any] | None:
        url = f"{self.config.doi_base_url}/{quote(doi, safe='/')}"
        response = self._get(url, "doi.org", doi, headers={"Accept": CSL_JSON})
        if response is None:
            return None
        body = self._json(response, "doi.org", doi)
        if not isinstance(body, dict):
            raise DoiLookupError(f"doi.org's answer for {doi} is not a CSL JSON record")
        return body

    def _get(
        self,
        url: str,
        service: str,
        doi: str,
        *,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> requests.Response | None:
        """The 200 answer, None for a 404; retries 429 and 5xx twice when the wait is short."""
        host = urlsplit(url).netloc
        timeout = self.config.timeout
        for attempt in range(3):
            try:
                response = self.session.get(url, params=params, headers=headers, timeout=timeout)
            except requests.Timeout:
                raise DoiLookupError(
                    f"{service} ({host}) did not answer within {timeout:g} s for {doi}; try "
                    "again later, or give it longer with [crossref] timeout in newsletter.toml"
                ) from None
            except requests.RequestException as exc:
                raise DoiLookupError(
                    f"cannot reach {service} ({host}) for {doi}: the network is unreachable "
                    f"({type(exc).__name__}); check the connection"
                ) from None
            status = response.status_code
            if status == 404:
                return None
            if status == 429 or status >= 500:
                wait = _retry_after(response, default=2.0**attempt)
                if attempt < 2 and wait <= self.max_wait:
                    self._sleep(wait)
                    continue
                if status == 429:
                    raise DoiLookupError(
                        f"{service} is limiting requests (HTTP 429) and asks to wait {wait:g} s "
                        f"before asking for {doi} again; try again later"
                    )
                raise DoiLookupError(
                    f"{service} ({host}) failed with HTTP {status} for {doi} after 3 tries; "
                    "its service is having trouble: try again later"
                )
            if status >= 400:
                raise DoiLookupError(
                    f"{service} refused the request for {doi}: HTTP {status} "
                    f"{response.text[:200].strip()}"
                )
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _json(response: requests.Response, service: str, doi: str) -> Any:
        try:
            return response.json()
        except ValueError:
            raise DoiLookupError(
                f"{service}'s answer for {doi} is not JSON "
                f"({response.headers.get('Content-Type', 'no content type')})"
            ) from None

    # --- the cache: one JSON file per DOI ---------------------------------------------------
    def _path(self, doi: str) -> Path:
        return self.cache / (quote(doi.casefold(), safe="") + ".json")

    def _cached(self, doi: str) -> DoiRecord | None:
        path = self._path(doi)
        try:
            stored = json.loads(path.read_text("utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(stored, dict) or stored.get("version") != CACHE_VERSION:
            return None
        if not self.offline and time.time() - float(stored.get("fetched", 0)) > self.max_age:
            return None
        try:
            return _record_from_json(stored["record"])
        except (KeyError, TypeError, ValueError):
            return None

    def _store(self, doi: str, record: DoiRecord) -> None:
        path = self._path(doi)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_suffix(".tmp")
            payload = {
                "version": CACHE_VERSION,
                "fetched": time.time(),
                "record": dataclasses.asdict(record),
            }
            temporary.write_text(json.dumps(payload, ensure_ascii=False, indent=1), "utf-8")
            temporary.replace(path)
        except OSError:
            pass  # a cache that cannot be written only costs the next lookup its speed


def _record_from_json(data: dict[str, Any]) -> DoiRecord:
    fields = dict(data)
    fields["authors"] = tuple(fields["authors"])
    for key in ("updated_by", "notice_for"):
        fields[key] = tuple(Update(**u) for u in fields.get(key, ()))
    return DoiRecord(**fields)


def _retry_after(response: requests.Response, default: float) -> float:
    value = response.headers.get("Retry-After", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return default


def same_text(a: str, b: str) -> bool:
    """Whether two titles or names say the same, forgiving case, accents, punctuation and
    "&" for "and"."""
    return _comparable(a) == _comparable(b)


def _comparable(text: str) -> str:
    text = unicodedata.normalize("NFKD", text.casefold().replace("&", " and "))
    text = "".join(c for c in text if not unicodedata.combining(c))
    return " ".join(re.findall(r"[^\W_]+", text))


def surname(author: str) -> str:
    """The surname of "Surname, A. B." (or an organisation's whole name)."""
    if author in ELLIPSES:
        return ""
    return author.split(",")[0].strip()
