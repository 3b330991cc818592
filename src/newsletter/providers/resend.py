"""The ``resend`` provider: Resend's /emails/batch, up to 100 emails a call.

Each call carries an ``Idempotency-Key`` derived from the messages' own keys (issue and
subscriber), so sending the same batch again within Resend's 24-hour window returns the first
answer instead of sending twice. Validation is permissive: an invalid email is reported in
``errors`` by index and the others are still sent.

Settings: ``base_url``, ``timeout``. Credential: ``RESEND_API_KEY``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii

import requests

from newsletter.messages import ONE_CLICK, OutgoingMessage, PreparedIssue, literal_header_text
from newsletter.providers.base import AccountCheck, DeliveryResult, Suppression
from newsletter.providers.http import ApiRequest, HttpProvider, full_message_array, plain_address

IDEMPOTENCY_KEY_LIMIT = 256


def batch_idempotency_key(messages: Sequence[OutgoingMessage]) -> str:
    """One key for the batch: the same messages in the same order always give the same key."""
    digest = hashlib.sha256("\n".join(m.idempotency_key for m in messages).encode()).hexdigest()
    first, last = messages[0], messages[-1]
    key = f"newsletter/{first.month}/{first.recipient_id}-{last.recipient_id}/{digest[:32]}"
    return key[:IDEMPOTENCY_KEY_LIMIT]


@dataclass(frozen=True)
class _SharedFields:
    """The JSON around each email's own values, encoded once per issue.

    An email is: before_to, its address, before_unsubscribe, its List-Unsubscribe,
    before_text, text, ',"html":', html, "}".
    """

    before_to: str
    before_unsubscribe: str
    before_text: str


def _json(value: str) -> str:
    return encode_basestring_ascii(value)


def _shared_fields(issue: PreparedIssue) -> _SharedFields:
    reply_to = f',"reply_to":[{_json(issue.reply_to)}]' if issue.reply_to else ""
    return _SharedFields(
        before_to=f'{{"from":{_json(plain_address(issue.from_name, issue.from_email))},"to":[',
        before_unsubscribe=f'],"subject":{_json(literal_header_text(issue.subject))},"headers":{{"List-Unsubscribe":',
        before_text=(
            f',"List-Unsubscribe-Post":{_json(ONE_CLICK)},'
            f'"List-Id":{_json(issue.list_id_header)}}}{reply_to},"text":'
        ),
    )


class ResendProvider(HttpProvider):
    name = "resend"
    credential_variable = "RESEND_API_KEY"
    default_base_url = "https://api.resend.com"
    default_batch_size = 100
    max_batch_size = 100  # Resend's documented limit per batch call
    # Resend keeps an idempotency key for 24 hours, so a batch resent with the same messages
    # cannot be delivered twice.
    idempotent_retries = True

    def account_path(self) -> str:
        return "/domains"

    def read_account(self, response: requests.Response) -> AccountCheck:
        domains = response.json().get("data", [])
        verified = tuple(d["name"] for d in domains if d.get("status") == "verified")
        listed = ", ".join(f"{d.get('name')} ({d.get('status')})" for d in domains) or "none"
        return AccountCheck(
            True, f"{self.credential_variable} accepted; domains: {listed}", verified
        )

    def refused_account(self, response: requests.Response) -> AccountCheck:
        if self._error_name(response) == "restricted_api_key":
            # A sending-only key: valid, but it may not list domains.
            return AccountCheck(True, f"{self.credential_variable} accepted (a sending-only key)")
        return super().refused_account(response)

    def build_request(self, messages: Sequence[OutgoingMessage]) -> ApiRequest:
        """A JSON array with one complete email per recipient.

        Resend has no per-recipient substitution in this endpoint; see full_message_array.
        """
        shared = self.shared_parts(messages[0].issue, _shared_fields)

        def head(message: OutgoingMessage) -> str:
            recipient = message.recipient
            to = plain_address(recipient.name, recipient.email)
            return (
                f"{shared.before_to}{_json(to)}{shared.before_unsubscribe}"
                f"{_json(message.list_unsubscribe)}{shared.before_text}"
            )

        return ApiRequest(
            path="/emails/batch",
            body=full_message_array(messages, head, "html"),
            headers={
                "Idempotency-Key": batch_idempotency_key(messages),
                "x-batch-validation": "permissive",
            },
        )

    def parse_reply(
        self, messages: Sequence[OutgoingMessage], response: requests.Response
    ) -> list[DeliveryResult]:
        if response.status_code == 409 and self._error_name(response) == (
            "concurrent_idempotent_requests"
        ):
            # The same batch is still being processed: its answer will be there shortly.
            return self.whole_batch(
                messages, "the same batch is in progress at Resend", retry_after=1.0
            )
        if response.status_code != 200:
            raise self.refuse(response, "Resend refused the batch")
        try:
            body = response.json()
            refused = {int(e["index"]): str(e.get("message", "")) for e in body.get("errors") or []}
            ids = iter(str(item["id"]) for item in body["data"])
            results = []
            for index, message in enumerate(messages):
                if index in refused:
                    results.append(DeliveryResult.permanent(message, refused[index]))
                else:
                    results.append(DeliveryResult.accepted(message, next(ids)))
            return results
        except (ValueError, KeyError, TypeError, AttributeError, StopIteration):
            raise self.refuse(response, "unexpected reply from Resend") from None

    @staticmethod
    def _error_name(response: requests.Response) -> str:
        try:
            return str(response.json().get("name", ""))
        except (ValueError, AttributeError):
            return ""

    def suppressions(self) -> Iterator[Suppression]:
        # The lists' paging and shapes are in their own module; imported here because it
        # imports this one.
        from newsletter.suppressions import resend as lists

        yield from lists.fetch(self)
