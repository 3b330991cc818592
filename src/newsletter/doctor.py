"""``newsletter doctor``: what a first real send depends on, each as ok / warning / error.

The areas, in the order they are reported::

    settings     newsletter.toml read and every table checked; https links; a real sender
    secret       which source signs links; both present and different is an error
    provider     its settings and credentials; --online: a harmless authenticated call
    dns          --online: SPF, DKIM and DMARC of the From domain, and alignment
    unsubscribe  --online: the web app answers an RFC 8058 one-click POST with 200
    store        schema version, integrity check, WAL mode, free disk space

Every finding says what was found and, when it is not ok, what to do. Nothing here writes
anything: the online checks read (the provider's account, DNS) or POST an unsubscribe for
subscriber 0, whom no store holds.
"""

from __future__ import annotations

import base64
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import dns.exception
import dns.resolver
import requests

from newsletter.database_url import DatabaseUrl
from newsletter.dkim_signing import signer_from_settings
from newsletter.errors import NewsletterError, SettingsError, StoreError, TokenError
from newsletter.providers import create_provider
from newsletter.providers.base import AccountCheck
from newsletter.schedule import schedule_settings
from newsletter.settings import DEFAULTS, Settings, load_settings
from newsletter.store import SCHEMA_VERSION, open_store, schema_version
from newsletter.tokens import SECRET_ENV, Signer, load_secret, secret_sources, web_url

Level = Literal["ok", "warning", "error", "skipped"]
DISK_ERROR_BYTES = 100 * 1024**2
DISK_WARNING_BYTES = 1024**3
_EXAMPLE_DOMAINS = {"example.org", "example.com", "example.net"}


@dataclass(frozen=True)
class Finding:
    level: Level
    area: str
    message: str

    def __str__(self) -> str:
        return f"{self.level:<8} {self.area}: {self.message}"


@dataclass
class DoctorReport:
    findings: list[Finding] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    def add(self, level: Level, area: str, message: str) -> None:
        self.findings.append(Finding(level, area, message))


@dataclass(frozen=True)
class DoctorOptions:
    online: bool = False
    nameserver: str = ""  # host or host:port; "" for [doctor] nameserver, else the system's
    timeout: float = 5.0


def diagnose(config: Path | None, options: DoctorOptions | None = None) -> DoctorReport:
    """Every check; settings that cannot be read end the report there."""
    options = options or DoctorOptions()
    report = DoctorReport()
    try:
        settings = load_settings(config)
    except SettingsError as exc:
        report.add("error", "settings", f"{exc}; fix it: nothing else can be checked before")
        return report
    _check_settings(settings, report)
    signer = _check_secret(settings, report)
    account = _check_provider(settings, report, options.online)
    if options.online:
        _check_dns(settings, report, options, account)
        _check_unsubscribe(settings, signer, report, options.timeout)
    _check_store(settings, report)
    return report


# --- settings -----------------------------------------------------------------------------------


def _check_settings(settings: Settings, report: DoctorReport) -> None:
    where = settings.source or "the embedded defaults"
    if settings.source is None:
        report.add("warning", "settings", "no newsletter.toml found: the embedded defaults apply")
    validators: list[tuple[str, Callable[[Settings], object]]] = [
        ("[schedule]", schedule_settings),
        ("[dkim]", signer_from_settings),
        ("[doctor]", _doctor_table),
    ]
    failed = False
    for _, validate in validators:
        try:
            validate(settings)
        except NewsletterError as exc:
            report.add("error", "settings", str(exc))
            failed = True
    if not failed:
        report.add("ok", "settings", f"{where} read; every table checked")
    links = web_url(settings)
    if not links.startswith("https://"):
        report.add(
            "error",
            "settings",
            f"unsubscribe links would start with {links}/: mail providers honour one-click "
            "unsubscribe only over https; set [web] url (or [newsletter] base_url) to the "
            "https:// address of the web app",
        )
    if not settings.base_url.startswith("https://"):
        report.add(
            "warning",
            "settings",
            f"[newsletter] base_url {settings.base_url} is not https: the archive link in "
            "every email would be; serve the archive over https",
        )
    if settings.sender_domain in _EXAMPLE_DOMAINS:
        report.add(
            "error",
            "settings",
            f"[newsletter] from_email is {settings.from_email}, an example address: set your own",
        )
    if settings.postal_address == DEFAULTS["newsletter"]["postal_address"]:
        report.add(
            "error",
            "settings",
            "[newsletter] postal_address is still the example one: bulk email must carry "
            "the sender's real postal address (CAN-SPAM)",
        )


