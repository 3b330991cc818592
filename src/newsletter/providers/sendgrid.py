"""The ``sendgrid`` provider: SendGrid's v3 mail/send, up to 1,000 personalizations a call.

One call carries the issue once; each recipient is a personalization with their address, their
substitution values and their own List-Unsubscribe header. The content array puts text/plain
before text/html, as the API requires.

Settings: ``base_url``, ``timeout``. Credential: ``SENDGRID_API_KEY``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from json.encoder import encode_basestring_ascii

import requests

from newsletter.messages import ONE_CLICK, OutgoingMessage, PreparedIssue, literal_header_text
from newsletter.providers.base import AccountCheck, DeliveryResult, Suppression
from newsletter.providers.http import (
    ApiRequest,
    HttpProvider,
    accepted_results,
    merge_results,
    split_duplicates,
)

_PERSONALIZATION_FIELD = re.compile(r"^personalizations\.(\d+)\b")


def _key(part: str, slot: str) -> str:
    # Substitution keys are matched literally anywhere in the content: make them unmistakable.
    return f"%%nl-{part}-{slot}%%"


def _text_key(slot: str) -> str:
    return _key("text", slot)


def _html_key(slot: str) -> str:
    return _key("html", slot)


def _shared_payload(issue: PreparedIssue) -> tuple[bytes, bytes]:
    """The request body before and after the personalizations, encoded once per issue."""
    payload: dict[str, object] = {
        "personalizations": [],
        "from": {"email": issue.from_email, "name": literal_header_text(issue.from_name)},
        "subject": literal_header_text(issue.subject),
        "content": [
            {"type": "text/plain", "value": issue.text_part.with_markers(_text_key)},
            {"type": "text/html", "value": issue.html_part.with_markers(_html_key)},
        ],
        "headers": {"List-Unsubscribe-Post": ONE_CLICK, "List-Id": issue.list_id_header},
        "custom_args": {"newsletter_issue": issue.month},
    }
    if issue.reply_to:
        payload["reply_to"] = {"email": issue.reply_to}
    # "personalizations" is the first key, so the first "[]" is its empty list.
    before, after = json.dumps(payload).encode("ascii").split(b"[]", 1)
    return before + b"[", b"]" + after


def _personalization(message: OutgoingMessage) -> str:
    recipient = message.recipient
    text_name, text_email, text_url, html_name, html_email, html_url = message.json_values()
    if recipient.name:
        to = f'{{"email":{text_email},"name":{encode_basestring_ascii(literal_header_text(recipient.name))}}}'
    else:
        to = f'{{"email":{text_email}}}'
    unsubscribe = encode_basestring_ascii(message.list_unsubscribe)
    # One f-string per recipient instead of four dicts and json.dumps over all of them; the
    # substitution keys are _key(part, slot).
    return (
        f'{{"to":[{to}],"substitutions":{{"%%nl-text-name%%":{text_name},'
        f'"%%nl-text-email%%":{text_email},"%%nl-text-unsubscribe_url%%":{text_url},'
        f'"%%nl-html-name%%":{html_name},"%%nl-html-email%%":{html_email},'
        f'"%%nl-html-unsubscribe_url%%":{html_url}}},'
        f'"headers":{{"List-Unsubscribe":{unsubscribe}}},'
        f'"custom_args":{{"newsletter_recipient":"{recipient.id}"}}}}'
    )


class SendGridProvider(HttpProvider):
    name = "sendgrid"
    credential_variable = "SENDGRID_API_KEY"
    default_base_url = "https://api.sendgrid.com"
    default_batch_size = 1000
    max_batch_size = 1000  # personalizations (and recipients) per request

    def account_path(self) -> str:
        return "/v3/scopes"  # what this key may do; every key may read it

    def read_account(self, response: requests.Response) -> AccountCheck:
        scopes = response.json().get("scopes", [])
        if "mail.send" in scopes:
            return AccountCheck(True, f"{self.credential_variable} accepted, with mail.send")
        return AccountCheck(
            False,
            f"{self.credential_variable} is valid but lacks the mail.send permission; give the "
            "key Mail Send access in SendGrid",
        )

    def build_request(self, messages: Sequence[OutgoingMessage]) -> ApiRequest:
        unique, _ = split_duplicates(messages)
        before, after = self.shared_parts(unique[0].issue, _shared_payload)
        personalizations = ",".join([_personalization(message) for message in unique])
        return ApiRequest(
            path="/v3/mail/send", body=before + personalizations.encode("ascii") + after
        )

    def parse_reply(
        self, messages: Sequence[OutgoingMessage], response: requests.Response
    ) -> list[DeliveryResult]:
        unique, repeats = split_duplicates(messages)
        if response.status_code in (200, 202):
            message_id = response.headers.get("X-Message-Id", "")
            return merge_results(messages, accepted_results(unique, message_id), repeats)
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

    def suppressions(self) -> Iterator[Suppression]:
        # The lists' paging and shapes are in their own module; imported here because it
        # imports this one.
        from newsletter.suppressions import sendgrid as lists

        yield from lists.fetch(self)
