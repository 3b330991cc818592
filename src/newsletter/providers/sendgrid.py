"""The ``sendgrid`` provider: SendGrid's v3 mail/send, up to 1,000 personalizations a call.

One call carries the issue once; each recipient is a personalization with their address, their
substitution values and their own List-Unsubscribe header. The content array puts text/plain
before text/html, as the API requires.

Settings: ``base_url``, ``timeout``. Credential: ``SENDGRID_API_KEY``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

import requests

from newsletter.messages import ONE_CLICK, OutgoingMessage
from newsletter.providers.base import DeliveryResult
from newsletter.providers.http import (
    ApiRequest,
    HttpProvider,
    merge_results,
    split_duplicates,
)

_PERSONALIZATION_FIELD = re.compile(r"^personalizations\.(\d+)\b")


def _key(part: str, slot: str) -> str:
    # Substitution keys are matched literally anywhere in the content: make them unmistakable.
    return f"%%nl-{part}-{slot}%%"


class SendGridProvider(HttpProvider):
    name = "sendgrid"
    credential_variable = "SENDGRID_API_KEY"
    default_base_url = "https://api.sendgrid.com"
    default_batch_size = 1000
    max_batch_size = 1000  # personalizations (and recipients) per request

    def build_request(self, messages: Sequence[OutgoingMessage]) -> ApiRequest:
        unique, _ = split_duplicates(messages)
        issue = unique[0].issue
        personalizations = []
        for message in unique:
            recipient = message.recipient
            to: dict[str, str] = {"email": recipient.email}
            if recipient.name:
                to["name"] = recipient.name
            substitutions = {_key("text", k): v for k, v in message.values("text").items()}
            substitutions |= {_key("html", k): v for k, v in message.values("html").items()}
            personalizations.append(
                {
                    "to": [to],
                    "substitutions": substitutions,
                    "headers": {"List-Unsubscribe": message.list_unsubscribe},
                    "custom_args": {"newsletter_recipient": str(recipient.id)},
                }
            )
        payload: dict[str, object] = {
            "personalizations": personalizations,
            "from": {"email": issue.from_email, "name": issue.from_name},
            "subject": issue.subject,
            "content": [
                {"type": "text/plain", "value": issue.text_part.with_markers(self._text_key)},
                {"type": "text/html", "value": issue.html_part.with_markers(self._html_key)},
            ],
            "headers": {"List-Unsubscribe-Post": ONE_CLICK, "List-Id": issue.list_id_header},
            "custom_args": {"newsletter_issue": issue.month},
        }
        if issue.reply_to:
            payload["reply_to"] = {"email": issue.reply_to}
        return ApiRequest(path="/v3/mail/send", body=json.dumps(payload).encode("ascii"))

    @staticmethod
    def _text_key(slot: str) -> str:
        return _key("text", slot)

    @staticmethod
    def _html_key(slot: str) -> str:
        return _key("html", slot)

    def parse_reply(
        self, messages: Sequence[OutgoingMessage], response: requests.Response
    ) -> list[DeliveryResult]:
        unique, repeats = split_duplicates(messages)
        if response.status_code in (200, 202):
            message_id = response.headers.get("X-Message-Id", "")
            accepted = [DeliveryResult.accepted(message, message_id) for message in unique]
            return merge_results(messages, accepted, repeats)
        if response.status_code == 400:
            results = self._refusals_by_recipient(unique, response)
            if results is not None:
                return merge_results(messages, results, repeats)
        raise self.refuse(response, "SendGrid refused the request")

    def _refusals_by_recipient(
        self, unique: list[OutgoingMessage], response: requests.Response
    ) -> list[DeliveryResult] | None:
        """Per-recipient results when every error names a personalization, else None.

        SendGrid refuses the whole request for one bad personalization; the others were not
        sent and can go again in a later batch.
        """
        try:
            errors = response.json()["errors"]
            blamed: dict[int, str] = {}
            for error in errors:
                match = _PERSONALIZATION_FIELD.match(str(error.get("field") or ""))
                if match is None:
                    return None
                blamed[int(match.group(1))] = str(error.get("message", "refused"))
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        if not blamed or max(blamed) >= len(unique):
            return None
        results = []
        for index, message in enumerate(unique):
            if index in blamed:
                results.append(DeliveryResult.permanent(message, blamed[index]))
            else:
                results.append(
                    DeliveryResult.temporary(
                        message, "not sent: SendGrid refused the batch for another recipient"
                    )
                )
        return results
