"""The ``postmark`` provider: Postmark's /email/batch, up to 500 messages a call.

Postmark has no per-recipient substitution in this endpoint, so each message carries its own
filled bodies; those are spliced from JSON pieces escaped once per issue. The reply is 200 with
one entry per message, in order, each with its own ErrorCode.

Settings: ``message_stream`` (default "broadcast", Postmark's stream for newsletters),
``base_url``, ``timeout``. Credential: ``POSTMARK_SERVER_TOKEN``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from typing import Any

import requests

from newsletter.errors import ProviderError
from newsletter.messages import ONE_CLICK, OutgoingMessage, PreparedIssue, literal_header_text
from newsletter.providers.base import AccountCheck, DeliveryResult, Suppression
from newsletter.providers.http import ApiRequest, HttpProvider, full_message_array, plain_address
from newsletter.settings import Settings

# Per-message codes that concern the account or server, not the recipient: stop the send.
_ACCOUNT_CODES = {10, 400, 401, 405, 412, 413}
# Per-message codes worth trying again later.
_TEMPORARY_CODES = {100, 429}


@dataclass(frozen=True)
class _SharedFields:
    """The JSON around each message's own values, encoded once per issue.

    An entry is: before_to, its To, before_unsubscribe, its List-Unsubscribe, before_id, its
    recipient id, before_text, TextBody, ',"HtmlBody":', HtmlBody, "}".
    """

    before_to: str
    before_unsubscribe: str
    before_id: str
    before_text: str


def _json(value: str) -> str:
    return encode_basestring_ascii(value)


class PostmarkProvider(HttpProvider):
    name = "postmark"
    credential_variable = "POSTMARK_SERVER_TOKEN"
    default_base_url = "https://api.postmarkapp.com"
    known_options = HttpProvider.known_options | {"message_stream"}
    default_batch_size = 500
    max_batch_size = 500  # Postmark's documented limit per batch call

    def __init__(
        self, settings: Settings, options: dict[str, Any] | None = None, *, dry_run: bool = False
    ):
        super().__init__(settings, options, dry_run=dry_run)
        self.message_stream = self.option("message_stream", str, "broadcast")

    def authenticate(self, session: requests.Session, credential: str) -> None:
        session.headers["X-Postmark-Server-Token"] = credential

    def account_path(self) -> str:
        return "/server"  # the server the token belongs to

    def read_account(self, response: requests.Response) -> AccountCheck:
        server = response.json().get("Name", "?")
        return AccountCheck(True, f"{self.credential_variable} accepted (server {server!r})")

    def _shared_fields(self, issue: PreparedIssue) -> _SharedFields:
        reply_to = f',"ReplyTo":{_json(issue.reply_to)}' if issue.reply_to else ""
        return _SharedFields(
            before_to=f'{{"From":{_json(plain_address(issue.from_name, issue.from_email))},"To":',
            before_unsubscribe=(
                f',"Subject":{_json(literal_header_text(issue.subject))},"MessageStream":{_json(self.message_stream)},'
                '"Headers":[{"Name":"List-Unsubscribe","Value":'
            ),
            before_id=(
                f'}},{{"Name":"List-Unsubscribe-Post","Value":{_json(ONE_CLICK)}}},'
                f'{{"Name":"List-Id","Value":{_json(issue.list_id_header)}}}],'
                '"Metadata":{"newsletter_recipient":"'
            ),
            before_text=f'"}}{reply_to},"TextBody":',
        )

    def build_request(self, messages: Sequence[OutgoingMessage]) -> ApiRequest:
        """A JSON array with one complete message per recipient.

        Postmark has no per-recipient substitution in this endpoint; see full_message_array.
        """
        shared = self.shared_parts(messages[0].issue, self._shared_fields)

        def head(message: OutgoingMessage) -> str:
            recipient = message.recipient
            to = plain_address(recipient.name, recipient.email)
            return (
                f"{shared.before_to}{_json(to)}{shared.before_unsubscribe}"
                f"{_json(message.list_unsubscribe)}{shared.before_id}{recipient.id}"
                f"{shared.before_text}"
            )

        return ApiRequest(path="/email/batch", body=full_message_array(messages, head, "HtmlBody"))

    def parse_reply(
        self, messages: Sequence[OutgoingMessage], response: requests.Response
    ) -> list[DeliveryResult]:
        if response.status_code != 200:
            # 422 with {"ErrorCode", "Message"}: the request as a whole is wrong.
            raise self.refuse(response, "Postmark refused the batch")
        try:
            entries = response.json()
            if not isinstance(entries, list) or len(entries) != len(messages):
                raise ValueError
            return [
                self._result(message, entry, response)
                for message, entry in zip(messages, entries, strict=True)
            ]
        except (ValueError, KeyError, TypeError):
            raise self.refuse(response, "unexpected reply from Postmark") from None

    def _result(
        self, message: OutgoingMessage, entry: dict[str, Any], response: requests.Response
    ) -> DeliveryResult:
        code = int(entry["ErrorCode"])
        if code == 0:
            return DeliveryResult.accepted(message, str(entry.get("MessageID", "")))
        reason = f"ErrorCode {code}: {entry.get('Message', '')}"
        if code in _ACCOUNT_CODES:
            raise ProviderError(self.name, f"Postmark refused the account: {reason}")
        if code in _TEMPORARY_CODES:
            return DeliveryResult.temporary(message, reason)
        return DeliveryResult.permanent(message, reason)

    def suppressions(self) -> Iterator[Suppression]:
        # The lists' paging and shapes are in their own module; imported here because it
        # imports this one.
        from newsletter.suppressions import postmark as lists

        yield from lists.fetch(self)
