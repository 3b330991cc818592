"""The ``outbox`` provider: writes each message as an .eml file instead of sending it.

Files go to ``<build>/outbox/<month>/<recipient id>.eml`` with an ``index.html`` linking them,
so a dry run can be inspected in a browser or opened in a mail client. Nothing leaves the
machine, and no credential is read. The folder and files are owner-only: each message carries
a working unsubscribe link.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from email.header import decode_header, make_header
from email.parser import BytesHeaderParser
from email.policy import compat32
from pathlib import Path

from newsletter.messages import OutgoingMessage
from newsletter.private_files import make_private_folder, write_private
from newsletter.providers.base import DeliveryResult, Provider

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
        results = []
        for message in messages:
            folder = self.root / message.month
            entries = self._written.get(folder)
            if entries is None:
                make_private_folder(folder)
                entries = self._written[folder] = {}
            filename = f"{message.recipient_id}.eml"
            _write_atomically(folder / filename, message.as_bytes())
            entries[filename] = (message.to_header, message.subject)
            results.append(DeliveryResult.accepted(message, str(folder / filename)))
        return results

    def close(self) -> None:
        for folder, entries in getattr(self, "_written", {}).items():
            write_index(folder, entries)
        self._written = {}


def _write_atomically(path: Path, data: bytes) -> None:
    # A dry run killed half-way must not leave half a message behind.
    temporary = path.with_suffix(".eml.tmp")
    write_private(temporary, data)
    os.replace(temporary, path)


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
    write_private(index, page.encode("utf-8"))
    return index
