"""Real SMTP servers (aiosmtpd) on loopback for the SMTP provider's tests and the benchmark."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    peer: Any
    # The client's EHLO name (tells senders apart) and when the message's DATA ended (time.time).
    helo: str = ""
    at: float = 0.0


@dataclass
class SinkHandler:
    """Accepts everything; recipients whose address contains a keyword get a scripted reply."""

    rcpt_replies: dict[str, str] = field(default_factory=dict)
    data_replies: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drop_after_each_message: bool = False
    vanish_during_data_for: str = ""
    keep_content: bool = True
    # When set, DATA is not answered until the test sets it: a relay that is slow at will.
    hold: threading.Event | None = None
    received: list[Received] = field(default_factory=list)
    count: int = 0
    ehlo_count: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        with self.lock:
            self.ehlo_count += 1
        return responses

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        for keyword, reply in self.rcpt_replies.items():
            if keyword in address:
                return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.hold is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.hold.wait, 30)
        address = envelope.rcpt_tos[0]
        with self.lock:
            self.count += 1
            number = self.count
            self.received.append(
                Received(
                    envelope.mail_from,
                    list(envelope.rcpt_tos),
                    envelope.content if self.keep_content else b"",
                    session.peer,
                    session.host_name or "",
                    time.time(),
                )
            )
        if self.vanish_during_data_for and self.vanish_during_data_for in address:
            server.transport.close()
            return "250 2.0.0 reply that never arrives"
        for keyword, reply in self.data_replies.items():
            if keyword in address:
                return reply
        if self.drop_after_each_message:
            # The reply is flushed before the transport closes.
            asyncio.get_running_loop().call_soon(server.transport.close)
        return f"250 2.0.0 Ok: queued as Q{number}"


def password_checker(username: str, password: str) -> Any:
    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
        ok = (
            isinstance(data, LoginPassword)
            and data.login == username.encode()
            and data.password == password.encode()
        )
        # handled=False makes the server send its own 535 reply on failure.
        return AuthResult(success=ok, handled=False)

    return authenticate


@contextmanager
def smtp_server(
    handler: SinkHandler,
    *,
    tls_context: ssl.SSLContext | None = None,
    implicit_tls: bool = False,
    port: int | None = None,
    **smtp_options: Any,
) -> Iterator[int]:
    """Run an aiosmtpd server on 127.0.0.1 (on ``port``, or a free one) and yield its port."""
    port = port or free_port()
    kwargs: dict[str, Any] = dict(smtp_options)
    if implicit_tls:
        kwargs["ssl_context"] = tls_context
    elif tls_context is not None:
        kwargs["tls_context"] = tls_context
    controller = Controller(handler, hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    try:
        yield port
    finally:
        controller.stop()
