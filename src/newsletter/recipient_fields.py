"""The per-recipient fields: what rendering leaves as placeholders and each message fills in.

An issue is rendered once, so whatever differs per subscriber is written into the output as a
placeholder (``[[name]]``, ``[[email]]``, ``[[unsubscribe_url]]``) that survives MJML and the
CSS inliner unchanged. The preview, the archive and the send path all take the names, the
pattern, the fallback name and the escaping rule from here, so that what the author previews
is what a subscriber gets.

Filling is one pass over the template: a value that itself looks like a placeholder (a name
typed as ``[[unsubscribe_url]]``) is written as it is, never expanded.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping

FIELDS = ("name", "email", "unsubscribe_url")
PLACEHOLDERS = {field: f"[[{field}]]" for field in FIELDS}
PATTERN = re.compile(r"\[\[(name|email|unsubscribe_url)\]\]")
# What "Dear [[name]]" says to a subscriber who gave no name, and on the public archive.
NAME_FALLBACK = "reader"

_HTML_SPECIAL = re.compile(r"[&<>\"']")


def display_name(name: str) -> str:
    return name or NAME_FALLBACK


def escape_html(value: str) -> str:
    """A value fit for HTML text and for a quoted attribute (links carry the unsubscribe URL)."""
    # Most names, addresses and URLs have nothing to escape; skip the five replaces for them.
    return html.escape(value, quote=True) if _HTML_SPECIAL.search(value) else value


def needs_html_escape(text: str) -> bool:
    return _HTML_SPECIAL.search(text) is not None


def recipient_values(name: str, email: str, unsubscribe_url: str) -> dict[str, str]:
    """The fields of one recipient, unescaped, with the fallback name applied."""
    return {"name": display_name(name), "email": email, "unsubscribe_url": unsubscribe_url}


def fill(template: str, values: Mapping[str, str], *, html: bool) -> str:
    """``template`` with each placeholder replaced; in HTML the values are escaped."""
    filled = {key: escape_html(value) if html else value for key, value in values.items()}
    return PATTERN.sub(lambda m: filled.get(m.group(1), m.group(0)), template)


def known_fields() -> str:
    """The placeholders an author may use, for messages: "[[name]], [[email]] and …"."""
    names = list(PLACEHOLDERS.values())
    return ", ".join(names[:-1]) + " and " + names[-1]
