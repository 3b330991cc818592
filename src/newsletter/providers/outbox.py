"""The ``outbox`` provider: writes each message as an .eml file instead of sending it.

Files go to ``<build>/outbox/<month>/<recipient id>.eml`` with an ``index.html`` linking them,
so a dry run can be inspected in a browser or opened in a mail client. Nothing leaves the
machine, and no credential is read. The folder and files are owner-only: each message carries
a working unsubscribe link.

``send --dry-run`` with any provider writes here too, through :class:`DryRunWriter`: the
provider's own request bodies for HTTP APIs, the messages themselves for the others.
"""

from __future__ import annotations

import contextlib
import html
import json
import os
from collections.abc import Sequence
from email.header import decode_header, make_header
from email.parser import BytesHeaderParser, BytesParser
from email.policy import HTTP as HTTP_POLICY
from email.policy import compat32
from pathlib import Path

from newsletter.errors import ProviderError
from newsletter.messages import OutgoingMessage
from newsletter.private_files import make_private_folder, write_private
from newsletter.providers.base import DeliveryResult, Provider
from newsletter.providers.http import ApiRequest, HttpProvider

INDEX_NAME = "index.html"


class OutboxProvider(Provider):
    name = "outbox"
    delivers = False
    default_batch_size = 1000
    max_batch_size = 100_000

    @property
    def root(self) -> Path:
        return self.settings.paths.build / "outbox"

    def open(self) -> None:
        self._written: dict[Path, dict[str, tuple[str, str]]] = {}

    def send_batch(self, messages: Sequence[OutgoingMessage]) -> list[DeliveryResult]:
        results: list[DeliveryResult] = []
        for index, message in enumerate(messages):
            folder = self.root / message.month
            filename = f"{message.recipient_id}.eml"
            try:
                entries = self._written.get(folder)
                if entries is None:
                    make_private_folder(folder)
                    entries = self._written[folder] = {}
                _write_atomically(folder / filename, message.as_bytes())
            except OSError as exc:
                # Known outcome: this message and the rest of the batch were not written.
                # Say so per message, so the journal records exactly what is in the outbox.
                reason = f"cannot write {folder / filename}: {exc.strerror or exc}"
                results.extend(DeliveryResult.temporary(m, reason) for m in messages[index:])
                raise ProviderError(
                    self.name,
                    f"{reason}; {index} of this batch of {len(messages)} were written. Free some "
                    "space (or fix the folder's permissions)",
                    results=results,
                ) from None
            entries[filename] = (message.to_header, message.subject)
            results.append(DeliveryResult.accepted(message, str(folder / filename)))
        return results

    def close(self) -> None:
        for folder, entries in getattr(self, "_written", {}).items():
            # The index is a convenience: on a full disk the previous one stays whole.
            with contextlib.suppress(OSError):
                write_index(folder, entries)
        self._written = {}


def _write_atomically(path: Path, data: bytes) -> None:
    # A dry run killed half-way must not leave half a message behind, nor a full disk a
    # temporary file.
    temporary = path.with_name(path.name + ".tmp")
    try:
        write_private(temporary, data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _header_text(value: str) -> str:
    return str(make_header(decode_header(value))) if value else ""


def write_index(folder: Path, known: dict[str, tuple[str, str]] | None = None) -> Path:
    """(Re)write ``folder/index.html`` listing every .eml file in ``folder``."""
    known = dict(known or {})
    parser = BytesHeaderParser(policy=compat32)
    rows = []
    files = sorted(folder.glob("*.eml"), key=lambda p: (len(p.stem), p.stem))
    for path in files:
        if path.name in known:
            to, subject = known[path.name]
        else:
            with path.open("rb") as handle:
                headers = parser.parse(handle)
            to, subject = headers.get("To", ""), headers.get("Subject", "")
        rows.append(
            f'<tr><td><a href="{html.escape(path.name)}">{html.escape(path.name)}</a></td>'
            f"<td>{html.escape(_header_text(to))}</td>"
            f"<td>{html.escape(_header_text(subject))}</td></tr>"
        )
    title = f"Outbox {folder.name}: {len(rows)} message{'s' if len(rows) != 1 else ''}"
    page = (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:system-ui,sans-serif;margin:2rem}"
        "td,th{padding:.2rem .8rem;text-align:left}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        "<p>Written by a dry run: nothing was sent. Open a file in a mail client to see it "
        "as a subscriber would.</p>"
        "<table><thead><tr><th>File</th><th>To</th><th>Subject</th></tr></thead><tbody>\n"
        + "\n".join(rows)
        + "\n</tbody></table></body></html>\n"
    )
    index = folder / INDEX_NAME
    _write_atomically(index, page.encode("utf-8"))
    return index


class DryRunWriter:
    """Writes what a provider would send into the outbox, with credentials left out.

    HTTP providers' real request bodies (built by their own ``build_request``) go to
    ``<provider>-batch-NNNN.json``; for the others each message goes there as an .eml file,
    which is what SMTP would carry.
    """

    def __init__(self, provider: Provider, outbox: Path):
        self.provider = provider
        self.outbox = outbox
        self.batches = 0
        self._index: dict[str, tuple[str, str]] = {}
        make_private_folder(outbox)
        for stale in (*outbox.glob("*.eml"), *outbox.glob("*-batch-*.json")):
            stale.unlink()

    def write(self, messages: Sequence[OutgoingMessage]) -> None:
        if not messages:
            return
        if isinstance(self.provider, HttpProvider):
            request = self.provider.build_request(messages)
            self.batches += 1
            payload = self._decoded(request)
            document = {
                "provider": self.provider.name,
                "method": "POST",
                "url": self.provider.base_url + request.path,
                # Only non-secret headers: the credential is set on the session, never here.
                "headers": {
                    k: v for k, v in request.headers.items() if k.lower() != "authorization"
                },
                "credential": f"[redacted: ${self.provider.credential_variable}]",
                "payload": payload,
            }
            path = self.outbox / f"{self.provider.name}-batch-{self.batches:04d}.json"
            write_private(path, json.dumps(document, ensure_ascii=False, indent=1).encode())
            return
        for message in messages:
            write_private(self.outbox / f"{message.recipient_id}.eml", message.as_bytes())
            self._index[f"{message.recipient_id}.eml"] = (message.to_header, message.subject)

    def _decoded(self, request: ApiRequest) -> object:
        """The request body as data a person can read: JSON, or the fields of a form."""
        if request.body is None:
            return [{"name": n, "value": v} for n, v in request.form or []]
        if request.content_type.startswith("multipart/form-data"):
            # Parsed back with the standard library, which also checks that it is well formed.
            head = f"Content-Type: {request.content_type}\r\n\r\n".encode("ascii")
            form = BytesParser(policy=HTTP_POLICY).parsebytes(head + request.body)
            if not form.is_multipart():
                raise ProviderError(self.provider.name, "the multipart body built does not parse")
            return [
                {
                    "name": part.get_param("name", header="content-disposition"),
                    "value": part.get_content(),
                }
                for part in form.iter_parts()
            ]
        try:
            return json.loads(request.body)
        except ValueError as exc:
            raise ProviderError(
                self.provider.name, f"the payload built is not valid JSON: {exc}"
            ) from None

    def close(self) -> None:
        if self._index:
            write_index(self.outbox, self._index)
