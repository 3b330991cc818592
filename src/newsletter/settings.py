"""Reading ``newsletter.toml``: the newsletter's name, sender, links, look and paths.

Every key is checked here, once, so that a typo in the settings is reported with the file and
the key instead of surfacing later as a wrong email.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from email_validator import EmailNotValidError, validate_email

from newsletter.errors import SettingsError
from newsletter.taxonomy import Taxonomy, slugify
from newsletter.webhook_settings import WebhookSettings, parse_webhooks

SETTINGS_FILE = "newsletter.toml"
_COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")


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
    database: Path


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
    "provider": None,  # provider modules check their own keys
    "crossref": {"base_url", "doi_base_url", "mailto", "timeout"},
    "webhooks": None,  # checked by newsletter.webhook_settings
}
# Tables owned by other modules, which validate their own keys when they use them.
_OPEN_TABLES = {"provider", "dkim", "sending", "web"}

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
        if any(c in get("newsletter", key, "") for c in "\r\n"):
            raise SettingsError("must be one line", path=where, key=f"newsletter.{key}")
    base_url = get("newsletter", "base_url").rstrip("/")
    if not re.match(r"^https?://[^/\s]+", base_url):
        raise SettingsError(
            f"must be an http(s) URL such as https://news.example.org, not {base_url!r}",
            path=where,
            key="newsletter.base_url",
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
    for key in ("accent_color", "background_color", "text_color"):
        if not _COLOR.match(getattr(style, key)):
            raise SettingsError(
                f"must be a colour like #1f5f5b, not {getattr(style, key)!r}",
                path=where,
                key=f"style.{key}",
            )

    paths = Paths(
        **{key: (root / get("paths", key)).resolve() for key in ("issues", "templates", "build")},
        database=(root / get("paths", "database")).resolve(),
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
        sections={t: dict(v) for t, v in raw.items() if t in _OPEN_TABLES - {"provider"}},
        crossref=crossref,
        webhooks=parse_webhooks(raw.get("webhooks", {}), where),
    )


def _crossref(raw: dict[str, Any], where: Path, from_email: str) -> Crossref:
    defaults = Crossref()
    urls: dict[str, str] = {}
    for key in ("base_url", "doi_base_url"):
        value = raw.get(key, getattr(defaults, key))
        if not isinstance(value, str) or not re.match(r"^https?://[^/\s]+", value):
            raise SettingsError(
                f"must be an http(s) URL such as {getattr(defaults, key)}, not {value!r}",
                path=where,
                key=f"crossref.{key}",
            )
        urls[key] = value.rstrip("/")
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