def _doctor_table(settings: Settings) -> str:
    table = settings.section("doctor")
    value = table.get("nameserver", "")
    if not isinstance(value, str):
        raise SettingsError(
            'must be an address such as "127.0.0.1" or "127.0.0.1:5353"',
            path=settings.source,
            key="doctor.nameserver",
        )
    return value


# --- the signing secret -------------------------------------------------------------------------


def _check_secret(settings: Settings, report: DoctorReport) -> Signer | None:
    sources = secret_sources(settings)
    if sources.conflict:
        report.add(
            "error",
            "secret",
            f"${SECRET_ENV} and {sources.file} hold different secrets: a process that sees "
            "the variable signs links the other one refuses ('This link is not valid'). "
            "Keep one: put the secret in the services' environment file and delete the "
            "file, or unset the variable",
        )
        return None
    try:
        secret = load_secret(settings)
    except TokenError as exc:
        report.add("error", "secret", str(exc))
        return None
    both = " (the file holds the same one)" if sources.environment and sources.file_value else ""
    report.add(
        "ok",
        "secret",
        f"links are signed with the secret from {sources.in_use}{both}; `send`, `run-due` and "
        "the web app must all read this one",
    )
    return Signer(secret, settings.list_id)


# --- the provider -------------------------------------------------------------------------------


def _check_provider(settings: Settings, report: DoctorReport, online: bool) -> AccountCheck | None:
    try:
        provider = create_provider(settings, None, dry_run=True)
    except NewsletterError as exc:
        report.add("error", "provider", str(exc))
        return None
    if not provider.delivers:
        report.add(
            "warning",
            "provider",
            f"[provider] name is {provider.name!r}, which delivers nothing; set a real one "
            "(docs/providers.md)",
        )
        return None
    for variable in provider.missing_credentials:
        report.add(
            "error",
            "provider",
            f"{variable} is not set: put it in the environment file the services read "
            "(docs/deploy.md)",
        )
    if provider.missing_credentials:
        return None
    report.add("ok", "provider", f"{provider.name}: settings and credentials present")
    if not online:
        return None
    try:
        account = create_provider(settings).check_account()
    except NewsletterError as exc:
        report.add("error", "provider", str(exc))
        return None
    if account.ok is None:
        report.add("skipped", "provider", account.detail)
    else:
        report.add("ok" if account.ok else "error", "provider", account.detail)
    return account


# --- DNS ----------------------------------------------------------------------------------------


class _Dns:
    def __init__(self, nameserver: str, timeout: float):
        if nameserver:
            host, _, port = (
                nameserver.rpartition(":") if ":" in nameserver else (nameserver, "", "")
            )
            self.resolver = dns.resolver.Resolver(configure=False)
            self.resolver.nameservers = [host]
            self.resolver.port = int(port or 53)
        else:
            self.resolver = dns.resolver.Resolver()
        self.resolver.lifetime = timeout

    def txt(self, name: str) -> list[str]:
        """The TXT strings at ``name`` (each record's pieces joined); [] when there are none."""
        try:
            answer = self.resolver.resolve(name, "TXT")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        return [b"".join(record.strings).decode("utf-8", "replace") for record in answer]


