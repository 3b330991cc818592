"""Reading ``newsletter.toml``: the newsletter's name, sender, links, look and paths.

Every key is checked here, once, so that a typo in the settings is reported with the file and
the key instead of surfacing later as a wrong email.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from email_validator import EmailNotValidError, validate_email

from newsletter.database_url import StoreLocation, parse_location
from newsletter.errors import SettingsError, describe_character
from newsletter.taxonomy import Taxonomy, slugify
from newsletter.webhook_settings import WebhookSettings, parse_webhooks

SETTINGS_FILE = "newsletter.toml"
_COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")
# Line breaks and controls, which a header (From, List-Id) must not carry.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


@dataclass(frozen=True)
class Style:
    accent_color: str = "#1f5f5b"
    background_color: str = "#f3f1ec"
    text_color: str = "#1d1d1b"
    logo_url: str = ""
    logo_alt: str = ""


@dataclass(frozen=True)
class Crossref:
    """Where DOI records come from (``[crossref]``): Crossref's REST API, and doi.org's
    content negotiation for DOIs registered elsewhere (DataCite)."""

    base_url: str = "https://api.crossref.org"
    doi_base_url: str = "https://doi.org"
    mailto: str = ""  # the polite pool's contact; empty: the newsletter's from_email
    timeout: float = 10.0


@dataclass(frozen=True)
class Paths:
    issues: Path
    templates: Path
    build: Path
    # The subscriber store: a SQLite file, or a PostgreSQL URL (see store_location).
    database: StoreLocation


@dataclass(frozen=True)
class Settings:
    """A newsletter's settings; ``root`` is the folder holding newsletter.toml."""

    root: Path
    source: Path | None  # the file read, or None for the embedded defaults
    name: str
    from_email: str
    from_name: str
    reply_to: str
    base_url: str
    postal_address: str
    reason: str
    language: str
    paths: Paths
    style: Style
    taxonomy: Taxonomy
    provider: str = "outbox"
    provider_options: dict[str, Any] = field(default_factory=dict)
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    crossref: Crossref = field(default_factory=Crossref)
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)

    @property
    def sender_domain(self) -> str:
        return self.from_email.rpartition("@")[2]

    @property
    def list_id(self) -> str:
        """The List-Id header's identifier, e.g. ``practice-digest.example.org``."""
        return f"{slugify(self.name) or 'newsletter'}.{self.sender_domain}"

    @property
    def welcome_path(self) -> Path:
        """The welcome email's file: ``[welcome] file`` (from the settings' folder), or
        ``welcome.md`` in the issues folder."""
        configured = self.section("welcome").get("file")
        if configured is None:
            return self.paths.issues / "welcome.md"
        if not isinstance(configured, str) or not configured.strip():
            raise SettingsError(
                'must be the path of the welcome email\'s file, e.g. "issues/welcome.md"',
                path=self.source,
                key="welcome.file",
            )
        return self.root / configured.strip()

    def reads_as_welcome(self, path: Path) -> bool:
        """Whether ``path`` is the welcome email: named ``welcome.md``, or the settings' file."""
        if path.stem == "welcome":
            return True
        try:
            return path.resolve() == self.welcome_path.resolve()
        except OSError:
            return False

    def issue_url(self, month: str) -> str:
        """The web archive page of one issue (the "view in browser" target)."""
        return f"{self.base_url}/{month}/"

    def section(self, name: str) -> dict[str, Any]:
        """A settings table that another part of the tool reads itself (e.g. ``dkim``)."""
        return self.sections.get(name, {})


# Each known table and its keys; anything else is a typo the user should hear about.
_KNOWN: dict[str, set[str] | None] = {
    "newsletter": {
        "name",
        "from_email",
        "from_name",
        "reply_to",
        "base_url",
        "postal_address",
        "reason",
        "language",
        "topics_file",
    },
    "paths": {"issues", "templates", "build", "database"},
    "style": {"accent_color", "background_color", "text_color", "logo_url", "logo_alt"},
    # url is checked here; the subscribe form's keys by subscribe_requests and web.py.
    "web": {
        "url",
        "subscribe_per_client",
        "subscribe_overall",
        "max_pending",
        "trusted_proxies",
        "confirmations",
        "full_ip",
    },
    # newsletter.welcome: the welcome email's file (default: issues/welcome.md).
    "welcome": {"file", "latest_issue_days"},
    "sending": {"unsubscribe_mailto"},
    "provider": None,  # provider modules check their own keys
    "crossref": {"base_url", "doi_base_url", "mailto", "timeout"},
    # Their values are checked by the modules that read them (dkim_signing, schedule, doctor);
    # a key nobody reads is a typo, refused here when the settings are read.
    "dkim": {"selector", "key_file", "domain"},
    "schedule": {"timezone", "window"},
    "doctor": {"nameserver"},
    "webhooks": None,  # checked by newsletter.webhook_settings
}
# Tables other modules read through Settings.section(); the provider module checks its own
# keys, when it is loaded.
_OPEN_TABLES = {"provider", "dkim", "sending", "web", "schedule", "doctor", "welcome"}
# What RFC 3986 allows in a URI, less the apostrophe; anything else (a space, a quote, <, >)
# breaks the links and headers the URL is put in.
_URI_CLASS = r"A-Za-z0-9\-._~:/?#\[\]@!$&()*+,;=%"
_URI_CHARACTERS = re.compile(f"[{_URI_CLASS}]*")
_NOT_URI_CHARACTER = re.compile(f"[^{_URI_CLASS}]")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_HOST = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)*[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
)

