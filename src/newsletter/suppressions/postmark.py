"""Postmark's suppressions of the message stream the newsletter is sent on.

``GET /message-streams/<stream>/suppressions/dump`` answers ``{"Suppressions": [...]}`` with
every suppressed address at once (the API documents no paging). HardBounce means bounced,
SpamComplaint complained, and ManualSuppression unsubscribed: Postmark files a recipient's own
unsubscribe under it (origin "Recipient"), as well as addresses the sender suppressed.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import quote

from newsletter.providers.http import HttpProvider
from newsletter.providers.postmark import PostmarkProvider
from newsletter.store import Status
from newsletter.suppressions.common import Suppression, unexpected

REASONS = {
    "HardBounce": Status.BOUNCED,
    "SpamComplaint": Status.COMPLAINED,
    "ManualSuppression": Status.UNSUBSCRIBED,
}


def fetch(provider: HttpProvider) -> Iterator[Suppression]:
    assert isinstance(provider, PostmarkProvider)
    stream = quote(provider.message_stream, safe="")
    reply = provider.get_json(f"{provider.base_url}/message-streams/{stream}/suppressions/dump")
    items = reply.get("Suppressions") if isinstance(reply, dict) else None
    if not isinstance(items, list):
        raise unexpected(provider, "suppressions/dump", reply)
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("EmailAddress"), str):
            continue
        status = REASONS.get(str(item.get("SuppressionReason")))
        if status is None:
            continue
        origin = str(item.get("Origin") or "unknown origin")
        yield Suppression(
            item["EmailAddress"],
            status,
            f"postmark {item['SuppressionReason']} ({origin})",
        )
