"""The SMTP sink for bench/messages.py, run in its own process so that the server's work does
not share the benchmark's GIL.

    python bench/loopback_servers.py smtp PORT DELAY_SECONDS

It accepts every message after DELAY_SECONDS. (The HTTP sink lives in bench/messages.py,
run as ``messages.py --http-sink PORT``.)
"""

from __future__ import annotations

import asyncio
import sys
import threading
from typing import Any


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


if __name__ == "__main__":
    kind, port_text = sys.argv[1], sys.argv[2]
    if kind != "smtp":
        raise SystemExit(f"unknown server kind {kind!r}: only smtp")
    run_smtp_sink(int(port_text), float(sys.argv[3]))
