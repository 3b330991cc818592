"""The ``null`` provider: builds and accepts every message, and sends nothing.

For benchmarks and tests: the send loop does all its real work (journal, personalisation,
encoding) and only the network is left out.
"""

from __future__ import annotations

from collections.abc import Sequence

from newsletter.messages import OutgoingMessage
from newsletter.providers.base import DeliveryResult, Provider


class NullProvider(Provider):
    name = "null"
    delivers = False
    default_batch_size = 1000
    max_batch_size = 100_000

    def send_batch(self, messages: Sequence[OutgoingMessage]) -> list[DeliveryResult]:
        results = []
        for message in messages:
            message.as_bytes()  # the complete message, as SMTP would get it
            results.append(DeliveryResult.accepted(message, f"null-{message.recipient_id}"))
        return results
