"""The one interface every provider implements, and the helpers they share.

A provider is created from the settings, opened once, handed batches of at most
``batch_size`` messages, and closed. For each batch it returns one ``DeliveryResult`` per
message, in order. It never retries: it classifies each outcome (accepted, temporary,
permanent) and passes on the provider's Retry-After, and the send loop decides what to do.

A provider raises ``ProviderError`` only when carrying on cannot help (credentials refused,
a request the provider calls malformed); ``ProviderConfigError`` when its settings or
credentials are missing or wrong.

A provider whose service keeps suppression lists also implements ``suppressions()``, which
``newsletter subscribers sync`` reads: a third-party provider offers sending and sync alike.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, Literal, TypeVar

from newsletter.errors import ProviderConfigError
from newsletter.messages import OutgoingMessage
from newsletter.settings import Settings
from newsletter.store import Status

DeliveryStatus = Literal["accepted", "temporary", "permanent"]
_T = TypeVar("_T")


@dataclass(frozen=True)
class DeliveryResult:
    """What became of one message.

    ``uncertain`` is True when the request may have reached the provider although no answer
    came back (a read timeout, a connection dropped after the message was sent): resending
    such a message may deliver it twice, unless the provider honours its idempotency key.
    """

    recipient_id: int
    status: DeliveryStatus
    provider_message_id: str = ""
    reason: str = ""
    retry_after: float | None = None
    uncertain: bool = False

    @classmethod
    def accepted(cls, message: OutgoingMessage, provider_message_id: str = "") -> DeliveryResult:
        return cls(message.recipient_id, "accepted", provider_message_id=provider_message_id)

    @classmethod
    def temporary(
        cls,
        message: OutgoingMessage,
        reason: str,
        *,
        retry_after: float | None = None,
        uncertain: bool = False,
    ) -> DeliveryResult:
        return cls(
            message.recipient_id,
            "temporary",
            reason=reason,
            retry_after=retry_after,
            uncertain=uncertain,
        )

    @classmethod
    def permanent(cls, message: OutgoingMessage, reason: str) -> DeliveryResult:
        return cls(message.recipient_id, "permanent", reason=reason)


@dataclass(frozen=True)
class AccountCheck:
    """What a harmless authenticated call (``Provider.check_account``) proved.

    ``ok`` is None when the provider has no such call. ``sending_domains`` are the domains the
    service says it sends for, when it says (for DMARC alignment with the From domain).
    """

    ok: bool | None
    detail: str
    sending_domains: tuple[str, ...] = ()


@dataclass(frozen=True)
class Suppression:
    """One address on a provider's list: the status it means here, and why, for the record."""

    email: str
    status: Status  # BOUNCED, COMPLAINED or UNSUBSCRIBED
    reason: str


class Provider:
    """Base of every provider. Subclasses set ``name`` and implement ``send_batch``.

    ``options`` are the keys of the ``[provider]`` table other than ``name``; a subclass lists
    the ones it understands in ``known_options`` so that a typo is reported, not ignored.
    """

    name: ClassVar[str] = ""
    known_options: ClassVar[frozenset[str]] = frozenset()
    default_batch_size: ClassVar[int] = 100
    max_batch_size: ClassVar[int] = 1000
    # True when resending a message whose fate is unknown cannot deliver it twice, because the
    # service honours an idempotency key derived from (issue, subscriber).
    idempotent_retries: ClassVar[bool] = False
    # False for providers that deliver nothing (outbox, null): what they "sent" is a
    # rehearsal, and a real provider's send of the same issue still sends it.
    delivers: ClassVar[bool] = True
    # Keys every provider takes, read by the send loop rather than the provider.
    common_options: ClassVar[frozenset[str]] = frozenset({"batch_size", "rate"})

    def __init__(
        self, settings: Settings, options: dict[str, Any] | None = None, *, dry_run: bool = False
    ):
        self.settings = settings
        self.dry_run = dry_run
        self.missing_credentials: list[str] = []
        self.options = dict(settings.provider_options if options is None else options)
        unknown = sorted(set(self.options) - self.known_options - self.common_options)
        if unknown:
            known = ", ".join(sorted(self.known_options | self.common_options))
            raise ProviderConfigError(
                self.name,
                f"unknown setting [provider] {unknown[0]}; the {self.name} provider takes: {known}",
            )
        self.batch_size = self.option("batch_size", int, self.default_batch_size)
        if not 1 <= self.batch_size <= self.max_batch_size:
            raise ProviderConfigError(
                self.name,
                f"[provider] batch_size must be between 1 and {self.max_batch_size} "
                f"(the provider's documented limit), not {self.batch_size}",
            )

    def option(self, key: str, kind: type[_T], default: _T) -> _T:
        """The ``[provider]`` setting ``key``, checked to be of type ``kind``."""
        value = self.options.get(key, default)
        # TOML integers are acceptable where a float is expected.
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ProviderConfigError(
                self.name,
                f"[provider] {key} must be a {kind.__name__}, not {value!r}",
            )
        return value

    def choice(self, key: str, choices: Sequence[str], default: str) -> str:
        value = self.option(key, str, default)
        if value not in choices:
            raise ProviderConfigError(
                self.name,
                f"[provider] {key} must be one of {', '.join(choices)}, not {value!r}",
            )
        return value

    def secret(self, variable: str) -> str:
        """A credential from the environment; never from a file, never echoed back."""
        value = os.environ.get(variable, "")
        if not value and self.dry_run:
            # A dry run builds the real payloads but sends nothing, so it can go on; the
            # summary says the real send would stop here.
            self.missing_credentials.append(variable)
            return ""
        if not value:
            raise ProviderConfigError(
                self.name,
                f"the environment variable {variable} is not set; the {self.name} provider "
                "reads its credential from it (see docs/providers.md)",
            )
        return value

    def open(self) -> None:
        """Connect, check credentials, start workers. Called once before the first batch."""

    def send_batch(self, messages: Sequence[OutgoingMessage]) -> list[DeliveryResult]:
        """Hand ``messages`` (at most ``batch_size``) over; one result per message, in order."""
        raise NotImplementedError

    def close(self) -> None:
        """Release connections and write anything pending. Safe to call twice."""

    def check_account(self) -> AccountCheck:
        """Prove the credential with a call that sends nothing (``newsletter doctor --online``)."""
        return AccountCheck(None, f"the {self.name} provider has no account check")

    def suppressions(self) -> Iterator[Suppression]:
        """Every entry on the service's bounce, complaint and unsubscribe lists (opened first).

        The default: the service keeps no such list.
        """
        raise ProviderConfigError(
            self.name, f"the {self.name} provider has no suppression list to sync"
        )
        yield  # pragma: no cover  (makes this a generator, as overrides are)

    def __enter__(self) -> Provider:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        # Options only: credentials live in the environment and never in the repr.
        return f"<{type(self).__name__} {self.name!r} batch_size={self.batch_size}>"
