"""The ``mailgun`` provider: Mailgun's messages API in batch mode, up to 1,000 recipients a call.

One call carries the issue once, with ``%recipient.…%`` tags where the per-recipient values
go, a ``to`` field per recipient, and ``recipient-variables`` holding each recipient's values.
Mailgun fills the tags in the body, the subject and the ``h:`` headers, and sends each recipient
a separate message that shows only their own address.

Settings: ``domain`` (default: the domain of newsletter.from_email), ``region`` ("us" or
"eu"), ``base_url``, ``timeout``. Credential: ``MAILGUN_API_KEY``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import requests

from newsletter.messages import ONE_CLICK, OutgoingMessage
from newsletter.providers.base import DeliveryResult
from newsletter.providers.http import (
    ApiRequest,
    HttpProvider,
    merge_results,
    plain_address,
    split_duplicates,
)
from newsletter.settings import Settings

_REGIONS = {"us": "https://api.mailgun.net", "eu": "https://api.eu.mailgun.net"}


def _tag(part: str, slot: str) -> str:
    return f"%recipient.nl_{part}_{slot}%"


class MailgunProvider(HttpProvider):
    name = "mailgun"
    credential_variable = "MAILGUN_API_KEY"
    known_options = HttpProvider.known_options | {"domain", "region"}
    default_batch_size = 1000
    max_batch_size = 1000  # Mailgun's documented limit for batch sending

    def __init__(
        self, settings: Settings, options: dict[str, Any] | None = None, *, dry_run: bool = False
    ):
        options = dict(settings.provider_options if options is None else options)
        region = options.get("region", "us")
        if "base_url" not in options and region in _REGIONS:
            options["base_url"] = _REGIONS[region]
        super().__init__(settings, options, dry_run=dry_run)
        self.choice("region", tuple(_REGIONS), "us")
        self.domain = self.option("domain", str, settings.sender_domain)

    def authenticate(self, session: requests.Session, credential: str) -> None:
        session.auth = ("api", credential)

    def build_request(self, messages: Sequence[OutgoingMessage]) -> ApiRequest:
        unique, _ = split_duplicates(messages)
        issue = unique[0].issue
        form: list[tuple[str, str]] = [
            ("from", plain_address(issue.from_name, issue.from_email)),
            ("subject", issue.subject),
            ("text", issue.text_part.with_markers(lambda slot: _tag("text", slot))),
            ("html", issue.html_part.with_markers(lambda slot: _tag("html", slot))),
            (
                "h:List-Unsubscribe",
                f"<{_tag('header', 'unsubscribe_url')}>, <{issue.unsubscribe_mailto}>",
            ),
            ("h:List-Unsubscribe-Post", ONE_CLICK),
            ("h:List-Id", issue.list_id_header),
            ("o:tag", f"newsletter-{issue.month}"),
        ]
        if issue.reply_to:
            form.append(("h:Reply-To", issue.reply_to))
        variables: dict[str, dict[str, str]] = {}
        for message in unique:
            recipient = message.recipient
            form.append(("to", plain_address(recipient.name, recipient.email)))
            text, html = message.values("text"), message.values("html")
            variables[recipient.email] = {
                "nl_text_name": text["name"],
                "nl_text_email": text["email"],
                "nl_text_unsubscribe_url": text["unsubscribe_url"],
                "nl_html_name": html["name"],
                "nl_html_email": html["email"],
                "nl_html_unsubscribe_url": html["unsubscribe_url"],
                "nl_header_unsubscribe_url": recipient.unsubscribe_url,
                "nl_recipient_id": str(recipient.id),
            }
        form.append(("recipient-variables", json.dumps(variables)))
        return ApiRequest(path=f"/v3/{self.domain}/messages", form=form)

    def parse_reply(
        self, messages: Sequence[OutgoingMessage], response: requests.Response
    ) -> list[DeliveryResult]:
        if response.status_code != 200:
            # Mailgun refuses a batch as a whole ({"message": …}) without naming a recipient.
            raise self.refuse(response, "Mailgun refused the batch")
        try:
            message_id = str(response.json()["id"])
        except (ValueError, KeyError, TypeError):
            raise self.refuse(response, "unexpected reply from Mailgun") from None
        unique, repeats = split_duplicates(messages)
        accepted = [DeliveryResult.accepted(message, message_id) for message in unique]
        return merge_results(messages, accepted, repeats)
