"""Where the store is: a SQLite file's path or a PostgreSQL URL (``[paths] database``).

Kept apart from newsletter.postgres so that reading the settings never imports the driver.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

URL_SCHEMES = ("postgresql", "postgres")


def is_database_url(value: str) -> bool:
    return value.split("://", 1)[0].lower() in URL_SCHEMES and "://" in value


@dataclass(frozen=True)
class DatabaseUrl:
    """Where a PostgreSQL store is. ``str()`` hides the password: it goes in messages."""

    url: str

    def __str__(self) -> str:
        return redact(self.url)

    @property
    def name(self) -> str:
        """The database's name (for file names such as a backup's)."""
        return urlsplit(self.url).path.lstrip("/") or "postgres"


def redact(url: str) -> str:
    """``url`` with its password (in the address or the query) replaced by ``***``."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        credentials, host = netloc.rsplit("@", 1)
        if ":" in credentials:
            credentials = credentials.split(":", 1)[0] + ":***"
        netloc = f"{credentials}@{host}"
    query = re.sub(r"(?i)(password=)[^&]*", r"\1***", parts.query)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


# A store is either: the SQLite file's path, or the PostgreSQL server's URL.
StoreLocation = Path | DatabaseUrl


def parse_location(value: str, root: Path) -> StoreLocation:
    """``value`` (a setting, an environment variable, a command's argument) as a store's
    location: a ``postgresql://`` URL, or a SQLite file's path relative to ``root``.
    ValueError, saying why, for another scheme or a URL that cannot be one.
    """
    if not is_database_url(value):
        if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", value):
            raise ValueError(
                f"{value.split('://', 1)[0]}:// is not a store this tool knows: give a SQLite "
                "file's path or a postgresql:// URL"
            )
        return (root / value).resolve()
    location = DatabaseUrl(value)
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
    except ValueError as exc:
        raise ValueError(f"{location} is not a valid URL ({exc})") from None
    bad = next((c for c in value if c.isspace() or ord(c) < 32 or ord(c) == 127), None)
    if bad is not None:
        raise ValueError(
            f"{location} contains the character U+{ord(bad):04X}; percent-encode it (%20 for "
            "a space)"
        )
    if not parts.path.strip("/"):
        raise ValueError(f"{location} names no database: end it with /DATABASE_NAME")
    return location