DEFAULTS: dict[str, Any] = {
    "newsletter": {
        "name": "Practice Research Digest",
        "from_email": "digest@example.org",
        "from_name": "Practice Research Digest",
        "reply_to": "",
        "base_url": "https://digest.example.org",
        "postal_address": "Practice Research Digest, 12 Example Street, Springfield 01234",
        "reason": "You receive this email because you subscribed to the Practice Research Digest.",
        "language": "en",
    },
    "paths": {
        "issues": "issues",
        "templates": "templates",
        "build": "build",
        "database": "newsletter.db",
    },
    "provider": {"name": "outbox"},
}


def find_settings(start: Path | None = None) -> Path | None:
    """The nearest newsletter.toml in ``start`` or its parents, or None."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / SETTINGS_FILE
        if candidate.is_file():
            return candidate
    return None


def load_settings(path: Path | None = None, *, root: Path | None = None) -> Settings:
    """Read settings from ``path``; without one, use the embedded defaults in ``root``."""
    if path is None:
        return _build({}, source=None, root=(root or Path.cwd()).resolve())
    try:
        raw = tomllib.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise SettingsError("file not found", path=path) from None
    except UnicodeDecodeError as exc:
        raise SettingsError(f"not UTF-8 text ({exc.reason})", path=path) from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"not valid TOML: {exc}", path=path) from None
    return _build(raw, source=path, root=path.resolve().parent)


def _build(raw: dict[str, Any], *, source: Path | None, root: Path) -> Settings:
    where = source or Path("<embedded defaults>")
    for table, value in raw.items():
        if table not in _KNOWN and table not in _OPEN_TABLES:
            known = ", ".join(f"[{t}]" for t in sorted(set(_KNOWN) | _OPEN_TABLES))
            raise SettingsError(f"unknown table [{table}]; known tables: {known}", path=where)
        if not isinstance(value, dict):
            raise SettingsError("must be a table", path=where, key=table)
        allowed = _KNOWN.get(table)
        if allowed is not None:
            for key in value:
                if key not in allowed:
                    hint = ", ".join(sorted(allowed))
                    raise SettingsError(
                        f"unknown key; [{table}] takes: {hint}", path=where, key=f"{table}.{key}"
                    )

    def get(table: str, key: str, default: str | None = None) -> str:
        value = raw.get(table, {}).get(key, DEFAULTS.get(table, {}).get(key, default))
        if value is None:
            raise SettingsError("missing; add it to the file", path=where, key=f"{table}.{key}")
        if not isinstance(value, str):
            raise SettingsError("must be a string", path=where, key=f"{table}.{key}")
        return value.strip()

    name = get("newsletter", "name")
    if not name:
        raise SettingsError("must not be empty", path=where, key="newsletter.name")
    from_email = _address(get("newsletter", "from_email"), where, "newsletter.from_email")
    reply_to = get("newsletter", "reply_to", "")
    if reply_to:
        reply_to = _address(reply_to, where, "newsletter.reply_to")
    for key in ("name", "from_name"):
        control = _CONTROL.search(get("newsletter", key, ""))
        if control:
            raise SettingsError(
                "must be one line without control characters "
                f"(found {describe_character(control[0])})",
                path=where,
                key=f"newsletter.{key}",
            )
    base_url = check_url(
        get("newsletter", "base_url").rstrip("/"), where, "newsletter.base_url", site=True
    )
    postal = get("newsletter", "postal_address")
    if not postal:
        raise SettingsError(
            "must not be empty: bulk email must carry the sender's postal address",
            path=where,
            key="newsletter.postal_address",
        )

    style_raw = raw.get("style", {})
    style = Style(**{k: str(v) for k, v in style_raw.items()})
    if style.logo_url:
        check_url(style.logo_url, where, "style.logo_url")
    if any(c in style.logo_alt for c in "\r\n"):
        raise SettingsError("must be one line", path=where, key="style.logo_alt")
    for key in ("accent_color", "background_color", "text_color"):
        if not _COLOR.match(getattr(style, key)):
            raise SettingsError(
                f"must be a colour like #1f5f5b, not {getattr(style, key)!r}",
                path=where,
                key=f"style.{key}",
            )

    paths = Paths(
        **{key: (root / get("paths", key)).resolve() for key in ("issues", "templates", "build")},
        database=store_location(get("paths", "database"), root, where),
    )

    topics_file = get("newsletter", "topics_file", "")
    if topics_file:
        topics_path = root / topics_file
        try:
            taxonomy = Taxonomy.from_file(topics_path)
        except OSError as exc:
            raise SettingsError(
                f"cannot read {topics_path}: {exc.strerror}",
                path=where,
                key="newsletter.topics_file",
            ) from None
        if not taxonomy.topics:
            raise SettingsError(
                f"{topics_path} lists no topics", path=where, key="newsletter.topics_file"
            )
    else:
        taxonomy = Taxonomy.default()

    provider_raw = dict(DEFAULTS["provider"]) | raw.get("provider", {})
    provider = provider_raw.pop("name")
    if not isinstance(provider, str) or not provider:
        raise SettingsError("must name a provider", path=where, key="provider.name")

    sections = {t: dict(v) for t, v in raw.items() if t in _OPEN_TABLES - {"provider"}}
    _check_web(sections.get("web", {}), where)
    _check_sending(sections.get("sending", {}), where)
    crossref = _crossref(raw.get("crossref", {}), where, from_email)

    return Settings(
        root=root,
        source=source,
        name=name,
        from_email=from_email,
        from_name=get("newsletter", "from_name", name) or name,
        reply_to=reply_to,
        base_url=base_url,
        postal_address=postal,
        reason=get("newsletter", "reason"),
        language=get("newsletter", "language"),
        paths=paths,
        style=style,
        taxonomy=taxonomy,
        provider=provider,
        provider_options=provider_raw,
        sections=sections,
        crossref=crossref,
        webhooks=parse_webhooks(raw.get("webhooks", {}), where),
    )


def _crossref(raw: dict[str, Any], where: Path, from_email: str) -> Crossref:
    defaults = Crossref()
    urls: dict[str, str] = {}
    for key in ("base_url", "doi_base_url"):
        value = raw.get(key, getattr(defaults, key))
        value = value.strip().rstrip("/") if isinstance(value, str) else value
        urls[key] = check_url(value, where, f"crossref.{key}", site=True)
    mailto = raw.get("mailto", from_email)
    if not isinstance(mailto, str):
        raise SettingsError("must be a string", path=where, key="crossref.mailto")
    if mailto:
        mailto = _address(mailto, where, "crossref.mailto")
    timeout = raw.get("timeout", defaults.timeout)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise SettingsError(
            f"must be a number of seconds above 0, not {timeout!r}",
            path=where,
            key="crossref.timeout",
        )
    return Crossref(mailto=mailto, timeout=float(timeout), **urls)


def _address(value: str, where: Path, key: str) -> str:
    try:
        return validate_email(value, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise SettingsError(
            f"{value!r} is not an email address: {exc}", path=where, key=key
        ) from None


# Wins over [paths] database: a server's password belongs in the environment, not in a file.
DATABASE_URL_VARIABLE = "NEWSLETTER_DATABASE_URL"


def store_location(value: str, root: Path, where: Path) -> StoreLocation:
    """``[paths] database`` (or NEWSLETTER_DATABASE_URL, which wins) as a store's location.

    A ``postgresql://`` (or ``postgres://``) URL names a PostgreSQL store; anything else is
    the SQLite file's path, relative to the settings' folder.
    """
    key = "paths.database"
    from_environment = os.environ.get(DATABASE_URL_VARIABLE, "").strip()
    if from_environment:
        value, where, key = from_environment, Path(f"${DATABASE_URL_VARIABLE}"), ""
    try:
        return parse_location(value, root)
    except ValueError as exc:
        raise SettingsError(str(exc), path=where, key=key) from None


def check_url(value: object, where: Path, key: str, *, site: bool = False) -> str:
    """``value`` when it is an absolute http(s) URL; a SettingsError naming ``key`` otherwise.

    ``site``: the root of a web site, which links are made from by appending paths, so it
    takes no query or fragment.
    """
    example = "https://news.example.org" if site else "https://news.example.org/logo.png"

    def refuse(why: str) -> SettingsError:
        return SettingsError(
            f"must be an http(s) URL such as {example}, not {value!r}: {why}",
            path=where,
            key=key,
        )

    if not isinstance(value, str):
        raise SettingsError("must be a string", path=where, key=key)
    if not value:
        raise refuse("it is empty")
    bad = _NOT_URI_CHARACTER.search(value)
    if bad:
        shown = "a space" if bad[0] == " " else f"{bad[0]!r}"
        raise refuse(f"it contains {shown}, which a URL cannot (encode it as %XX)")
    if _BAD_PERCENT.search(value):
        raise refuse("a % is not followed by two hex digits")
    parts = urlsplit(value)
    if parts.scheme.lower() not in ("http", "https"):
        scheme = f"{parts.scheme}:" if parts.scheme else "nothing"
        raise refuse(f"it must start with https:// or http://, not with {scheme}")
    try:
        host, _ = parts.hostname, parts.port
    except ValueError as exc:
        raise refuse(str(exc)) from None
    if not host or not (_HOST.fullmatch(host) or ":" in host):
        raise refuse("it has no valid host name after the //")
    if site and (parts.query or parts.fragment or value.endswith(("?", "#"))):
        raise refuse("links are made by appending paths to it, so it takes no ? or #")
    return value


def _check_web(table: dict[str, Any], where: Path) -> None:
    if "url" in table:
        url = table["url"]
        url = url.strip().rstrip("/") if isinstance(url, str) else url
        table["url"] = check_url(url, where, "web.url", site=True)
    try:
        for key in ("subscribe_per_client", "subscribe_overall"):
            if key in table:
                Allowance.parse(table[key], f"web.{key}")
    except SettingsError as exc:
        raise SettingsError(str(exc).removeprefix("settings: "), path=where) from None
    pending = table.get("max_pending", 1)
    if isinstance(pending, bool) or not isinstance(pending, int) or pending < 1:
        raise SettingsError(
            f"must be a whole number above 0, not {pending!r}", path=where, key="web.max_pending"
        )
    _check_proxies(table.get("trusted_proxies", []), where)
    if not isinstance(table.get("full_ip", False), bool):
        raise SettingsError(
            f"must be true or false, not {table['full_ip']!r}", path=where, key="web.full_ip"
        )
    mode = table.get("confirmations", "worker")
    if mode not in ("worker", "run-due"):
        raise SettingsError(
            f'must be "worker" (the app sends them) or "run-due" (cron does), not {mode!r}',
            path=where,
            key="web.confirmations",
        )


def _check_proxies(value: object, where: Path) -> None:
    key = "web.trusted_proxies"
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SettingsError(
            'must be a list of addresses or networks, e.g. ["127.0.0.1", "10.0.0.0/8"]',
            path=where,
            key=key,
        )
    for entry in value:
        if entry == "unix":
            continue  # a proxy on a unix socket: the peer has no address
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise SettingsError(
                f"{entry!r} is not an IP address or network", path=where, key=key
            ) from None


def _check_sending(table: dict[str, Any], where: Path) -> None:
    mailto = table.get("unsubscribe_mailto")
    if mailto is None:
        return
    key = "sending.unsubscribe_mailto"
    if not isinstance(mailto, str):
        raise SettingsError("must be a string", path=where, key=key)
    mailto = mailto.strip()
    if not mailto:
        return  # the default: unsubscribe@<sender domain>
    address, _, query = mailto.removeprefix("mailto:").partition("?")
    if not _URI_CHARACTERS.fullmatch(query) or _BAD_PERCENT.search(query):
        raise SettingsError(
            f"{mailto!r}: the part after ? may hold only URL characters (no spaces, quotes, "
            "< or >); e.g. mailto:unsubscribe@example.org?subject=unsubscribe",
            path=where,
            key=key,
        )
    checked = _address(address, where, key)
    if not checked.isascii():
        raise SettingsError(f"{address!r} must be an ASCII address", path=where, key=key)
    table["unsubscribe_mailto"] = f"mailto:{checked}" + (f"?{query}" if query else "")


_ALLOWANCE = re.compile(r"\s*(\d+)\s*/\s*(s|sec|second|m|min|minute|h|hour|d|day)\s*")
_UNIT_SECONDS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60}
_UNIT_SECONDS |= {"h": 3600, "hour": 3600, "d": 86400, "day": 86400}


@dataclass(frozen=True)
class Allowance:
    """At most ``count`` requests per ``seconds``."""

    count: int
    seconds: int

    @classmethod
    def parse(cls, value: object, key: str) -> Allowance:
        """``"10/hour"`` (also ``/s``, ``/min``, ``/h``, ``/day``); SettingsError naming ``key``."""
        found = _ALLOWANCE.fullmatch(value) if isinstance(value, str) else None
        if found is None or int(found[1]) < 1:
            raise SettingsError(
                f'must be an allowance such as "10/hour" or "300/day", not {value!r}', key=key
            )
        return cls(int(found[1]), _UNIT_SECONDS[found[2]])
