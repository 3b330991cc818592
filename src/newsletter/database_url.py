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
