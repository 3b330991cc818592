"""The project's exceptions. Every error a person can act on derives from NewsletterError.

NewsletterError                 base: the CLI prints "Error: <message>" and exits 1
├── SettingsError               newsletter.toml is missing a key, has a wrong value, or is not TOML
├── IssueFileError              an issue file has problems; carries every Problem found
├── TemplateError               a template is missing or fails to render
├── CheckFailed                 `newsletter check` found errors (its report lists them)
├── InvalidInput                a value is not acceptable (an address, a name, a topic, a status,
│   │                           a subscriber that is not there); also a ValueError
│   └── ImportRejected          a CSV import was refused; carries each rejected row
├── ImportUnfinished            an earlier import was interrupted (or another is running): it
│                               must be finished or undone before another one starts
├── StoreError                  the subscriber store cannot be opened, read or written (storage
│   │                           only: the web endpoints answer it with 503, InvalidInput with 400)
│   └── StoreReadOnly           the store's file (or folder) cannot be written by this user
├── MessageError                a message cannot be built (e.g. a header with CR/LF)
├── ProviderError               a provider refused or failed; carries the provider's name and reply
│   └── ProviderConfigError     a provider is unknown or its settings/credentials are missing
├── SendError                   a send cannot start or was stopped
│   └── SendBusy                another process is sending the same issue (its lock is taken)
├── TokenError                  a signed link is forged, truncated or for another newsletter
├── WebhookConfigError          a webhook source cannot start: its secret or key is missing or unusable
└── DoiLookupError              a DOI's record cannot be fetched (network, rate limit, server)
    └── DoiNotFound             neither Crossref nor doi.org knows the DOI

The library never imports click: the CLI turns NewsletterError into click's error output.
An error that quotes its input quotes an ``excerpt``: escaped, and short whatever the input;
one that points at an invisible character names it with ``describe_character``.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # providers.base imports this module
    from newsletter.providers.base import DeliveryResult


class NewsletterError(Exception):
    """An error with a message meant for the person running the tool."""


class SettingsError(NewsletterError):
    def __init__(self, message: str, *, path: Path | str | None = None, key: str | None = None):
        where = str(path) if path else "settings"
        if key:
            where = f"{where}: [{key}]" if "." not in key else f"{where}: {key}"
        super().__init__(f"{where}: {message}")
        self.path = path
        self.key = key


def excerpt(text: str, limit: int = 60) -> str:
    """``text`` quoted for an error message: invisible characters escaped, and cut after
    ``limit`` characters with its full length, so that a binary or huge input cannot flood
    the message."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}… ({len(text):,} characters)"


def describe_character(character: str) -> str:
    """``U+001B ESCAPE``: a character, often one the reader cannot see, by code point and name."""
    name = unicodedata.name(character, "") or _CONTROL_NAMES.get(ord(character), "control")
    return f"U+{ord(character):04X} {name}"


# Unicode gives the C0 and C1 controls no names; these are their usual ones.
_CONTROL_NAMES = {
    0x00: "NULL",
    0x09: "TAB",
    0x0A: "LINE FEED",
    0x0B: "LINE TABULATION",
    0x0C: "FORM FEED",
    0x0D: "CARRIAGE RETURN",
    0x1B: "ESCAPE",
    0x7F: "DELETE",
    0x85: "NEXT LINE",
}


@dataclass(frozen=True, order=True)
class Problem:
    """One finding about an input file, printed as ``path:line: message``."""

    path: str
    line: int
    message: str
    severity: str = "error"  # "error" or "warning"

    def __str__(self) -> str:
        prefix = "" if self.severity == "error" else "warning: "
        location = f"{self.path}:{self.line}" if self.line else self.path
        return f"{location}: {prefix}{self.message}"


class IssueFileError(NewsletterError):
    """An issue file could not be read; ``problems`` lists every problem, in file order."""

    def __init__(self, problems: list[Problem]):
        self.problems = sorted(problems, key=lambda p: (p.path, p.line))
        count = len(self.problems)
        noun = "problem" if count == 1 else "problems"
        body = "\n".join(str(p) for p in self.problems)
        super().__init__(f"{count} {noun} in the issue file:\n{body}")


class TemplateError(NewsletterError):
    pass


class CheckFailed(NewsletterError):
    pass


class InvalidInput(NewsletterError, ValueError):
    """What a person or a file gave is not acceptable; nothing was stored."""


class StoreError(NewsletterError):
    """The store itself failed (missing, locked, full, corrupt, read-only).

    ``cause`` names what failed in a few words ("the disk is full"), for callers that put
    the failure of one statement into the context of a longer run.
    """

    def __init__(self, message: str, *, cause: str = ""):
        super().__init__(message)
        self.cause = cause or message


class StoreReadOnly(StoreError):
    """This user may read the store but not write it; commands that only read still work."""


class ImportRejected(InvalidInput):
    """A CSV import changed nothing; ``problems`` gives each rejected row as file:line."""

    def __init__(self, message: str, problems: list[Problem]):
        self.problems = problems
        shown = problems[:50]
        lines = [message, *(str(p) for p in shown)]
        if len(problems) > len(shown):
            lines.append(f"… and {len(problems) - len(shown)} more")
        super().__init__("\n".join(lines))


class ImportUnfinished(NewsletterError):
    """An import cannot start: another one is running, or one was interrupted half-way."""


class MessageError(NewsletterError):
    pass


class ProviderError(NewsletterError):
    """The provider cannot go on. ``results``, when set, says what became of each message of
    the batch in hand before it stopped (one DeliveryResult per message, in order), so that
    messages it had already accepted are recorded as sent, not sent again."""

    def __init__(
        self,
        provider: str,
        message: str,
        *,
        reply: str | None = None,
        results: Sequence[DeliveryResult] | None = None,
    ):
        text = f"{provider}: {message}"
        if reply:
            text += f"\nThe provider replied: {reply[:2000]}"
        super().__init__(text)
        self.provider = provider
        self.reply = reply
        self.results = results


class ProviderConfigError(ProviderError):
    pass


class SendError(NewsletterError):
    pass


class SendBusy(SendError):
    """The issue's send lock is held: another process is sending it right now."""


class TokenError(NewsletterError):
    pass


class WebhookConfigError(NewsletterError):
    """A ``[webhooks]`` source cannot verify anything: a secret is not set or a key is unusable."""


class DoiLookupError(NewsletterError):
    """A DOI's record could not be fetched; the message says from where and what to do."""


class DoiNotFound(DoiLookupError):
    pass