def _check_dns(
    settings: Settings, report: DoctorReport, options: DoctorOptions, account: AccountCheck | None
) -> None:
    nameserver = options.nameserver or str(settings.section("doctor").get("nameserver", ""))
    domain = settings.sender_domain
    try:
        resolver = _Dns(nameserver, options.timeout)
    except ValueError:
        report.add(
            "error",
            "dns",
            f'nameserver {nameserver!r} is not HOST or HOST:PORT (e.g. "127.0.0.1:53"); '
            "fix --nameserver or [doctor] nameserver",
        )
        return
    except dns.exception.DNSException as exc:
        report.add("warning", "dns", f"no DNS resolver configured here ({exc}); use --nameserver")
        return
    try:
        _check_spf(resolver, domain, report)
        dkim_domain = _check_dkim(resolver, settings, report)
        _check_dmarc(resolver, domain, report)
    except (dns.exception.DNSException, OSError) as exc:
        report.add(
            "warning",
            "dns",
            f"DNS could not be asked ({type(exc).__name__}: {exc}); the SPF/DKIM/DMARC "
            "checks were skipped. Check the network, or [doctor] nameserver",
        )
        return
    _check_alignment(settings, dkim_domain, account, report)


def _check_spf(resolver: _Dns, domain: str, report: DoctorReport) -> None:
    records = [r for r in resolver.txt(domain) if r.lower().startswith("v=spf1")]
    if not records:
        report.add(
            "error",
            "dns",
            f"no SPF record at {domain}: publish the TXT record your provider gives "
            '(e.g. "v=spf1 include:… ~all"); Gmail and Yahoo refuse unauthenticated bulk mail',
        )
        return
    if len(records) > 1:
        report.add(
            "error",
            "dns",
            f"{len(records)} SPF records at {domain}: receivers treat that as an error "
            "(permerror); merge them into one",
        )
        return
    terms = records[0].lower().split()[1:]
    if "+all" in terms or "all" in terms:
        report.add(
            "error",
            "dns",
            f"the SPF record of {domain} ends in +all, which lets any server on the internet "
            'send as you: end it with "~all" or "-all"',
        )
    elif "?all" in terms:
        report.add(
            "warning", "dns", f"the SPF record of {domain} ends in ?all (neutral): use ~all or -all"
        )
    elif not any(t.endswith("all") or t.startswith("redirect=") for t in terms):
        report.add(
            "warning",
            "dns",
            f"the SPF record of {domain} has no all term: end it with ~all or -all",
        )
    else:
        report.add("ok", "dns", f"SPF at {domain}: {records[0]}")


def _check_dkim(resolver: _Dns, settings: Settings, report: DoctorReport) -> str | None:
    """The DKIM signing domain, when newsletter signs; checks its published key."""
    table = settings.section("dkim")
    if not table:
        report.add(
            "skipped",
            "dns",
            "DKIM: newsletter does not sign ([dkim] is not set); make sure the provider or "
            f"relay signs for {settings.sender_domain} (its dashboard shows the records)",
        )
        return None
    try:
        signer = signer_from_settings(settings)
    except NewsletterError:
        return None  # reported under settings
    if signer is None:
        return None
    name = f"{signer.selector}._domainkey.{signer.domain}"
    records = [r for r in resolver.txt(name) if "p=" in r]
    if not records:
        report.add(
            "error",
            "dns",
            f"no DKIM key published at {name}: publish the public half of [dkim] key_file "
            "there, or receivers cannot verify any signature",
        )
        return signer.domain
    tags = dict(
        (part.split("=", 1)[0].strip(), part.split("=", 1)[1].strip())
        for part in records[0].split(";")
        if "=" in part
    )
    published = tags.get("p", "").replace(" ", "")
    if not published:
        report.add("error", "dns", f"the DKIM key at {name} is revoked (empty p=): publish the key")
        return signer.domain
    key_path = settings.root / str(table["key_file"]).strip()
    verdict = _same_key(key_path.read_bytes(), published)
    if verdict is None:
        report.add(
            "warning", "dns", f"DKIM key at {name} published; its kind cannot be compared here"
        )
    elif verdict:
        report.add("ok", "dns", f"DKIM key at {name} matches [dkim] key_file")
    else:
        report.add(
            "error",
            "dns",
            f"the DKIM key at {name} is not the public half of {key_path}: every signature "
            "would fail; publish the matching key, or point [dkim] at the right selector/key",
        )
    return signer.domain


