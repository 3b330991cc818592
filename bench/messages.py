"""How fast messages are built and handed over, against the obvious ways of doing it.

    .venv/bin/python bench/messages.py            # about a minute
    .venv/bin/python bench/messages.py --quick    # smaller counts, for a smoke test

Prints one table. Each group has a baseline measured in the same run, and each row its ratio
to that baseline:

- building: re-rendering per recipient (Jinja2 + MJML + premailer), EmailMessage per recipient
  (the baseline), and ours (prepare_issue once, then message_for(...).as_bytes());
- SMTP to a local aiosmtpd sink: a bare smtplib client sending pre-built bytes (the baseline)
  beside the smtp provider with 1, 4 and 8 connections; then the same with a sink that waits
  20 ms before each reply (baseline: the provider with one connection);
- HTTP: recipients per second through each HTTP provider to a loopback sink that answers
  with the provider's documented success body, and the request bytes per second that makes.

Servers run in their own processes so that they do not share this process's GIL. The HTTP sink
is this file run as ``messages.py --http-sink PORT``: a stdlib http.server that reads each body
and counts the messages in it while it arrives, so that its own work hides behind the transfer
and the rows measure the providers, not the sink.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import jinja2
import premailer
from mjml import mjml2html

from newsletter.messages import OutgoingMessage, PreparedIssue, Recipient, prepare_issue
from newsletter.providers import load_provider
from newsletter.providers.http import HttpProvider
from newsletter.settings import Settings, load_settings

HERE = Path(__file__).resolve().parent

MJML_TEMPLATE = """\
<mjml>
  <mj-head>
    <mj-title>{{ title }}</mj-title>
    <mj-preview>{{ preheader }}</mj-preview>
    <mj-attributes>
      <mj-all font-family="Georgia, 'Times New Roman', serif" />
      <mj-text font-size="16px" line-height="1.55" color="#1d1d1b" />
    </mj-attributes>
    <mj-style>
      .topic { color: #1f5f5b; font-size: 12px; text-transform: uppercase; }
      .citation { color: #555555; font-size: 13px; }
      a { color: #1f5f5b; }
    </mj-style>
  </mj-head>
  <mj-body background-color="#f3f1ec">
    <mj-section background-color="#1f5f5b">
      <mj-column><mj-text color="#ffffff" font-size="24px">{{ title }}</mj-text></mj-column>
    </mj-section>
    <mj-section background-color="#ffffff">
      <mj-column>
        <mj-text>Dear {{ name }},</mj-text>
        <mj-text>{{ intro }}</mj-text>
      </mj-column>
    </mj-section>
    {% for article in articles %}
    <mj-section background-color="#ffffff">
      <mj-column>
        <mj-text css-class="topic">{{ article.topics | join(" · ") }}</mj-text>
        <mj-text font-size="20px">{{ article.title }}</mj-text>
        <mj-text css-class="citation">{{ article.citation }}</mj-text>
        {% for paragraph in article.summary %}<mj-text>{{ paragraph }}</mj-text>{% endfor %}
        <mj-text font-size="18px">Practice Implications</mj-text>
        {% for paragraph in article.implications %}<mj-text>{{ paragraph }}</mj-text>{% endfor %}
        <mj-button href="{{ article.link }}" background-color="#1f5f5b">Read the article</mj-button>
      </mj-column>
    </mj-section>
    {% endfor %}
    <mj-section>
      <mj-column>
        <mj-text font-size="12px" color="#555555">
          Sent to {{ email }}. {{ address }}
          <a href="{{ unsubscribe_url }}">Unsubscribe</a>
        </mj-text>
      </mj-column>
    </mj-section>
  </mj-body>
</mjml>
"""

TEXT_TEMPLATE = """\
{{ title }}

Dear {{ name }},

{{ intro }}
{% for article in articles %}
{{ article.title }}
{{ article.citation }}
{% for paragraph in article.summary %}
{{ paragraph }}
{% endfor %}
Practice Implications
{% for paragraph in article.implications %}
{{ paragraph }}
{% endfor %}
{% endfor %}
Sent to {{ email }}. Unsubscribe: {{ unsubscribe_url }}
"""

SENTENCE = (
    "Clients who rated the alliance highly early in treatment improved more, and the effect "
    "held across settings, diagnoses and the therapist's experience. "
)


def _context() -> dict[str, object]:
    articles = [
        {
            "title": f"Article {n}: what the alliance predicts in routine care",
            "citation": "Flückiger, C., Del Re, A. C., & Wampold, B. E. (2018). The alliance in "
            "adult psychotherapy. Psychotherapy, 55(4), 316–340.",
            "topics": ["Therapeutic alliance", "Outcome research"],
            "summary": [SENTENCE * 4] * 3,
            "implications": [SENTENCE * 2] * 2,
            "link": f"https://doi.org/10.1037/pst000017{n}",
        }
        for n in range(3)
    ]
    return {
        "title": "March 2021",
        "preheader": "This month: the alliance, feedback, and dropout",
        "intro": "This month I write about what the therapeutic alliance predicts. " * 3,
        "articles": articles,
        "address": "Practice Research Digest, 12 Example Street, Springfield 01234",
    }


_environment = jinja2.Environment(autoescape=False, undefined=jinja2.StrictUndefined)
_MJML = _environment.from_string(MJML_TEMPLATE)
_TEXT = _environment.from_string(TEXT_TEMPLATE)


def render(name: str, email: str, unsubscribe_url: str) -> tuple[str, str]:
    """Jinja2 -> MJML -> HTML -> inlined CSS, and the text part: the whole render."""
    values = _context() | {"name": name, "email": email, "unsubscribe_url": unsubscribe_url}
    html = mjml2html(_MJML.render(values), fonts={})
    inlined = premailer.Premailer(html, allow_network=False, cssutils_logging_level=50).transform()
    return str(inlined), _TEXT.render(values)


@dataclass(frozen=True)
class _Month:
    month: str


@dataclass(frozen=True)
class RenderedStandIn:
    issue: _Month
    subject: str
    html: str
    text: str


def recipients(count: int) -> list[Recipient]:
    return [
        Recipient(
            id=n,
            email=f"reader{n}@example.net",
            name=f"Reader Number {n}" if n % 10 else f"Zoë Ångström {n}",
            unsubscribe_url=f"https://digest.example.org/unsubscribe/{n}.c2lnbmVkLXRva2Vu",
        )
        for n in range(1, count + 1)
    ]


@dataclass
class Row:
    group: str
    label: str
    count: int
    seconds: float
    unit: str = "msg"
    baseline: bool = False
    request_bytes: int = 0
    target: str = ""
    passed: bool | None = None

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds else float("inf")


def timed(count: int, work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


# --- building ---------------------------------------------------------------------------------


def bench_building(settings: Settings, prepared: PreparedIssue, scale: float) -> list[Row]:
    people = recipients(max(20, int(30000 * scale)))

    naive = people[: max(5, int(40 * scale))]

    def re_render() -> None:
        for person in naive:
            html, text = render(person.name, person.email, person.unsubscribe_url)
            build_email_message(settings, prepared, person, html, text)

    email_message_people = people[: max(50, int(600 * scale))]

    def email_message_each() -> None:
        for person in email_message_people:
            html = prepared.html_part.fill(_html_values(person))
            text = prepared.text_part.fill(_text_values(person))
            build_email_message(settings, prepared, person, html, text)

    def ours() -> None:
        for person in people:
            prepared.message_for(person).as_bytes()

    return [
        Row("build", "re-render per recipient", len(naive), timed(len(naive), re_render)),
        Row(
            "build",
            "EmailMessage per recipient",
            len(email_message_people),
            timed(len(email_message_people), email_message_each),
            baseline=True,
        ),
        Row("build", "ours (prepare once + as_bytes)", len(people), timed(len(people), ours)),
    ]


def _html_values(person: Recipient) -> dict[str, str]:
    import html

    return {
        "name": html.escape(person.name, quote=True),
        "email": html.escape(person.email, quote=True),
        "unsubscribe_url": html.escape(person.unsubscribe_url, quote=True),
    }


def _text_values(person: Recipient) -> dict[str, str]:
    return {"name": person.name, "email": person.email, "unsubscribe_url": person.unsubscribe_url}


def build_email_message(
    settings: Settings, prepared: PreparedIssue, person: Recipient, html: str, text: str
) -> bytes:
    message = EmailMessage(policy=SMTP)
    message["From"] = Address(settings.from_name, addr_spec=settings.from_email)
    message["To"] = Address(person.name, addr_spec=person.email)
    message["Subject"] = prepared.subject
    message["Date"] = prepared.date
    message["Message-ID"] = f"<nl.{prepared.month}.{person.id}@{settings.sender_domain}>"
    message["List-Id"] = prepared.list_id_header
    message["List-Unsubscribe"] = f"<{person.unsubscribe_url}>, <{prepared.unsubscribe_mailto}>"
    message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    message.set_content(text, cte="quoted-printable")
    message.add_alternative(html, subtype="html", cte="quoted-printable")
    return message.as_bytes()


# --- servers ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def server_process(*args: str) -> Iterator[int]:
    port = free_port()
    if args[0] == "http-sink":
        command = [sys.executable, __file__, "--http-sink", str(port)]
    else:
        command = [sys.executable, str(HERE / "loopback_servers.py"), args[0], str(port), *args[1:]]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        if process.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the {args[0]} server did not start")
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


def settings_for(root: Path, provider_table: str) -> Settings:
    path = root / "newsletter.toml"
    path.write_text(
        '[newsletter]\nname = "Practice Research Digest"\nfrom_email = "digest@example.org"\n'
        + provider_table,
        encoding="utf-8",
    )
    return load_settings(path)


# One marker per message in the JSON batch bodies, to answer with one entry per message. Long
# markers make bytes.count skip further: counting 20 MB of Postmark JSON takes 5 ms with these
# and 7-10 ms with '"MessageStream":' or '"subject":'.
_ITEM_MARKERS = {
    "/email/batch": b'"Metadata":{"newsletter_recipient":"',
    "/emails/batch": b'"headers":{"List-Unsubscribe":',
}
_CHUNK = 1 << 20


class _SinkHandler(BaseHTTPRequestHandler):
    """Reads a request body and answers with the provider's documented success reply."""

    protocol_version = "HTTP/1.1"
    # Headers and body of a reply leave in one write. Sent as two writes with Nagle on, the
    # body waited for the client's delayed ACK: tens of milliseconds per batch, which made
    # the sink, not the provider, set Mailgun's rate.
    disable_nagle_algorithm = True
    wbufsize = -1

    def setup(self) -> None:
        super().setup()
        # One buffer per connection: a fresh 20 MB bytes object per Postmark batch costs the
        # sink page faults the providers' side does not have.
        self.buffer = bytearray(_CHUNK)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _receive(self, length: int, marker: bytes | None) -> int:
        """Read ``length`` bytes; the number of ``marker``s in them, counted as they arrive."""
        if len(self.buffer) < length:
            self.buffer = bytearray(length)
        view = memoryview(self.buffer)
        reader = cast(io.BufferedReader, self.rfile)
        got = count = 0
        while got < length:
            read = reader.readinto1(view[got:length])
            if not read:
                raise ConnectionError("the client closed the connection mid-body")
            if marker is not None:
                # Occurrences that end in the new bytes; the marker cannot overlap itself.
                count += self.buffer.count(marker, max(0, got - len(marker) + 1), got + read)
            got += read
        return count

    def do_POST(self) -> None:
        path = self.path
        count = self._receive(int(self.headers["Content-Length"]), _ITEM_MARKERS.get(path))
        status, reply, extra = 200, cast(object, None), cast(dict[str, str], {})
        if path.endswith("/messages"):  # Mailgun
            reply = {"id": "<bench@example.org>", "message": "Queued. Thank you."}
        elif path == "/v3/mail/send":  # SendGrid: 202 and no body
            status, extra = 202, {"X-Message-Id": "bench"}
        elif path == "/email/batch":  # Postmark
            reply = [{"ErrorCode": 0, "Message": "OK", "MessageID": f"m{n}"} for n in range(count)]
        elif path == "/emails/batch":  # Resend
            reply = {"data": [{"id": f"r{n}"} for n in range(count)]}
        else:
            status, reply = 404, {"message": "not found"}
        data = b"" if reply is None else json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


def run_http_sink(port: int) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", port), _SinkHandler)
    print("ready", flush=True)
    server.serve_forever()


def send_all(settings: Settings, messages: Sequence[OutgoingMessage]) -> float:
    provider = load_provider(settings.provider)(settings)
    started = time.perf_counter()
    provider.open()
    try:
        for start in range(0, len(messages), provider.batch_size):
            results = provider.send_batch(messages[start : start + provider.batch_size])
            refused = [r for r in results if r.status != "accepted"]
            if refused:
                raise RuntimeError(f"{settings.provider}: {refused[0]}")
    finally:
        provider.close()
    return time.perf_counter() - started


def bare_client(port: int, raws: Sequence[bytes]) -> float:
    started = time.perf_counter()
    with smtplib.SMTP("127.0.0.1", port) as client:
        for number, raw in enumerate(raws, start=1):
            client.sendmail("digest@example.org", [f"reader{number}@example.net"], raw)
    return time.perf_counter() - started


def bench_smtp(root: Path, prepared: PreparedIssue, scale: float) -> list[Row]:
    rows: list[Row] = []
    count = max(200, int(3000 * scale))
    people = recipients(count)
    messages = [prepared.message_for(person) for person in people]
    raws = [message.as_bytes() for message in messages]
    with server_process("smtp", "0") as port:
        rows.append(
            Row("smtp", "bare smtplib client", count, bare_client(port, raws), baseline=True)
        )
        for connections in (1, 4, 8):
            table = (
                f'[provider]\nname = "smtp"\nhost = "127.0.0.1"\nport = {port}\n'
                f'security = "none"\nconnections = {connections}\nbatch_size = {50 * connections}\n'
            )
            seconds = send_all(settings_for(root, table), messages)
            row = Row("smtp", f"smtp provider, {connections} connection(s)", count, seconds)
            if connections == 8:
                row.target = ">= 0.90x bare"
            rows.append(row)
    delayed_rows: list[Row] = []
    with server_process("smtp", "0.02") as port:
        for connections in (1, 4, 8):
            subset = messages[: max(40, int(100 * scale)) * connections]
            table = (
                f'[provider]\nname = "smtp"\nhost = "127.0.0.1"\nport = {port}\n'
                f'security = "none"\nconnections = {connections}\nbatch_size = {50 * connections}\n'
            )
            seconds = send_all(settings_for(root, table), subset)
            row = Row(
                "smtp+20ms",
                f"smtp provider, {connections} connection(s)",
                len(subset),
                seconds,
                baseline=connections == 1,
            )
            if connections == 8:
                row.target = ">= 6x one connection"
            delayed_rows.append(row)
        subset_bare = raws[: max(40, int(100 * scale))]
        delayed_rows.append(
            Row(
                "smtp+20ms", "bare smtplib client", len(subset_bare), bare_client(port, subset_bare)
            )
        )
    return rows + delayed_rows


HTTP_COUNTS = {"mailgun": 60000, "sendgrid": 60000, "postmark": 6000, "resend": 3000}
HTTP_VARIABLES = {
    "mailgun": "MAILGUN_API_KEY",
    "sendgrid": "SENDGRID_API_KEY",
    "postmark": "POSTMARK_SERVER_TOKEN",
    "resend": "RESEND_API_KEY",
}


HTTP_SINK = "stdlib http.server sink (this file, own process, reused buffer, no Nagle)"


def request_bytes(settings: Settings, messages: Sequence[OutgoingMessage]) -> int:
    """The bytes of every request body the provider builds for ``messages`` (not timed)."""
    provider = load_provider(settings.provider)(settings)
    assert isinstance(provider, HttpProvider)
    size = provider.batch_size
    total = 0
    for start in range(0, len(messages), size):
        request = provider.build_request(messages[start : start + size])
        total += len(request.body or b"")
    return total


def bench_http(root: Path, prepared: PreparedIssue, scale: float) -> list[Row]:
    rows: list[Row] = []
    with server_process("http-sink") as port:
        for name, full_count in HTTP_COUNTS.items():
            os.environ[HTTP_VARIABLES[name]] = "bench-not-a-secret"
            count = max(200, int(full_count * scale))
            messages = [prepared.message_for(person) for person in recipients(count)]
            table = f'[provider]\nname = "{name}"\nbase_url = "http://127.0.0.1:{port}"\n'
            if name == "mailgun":
                table += 'domain = "example.org"\n'
            settings = settings_for(root, table)
            seconds = send_all(settings, messages)
            row = Row("http", f"{name} batches", count, seconds, unit="rcpt", target=">= 100000/s")
            row.passed = row.rate >= 100_000
            row.request_bytes = request_bytes(settings, messages)
            rows.append(row)
    return rows


def print_table(rows: list[Row], html_bytes: int) -> None:
    print(
        f"representative issue: {html_bytes:,} bytes of inlined HTML; "
        f"python {sys.version.split()[0]}"
    )
    print(f"HTTP rows: {HTTP_SINK}")
    header = f"{'group':<10} {'measurement':<34} {'count':>7} {'rate/s':>10} {'ratio':>8}  target"
    print(header)
    print("-" * len(header))
    baselines = {row.group: row for row in rows if row.baseline}
    for row in rows:
        baseline = baselines.get(row.group)
        # HTTP rows have no same-run baseline: their ratio is to the 100,000/s target.
        reference = baseline.rate if baseline else 100_000.0
        ratio = row.rate / reference
        if row.target.startswith(">= 0.90x"):
            row.passed = ratio >= 0.90
        elif row.target.startswith(">= 6x"):
            row.passed = ratio >= 6.0
        elif row.label.startswith("ours"):
            row.target = ">= 10000/s"
            row.passed = row.rate >= 10_000
        verdict = "" if row.passed is None else ("  ok" if row.passed else "  MISSED")
        mark = " (baseline)" if row.baseline else ""
        print(
            f"{row.group:<10} {row.label + mark:<34} {row.count:>7} {row.rate:>10,.0f} "
            f"{ratio:>7.2f}x  {row.target}{verdict}"
        )
    http_rows = [row for row in rows if row.request_bytes]
    if http_rows:
        print()
        print(f"{'HTTP request bodies':<26} {'bytes/rcpt':>10} {'MB/s sent':>10} {'at 100k/s':>10}")
        for row in http_rows:
            per_recipient = row.request_bytes / row.count
            print(
                f"{row.label:<26} {per_recipient:>10,.0f} "
                f"{row.request_bytes / row.seconds / 1e6:>10,.0f} "
                f"{per_recipient * 100_000 / 1e9:>8.2f} GB/s"
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts")
    parser.add_argument("--http-sink", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.http_sink:
        run_http_sink(args.http_sink)
        return
    scale = 0.1 if args.quick else 1.0
    html, text = render("[[name]]", "[[email]]", "[[unsubscribe_url]]")
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        settings = settings_for(root, "")
        prepared = prepare_issue(
            RenderedStandIn(_Month("2021-03"), "March 2021: the alliance", html, text), settings
        )
        rows = bench_building(settings, prepared, scale)
        rows += bench_smtp(root, prepared, scale)
        rows += bench_http(root, prepared, scale)
    print_table(rows, len(html.encode()))


if __name__ == "__main__":
    main()
