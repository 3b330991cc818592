"""The ``null`` provider: accepts every message and sends nothing. For benchmarks and tests."""

from __future__ import annotations

from collections.abc import Sequence

from newsletter.messages import OutgoingMessage
from newsletter.providers.base import DeliveryResult, Provider


class NullProvider(Provider):
    name = "null"
    default_batch_size = 1000
    max_batch_size = 100_000

    def send_batch(self, messages: Sequence[OutgoingMessage]) -> list[DeliveryResult]:
        return [
            DeliveryResult.accepted(message, f"null-{message.recipient_id}") for message in messages
        ]