def _same_key(private_pem: bytes, published: str) -> bool | None:
    """Whether the published p= is the public half of the PEM private key (RSA only)."""
    import dkim.crypto

    try:
        private: dict[str, Any] = dkim.crypto.parse_pem_private_key(private_pem)
        public: dict[str, Any] = dkim.crypto.parse_public_key(base64.b64decode(published))
    except Exception:  # dkimpy raises bare errors of its own for any key it cannot read
        return None
    return bool(
        private["modulus"] == public["modulus"]
        and private["publicExponent"] == public["publicExponent"]
    )


def _check_dmarc(resolver: _Dns, domain: str, report: DoctorReport) -> None:
    candidates = [domain]
    organizational = _organizational(domain)
    if organizational != domain:
        candidates.append(organizational)  # a subdomain falls back to its parent's policy
    for name in candidates:
        records = [r for r in resolver.txt(f"_dmarc.{name}") if r.lower().startswith("v=dmarc1")]
        if records:
            break
    else:
        report.add(
            "error",
            "dns",
            f"no DMARC record at _dmarc.{domain}: Gmail and Yahoo require one of bulk "
            'senders; publish e.g. "v=DMARC1; p=none; rua=mailto:dmarc@' + domain + '"',
        )
        return
    tags = {
        part.split("=", 1)[0].strip().lower(): part.split("=", 1)[1].strip().lower()
        for part in records[0].split(";")
        if "=" in part
    }
    policy = tags.get("p", "")
    if policy in ("quarantine", "reject"):
        report.add("ok", "dns", f"DMARC at _dmarc.{name}: policy {policy}")
    elif policy == "none":
        report.add(
            "warning",
            "dns",
            f"DMARC at _dmarc.{name} has policy none (monitoring only): enough for Gmail and "
            "Yahoo, but forged mail in your name is still delivered; move to quarantine",
        )
    else:
        report.add(
            "error",
            "dns",
            f"the DMARC record at _dmarc.{name} has no valid p= policy: {records[0]}",
        )


def _organizational(domain: str) -> str:
    # Without the public suffix list: right for example.org and news.example.org, not for
    # example.co.uk (whose subdomains then get no fallback, which only adds an error).
    labels = domain.split(".")
    return ".".join(labels[-2:]) if len(labels) > 2 else domain


def _aligned(a: str, b: str) -> bool:
    return _organizational(a.lower()) == _organizational(b.lower())


def _check_alignment(
    settings: Settings, dkim_domain: str | None, account: AccountCheck | None, report: DoctorReport
) -> None:
    domain = settings.sender_domain
    if dkim_domain and not _aligned(dkim_domain, domain):
        report.add(
            "error",
            "dns",
            f"DKIM signs for {dkim_domain}, which is not aligned with the From domain {domain}: "
            "DMARC fails; sign for the From domain",
        )
    envelope = str(settings.provider_options.get("envelope_from", ""))
    if settings.provider == "smtp" and "@" in envelope:
        bounce_domain = envelope.rpartition("@")[2]
        if not _aligned(bounce_domain, domain):
            report.add(
                "warning",
                "dns",
                f"[provider] envelope_from is at {bounce_domain}, not aligned with the From "
                f"domain {domain}: SPF cannot pass DMARC, which then rests on DKIM alone",
            )
    if account is not None and account.sending_domains:
        if any(_aligned(d, domain) for d in account.sending_domains):
            report.add("ok", "dns", f"the provider sends for {domain} (aligned with From)")
        else:
            report.add(
                "error",
                "dns",
                f"the provider's sending domains ({', '.join(account.sending_domains)}) do not "
                f"include {domain}: DMARC alignment fails; add and verify {domain} there",
            )


# --- one-click unsubscribe ----------------------------------------------------------------------


