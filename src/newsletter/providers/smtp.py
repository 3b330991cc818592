"""The ``smtp`` provider: any SMTP relay, including Amazon SES's SMTP interface.

Settings (``[provider]`` table) and their defaults::

    name = "smtp"
    host = "email-smtp.eu-west-1.amazonaws.com"   # required
    port = 587                  # default: 587 for starttls, 465 for tls, 25 for none
    security = "starttls"       # "starttls", "tls" (implicit TLS) or "none"
    username = "AKIA…"          # optional; the password is read from NEWSLETTER_SMTP_PASSWORD
    connections = 4             # parallel connections, each reused across messages
    timeout = 30                # seconds per network operation
    ca_file = ""                # extra CA bundle, for a relay with a private certificate
    envelope_from = ""          # the bounce address (MAIL FROM); default newsletter.from_email

Each message is sent with its own MAIL/RCPT/DATA transaction, so every recipient gets its own
reply code: 4xx is a temporary failure, 5xx a permanent one. A connection the server dropped is
reopened once, and the message retried only if the server cannot have received it yet.
"""

from __future__ import annotations

import smtplib
import ssl
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from newsletter.dkim_signing import DkimSigner, signer_from_settings
from newsletter.errors import ProviderConfigError, ProviderError
from newsletter.messages import OutgoingMessage
from newsletter.providers.base import AccountCheck, DeliveryResult, Provider
from newsletter.settings import Settings

PASSWORD_VARIABLE = "NEWSLETTER_SMTP_PASSWORD"
_DEFAULT_PORTS = {"starttls": 587, "tls": 465, "none": 25}
# Errors that mean the connection is gone, as opposed to a reply from the server.
_CONNECTION_LOST = (smtplib.SMTPServerDisconnected, ConnectionError, TimeoutError, OSError)


def _reply_text(reply: bytes | str) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    return " ".join(text.split())


def _classify(
    message: OutgoingMessage, stage: str, code: int, reply: bytes | str
) -> DeliveryResult:
    reason = f"{stage}: {code} {_reply_text(reply)}"
    if 500 <= code < 600:
        return DeliveryResult.permanent(message, reason)
    return DeliveryResult.temporary(message, reason)


