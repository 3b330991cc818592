"""Loopback servers for bench/messages.py, each run in its own process so that the server's
work does not share the benchmark's GIL.

    python bench/loopback_servers.py smtp PORT DELAY_SECONDS
    python bench/loopback_servers.py http PORT

The SMTP sink accepts every message after DELAY_SECONDS; the HTTP server answers each provider's
batch path with that provider's documented success body, one entry per message in the batch.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# Markers that occur once per message in each JSON batch body the providers send.
_ITEM_MARKERS = {"/email/batch": b'"MessageStream":', "/emails/batch": b'"subject":'}


def run_smtp_sink(port: int, delay: float) -> None:
    from aiosmtpd.controller import Controller

    class Sink:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            if delay:
                await asyncio.sleep(delay)
            return "250 2.0.0 Ok"

    controller = Controller(Sink(), hostname="127.0.0.1", port=port)
    controller.start()
    print("ready", flush=True)
    threading.Event().wait()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body leave in one write, and without Nagle's delay: otherwise each reply
    # waits for the client's delayed ACK, and that wait, not the provider, sets the rate.
    disable_nagle_algorithm = True
    wbufsize = -1

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        path = self.path
        status = 200
        extra: dict[str, str] = {}
        if path.endswith("/messages"):  # Mailgun
            reply: Any = {"id": "<bench@example.org>", "message": "Queued. Thank you."}
        elif path == "/v3/mail/send":  # SendGrid: 202 and no body
            status, reply, extra = 202, None, {"X-Message-Id": "bench"}
        elif path == "/email/batch":  # Postmark
            count = body.count(_ITEM_MARKERS[path])
            reply = [{"ErrorCode": 0, "Message": "OK", "MessageID": f"m{n}"} for n in range(count)]
        elif path == "/emails/batch":  # Resend
            count = body.count(_ITEM_MARKERS[path])
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


def run_http(port: int) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    kind, port_text = sys.argv[1], sys.argv[2]
    if kind == "smtp":
        run_smtp_sink(int(port_text), float(sys.argv[3]))
    else:
        run_http(int(port_text))