def _check_unsubscribe(
    settings: Settings, signer: Signer | None, report: DoctorReport, timeout: float
) -> None:
    if signer is None:
        report.add("skipped", "unsubscribe", "no usable secret to sign a test link with")
        return
    # Subscriber 0 is in no store: the app answers as for anyone who left, and changes nothing.
    url = f"{web_url(settings)}/unsubscribe/{signer.unsubscribe_token(0)}"
    try:
        response = requests.post(
            url,
            data="List-Unsubscribe=One-Click",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            timeout=timeout,
            allow_redirects=False,
        )
    except requests.RequestException as exc:
        report.add(
            "skipped",
            "unsubscribe",
            f"{web_url(settings)} is not reachable from here ({type(exc).__name__}); run "
            "doctor --online where the web app is reachable to check one-click unsubscribe",
        )
        return
    if response.status_code == 200:
        report.add("ok", "unsubscribe", f"{web_url(settings)} answers a one-click POST with 200")
    elif response.status_code == 400:
        report.add(
            "error",
            "unsubscribe",
            f"{web_url(settings)} refused a link signed with this secret (400): the web app "
            "runs with a different secret (or for another newsletter); give it the same one",
        )
    else:
        report.add(
            "error",
            "unsubscribe",
            f"{web_url(settings)} answered a one-click POST with {response.status_code}, not "
            "200: mail providers drop one-click unsubscribe for such a list (docs/web.md)",
        )


# --- the store ----------------------------------------------------------------------------------


def _check_store(settings: Settings, report: DoctorReport) -> None:
    path = settings.paths.database
    if isinstance(path, DatabaseUrl):
        for level, message in _server_findings(path):
            report.add(level, "store", message)
        return
    if not path.exists():
        report.add(
            "warning",
            "store",
            f"{path} does not exist yet: `newsletter subscribers import FILE.csv` creates it",
        )
    else:
        for level, message in _store_findings(path):
            report.add(level, "store", message)
    folder = path.parent if path.parent.exists() else settings.root
    free = shutil.disk_usage(folder).free
    size = f"{free / 1024**3:,.1f} GB free on the store's disk"
    if free < DISK_ERROR_BYTES:
        report.add("error", "store", f"{size}: a send writes its journal there; free some space")
    elif free < DISK_WARNING_BYTES:
        report.add("warning", "store", f"{size}: less than 1 GB")
    else:
        report.add("ok", "store", size)


def _server_findings(location: DatabaseUrl) -> Iterator[tuple[Level, str]]:
    """A PostgreSQL store: reachable, and at this version's schema (its disk is the server's)."""
    try:
        conn = open_store(location, readonly=True)
    except StoreError as exc:
        yield "error", str(exc)
        return
    try:
        version = schema_version(conn)
    finally:
        conn.close()
    yield "ok", f"{location}: PostgreSQL store, schema version {version}"


def _store_findings(path: Path) -> Iterator[tuple[Level, str]]:
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        yield "error", f"{path} cannot be opened: {exc}"
        return
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        verdict = [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall()]
        mode = str(conn.execute("PRAGMA journal_mode").fetchone()[0])
    except sqlite3.Error as exc:
        yield "error", f"{path} cannot be read ({exc}): restore it from a backup"
        return
    finally:
        conn.close()
    if version > SCHEMA_VERSION:
        yield (
            "error",
            f"{path} has schema version {version}; this newsletter knows {SCHEMA_VERSION}: upgrade newsletter",
        )
    elif version < SCHEMA_VERSION:
        yield (
            "warning",
            f"{path} has schema version {version}; the next command that writes upgrades it to {SCHEMA_VERSION}",
        )
    else:
        yield "ok", f"{path}: schema version {version}"
    if verdict == ["ok"]:
        yield "ok", f"{path}: integrity check ok"
    else:
        yield (
            "error",
            f"{path} is damaged ({'; '.join(verdict[:3])}): restore it from a backup (`newsletter backup` makes them)",
        )
    if mode.lower() == "wal":
        yield "ok", f"{path}: WAL mode (the web app can write while a send runs)"
    else:
        yield "warning", f"{path} is in {mode} mode, not WAL: any command that writes switches it"