class SmtpProvider(Provider):
    name = "smtp"
    known_options = frozenset(
        {"host", "port", "security", "username", "connections", "timeout", "ca_file"}
        | {"envelope_from", "local_hostname"}
    )
    default_batch_size = 100

    def __init__(
        self, settings: Settings, options: dict[str, Any] | None = None, *, dry_run: bool = False
    ):
        super().__init__(settings, options, dry_run=dry_run)
        self.host = self.option("host", str, "")
        if not self.host:
            raise ProviderConfigError(self.name, "[provider] host is missing: the relay's name")
        self.security = self.choice("security", ("starttls", "tls", "none"), "starttls")
        self.port = self.option("port", int, _DEFAULT_PORTS[self.security])
        self.username = self.option("username", str, "")
        self.connections = self.option("connections", int, 1)
        if not 1 <= self.connections <= 64:
            raise ProviderConfigError(self.name, "[provider] connections must be from 1 to 64")
        if "batch_size" not in self.options:
            # The send journal marks a batch "sending" before handing it over, so the batch is
            # what a crash can leave uncertain: one message per connection keeps that small.
            self.batch_size = self.connections
        self.timeout = self.option("timeout", float, 30.0)
        self.ca_file = self.option("ca_file", str, "")
        self.envelope_from = self.option("envelope_from", str, "") or self.settings.from_email
        self.local_hostname = self.option("local_hostname", str, "") or None
        # Read now, so a missing variable is reported before anything is sent.
        self._password = self.secret(PASSWORD_VARIABLE) if self.username else ""
        self._signer: DkimSigner | None = None
        self._sessions: list[_SmtpSession] = []
        self._executor: ThreadPoolExecutor | None = None

    def tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        if self.ca_file:
            path = self.settings.root / self.ca_file
            try:
                context.load_verify_locations(cafile=str(Path(path)))
            except (OSError, ssl.SSLError) as exc:
                raise ProviderConfigError(
                    self.name, f"[provider] ca_file {path} cannot be loaded: {exc}"
                ) from None
        return context

    def open(self) -> None:
        self._signer = signer_from_settings(self.settings)
        context = self.tls_context() if self.security != "none" else None
        self._sessions = [_SmtpSession(self, context) for _ in range(self.connections)]
        # The first connection is opened now so that a wrong host, certificate or password
        # stops the send before the first batch instead of failing every message.
        try:
            self._sessions[0].connect()
        except _CONNECTION_LOST as exc:
            raise ProviderError(
                self.name, f"cannot connect to {self.host}:{self.port}: {exc}"
            ) from None
        if self.connections > 1:
            self._executor = ThreadPoolExecutor(self.connections, thread_name_prefix="smtp")

    def check_account(self) -> AccountCheck:
        """Connect, EHLO, STARTTLS and log in as a send would, then QUIT: nothing is sent."""
        context = self.tls_context() if self.security != "none" else None
        session = _SmtpSession(self, context)
        try:
            session.connect()
        except (ProviderError, ProviderConfigError) as exc:
            return AccountCheck(False, str(exc))
        except _CONNECTION_LOST as exc:
            return AccountCheck(False, f"cannot connect to {self.host}:{self.port}: {exc}")
        session.quit()
        login = f"logged in as {self.username!r}" if self.username else "no login configured"
        return AccountCheck(True, f"{self.host}:{self.port} answered ({self.security}); {login}")

    def send_batch(self, messages: Sequence[OutgoingMessage]) -> list[DeliveryResult]:
        if not self._sessions:
            raise ProviderError(self.name, "send_batch() called before open()")
        count = min(len(self._sessions), len(messages))
        if count <= 1 or self._executor is None:
            return self._sessions[0].send_all(list(messages))
        # Round-robin so that every connection gets an equal share of the batch.
        shares = [list(messages[index::count]) for index in range(count)]
        futures = [
            self._executor.submit(self._sessions[index].send_all, share)
            for index, share in enumerate(shares)
        ]
        per_share: list[list[DeliveryResult]] = []
        stopped: ProviderError | None = None
        for future in futures:
            try:
                per_share.append(future.result())
            except ProviderError as stop:
                # Wait for every share: the others' accepted messages must not be lost.
                stopped = stopped or stop
                per_share.append(list(stop.results or []))
        results: list[DeliveryResult] = []
        for position in range(len(messages)):
            results.append(per_share[position % count][position // count])
        if stopped is not None:
            stopped.results = results
            raise stopped
        return results

    def prepare(self, message: OutgoingMessage) -> bytes:
        raw = message.as_bytes()
        return self._signer.sign(raw) if self._signer else raw

    def close(self) -> None:
        for session in self._sessions:
            session.quit()
        self._sessions = []
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None


class _SmtpSession:
    """One connection, used by one thread at a time, reopened when the server drops it."""

    def __init__(self, provider: SmtpProvider, context: ssl.SSLContext | None):
        self.provider = provider
        self.context = context
        self.smtp: smtplib.SMTP | None = None
        self.lock = threading.Lock()
        self.connects = 0

    def connect(self) -> smtplib.SMTP:
        provider = self.provider
        smtp: smtplib.SMTP
        if provider.security == "tls":
            smtp = smtplib.SMTP_SSL(
                provider.host,
                provider.port,
                local_hostname=provider.local_hostname,
                timeout=provider.timeout,
                context=self.context,
            )
        else:
            smtp = smtplib.SMTP(
                provider.host,
                provider.port,
                local_hostname=provider.local_hostname,
                timeout=provider.timeout,
            )
        try:
            smtp.ehlo()
            if provider.security == "starttls":
                smtp.starttls(context=self.context)
                smtp.ehlo()
            if provider.username:
                self._login(smtp)
        except smtplib.SMTPAuthenticationError as exc:
            smtp.close()
            raise ProviderError(
                provider.name,
                f"{provider.host} refused the login for {provider.username!r}; check "
                f"[provider] username and {PASSWORD_VARIABLE}",
                reply=f"{exc.smtp_code} {_reply_text(exc.smtp_error)}",
            ) from None
        except smtplib.SMTPNotSupportedError as exc:
            smtp.close()
            raise ProviderConfigError(
                provider.name, f"{provider.host} does not support what the settings ask: {exc}"
            ) from None
        except ssl.SSLCertVerificationError as exc:
            smtp.close()
            raise ProviderConfigError(
                provider.name,
                f"the certificate of {provider.host} cannot be verified ({exc.verify_message}); "
                "set [provider] ca_file if the relay uses a private CA",
            ) from None
        except BaseException:
            smtp.close()
            raise
        self.smtp = smtp
        self.connects += 1
        return smtp

    def _login(self, smtp: smtplib.SMTP) -> None:
        # One attempt with one mechanism: smtplib's login() would try every advertised one
        # in turn, which multiplies failed attempts (and lock-outs) on a wrong password.
        provider = self.provider
        advertised = smtp.esmtp_features.get("auth", "").upper().split()
        for mechanism, method in (
            ("PLAIN", smtp.auth_plain),
            ("LOGIN", smtp.auth_login),
            ("CRAM-MD5", smtp.auth_cram_md5),
        ):
            if mechanism in advertised:
                smtp.user, smtp.password = provider.username, provider._password
                smtp.auth(mechanism, method, initial_response_ok=True)
                return
        raise smtplib.SMTPNotSupportedError(
            f"no supported AUTH mechanism (PLAIN, LOGIN, CRAM-MD5) is offered: {advertised}"
        )

    def drop(self) -> None:
        if self.smtp is not None:
            try:
                self.smtp.close()
            finally:
                self.smtp = None

    def quit(self) -> None:
        if self.smtp is None:
            return
        try:
            self.smtp.quit()
        except _CONNECTION_LOST:
            pass
        finally:
            self.drop()

    def send_all(self, messages: list[OutgoingMessage]) -> list[DeliveryResult]:
        with self.lock:
            results: list[DeliveryResult] = []
            for index, message in enumerate(messages):
                try:
                    results.append(self.send_one(message))
                except _ConnectFailed as failure:
                    # The relay is unreachable: the rest of this share waits for a later try.
                    reason = f"cannot connect to the relay: {failure.reason}"
                    results.extend(
                        DeliveryResult.temporary(rest, reason) for rest in messages[index:]
                    )
                    break
                except ProviderError as stop:
                    # The messages the relay took before it refused must be recorded as sent.
                    reason = f"not sent: {stop}"
                    results.extend(
                        DeliveryResult.temporary(rest, reason) for rest in messages[index:]
                    )
                    stop.results = results
                    raise
            return results

    def send_one(self, message: OutgoingMessage) -> DeliveryResult:
        provider = self.provider
        raw = provider.prepare(message)
        for attempt in (1, 2):
            smtp = self.smtp
            if smtp is None:
                try:
                    smtp = self.connect()
                except _CONNECTION_LOST as exc:
                    raise _ConnectFailed(str(exc) or type(exc).__name__) from None
            try:
                code, reply = smtp.mail(provider.envelope_from)
                if code == 421:
                    raise smtplib.SMTPServerDisconnected(_reply_text(reply))
                if code != 250:
                    self._reset(smtp)
                    if 500 <= code < 600:
                        raise ProviderError(
                            provider.name,
                            f"the relay refused the sender {provider.envelope_from}",
                            reply=f"{code} {_reply_text(reply)}",
                        )
                    return _classify(message, "MAIL FROM", code, reply)
                code, reply = smtp.rcpt(message.recipient.email)
                if code not in (250, 251):
                    self._reset(smtp)
                    return _classify(message, "RCPT TO", code, reply)
            except _CONNECTION_LOST as exc:
                # Nothing of this message reached the server yet: reconnect and try once more.
                self.drop()
                if attempt == 2:
                    return DeliveryResult.temporary(message, f"connection lost: {exc}")
                continue
            try:
                code, reply = smtp.data(raw)
            except smtplib.SMTPDataError as exc:
                return _classify(message, "DATA", exc.smtp_code, exc.smtp_error)
            except _CONNECTION_LOST as exc:
                self.drop()
                return DeliveryResult.temporary(
                    message,
                    f"connection lost during DATA: {exc}; the relay may have accepted it",
                    uncertain=True,
                )
            # smtplib raises for a refused DATA command but returns the reply to the content.
            if code != 250:
                return _classify(message, "DATA", code, reply)
            return DeliveryResult.accepted(message, _reply_text(reply))
        raise AssertionError("unreachable")  # pragma: no cover

    def _reset(self, smtp: smtplib.SMTP) -> None:
        try:
            smtp.rset()
        except _CONNECTION_LOST:
            self.drop()


class _ConnectFailed(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason
