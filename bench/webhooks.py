"""Events per second the webhook endpoints verify and store, beside a 204-only baseline.

    python bench/webhooks.py [--requests 3000] [--clients 8] [--subscribers 10000] [--postgresql]

One server process (the app on the standard library's threaded WSGI server, as
``newsletter serve`` runs it) on loopback; the same pre-signed requests, mixed over the five
sources (Mailgun HMAC, SendGrid ECDSA, Postmark basic auth, SES/SNS RSA with its certificate
fetched once over HTTPS from a loopback stand-in, Resend/Svix), are posted by ``--clients``
concurrent connections, first to an app that only answers 204, then to the webhooks. Every
request to the webhooks must be answered 200 and every event must be in the store afterwards.
Target, for the run of one event per request: at least 1,000 events a second, and at least
half the baseline's rate. The second run (SendGrid posting batches) shows what batches are
worth; a 204 costs the same whatever the batch holds, so its ratio is not a target. The
server's CPU time per request is shown beside each rate: it varies less than the rates on a
shared machine. With ``--postgresql`` the one-event mix runs once more with the store on a
private PostgreSQL server (``bench/pg_server.py``, durable commits), whose own CPU time per
request is printed too; not part of the target.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import queue
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.webhook_senders import (
    MAILGUN_KEY,
    POSTMARK_PASSWORD,
    POSTMARK_USER,
    RESEND_SECRET,
    TOPIC,
    MailgunSender,
    PostmarkSender,
    ResendSender,
    SendgridSender,
    SesSender,
    signing_certificate,
    sns_server,
)

import pg_server
from newsletter import store
from newsletter.settings import load_settings
from webhook_writer import add_readers

TARGET_EVENTS_PER_SECOND = 1000.0
TARGET_SHARE_OF_BASELINE = 0.5
SOURCES = ("mailgun", "sendgrid", "postmark", "ses", "resend")
Request = tuple[str, dict[str, str], bytes]


def _serve(
    kind: str,
    folder: str,
    ca_file: str,
    ready: Any,
    go: Any,
    stop: Any,
    environment: dict[str, str],
) -> None:
    """The server process: the 204-only app or the newsletter's app, until ``stop`` is set.

    Puts its port on ``ready``, then the CPU seconds it used between ``go`` and ``stop``.
    """
    os.environ.update(environment)
    from newsletter.web import WebApp, make_server
    from newsletter.webhooks import WebhookReceiver

    app: Callable[..., Iterable[bytes]]
    if kind == "baseline":

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            length = int(environ.get("CONTENT_LENGTH") or 0)
            environ["wsgi.input"].read(length)
            start_response("204 No Content", [("Content-Length", "0")])
            return []

    else:
        settings = load_settings(Path(folder) / "newsletter.toml")
        receiver = WebhookReceiver(
            settings, sns_host=re.compile(r"localhost:\d+"), sns_ca_file=ca_file
        )
        app = WebApp(settings, webhooks=receiver)
    server = make_server(app, "127.0.0.1", 0, log=False)  # type: ignore[arg-type]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    ready.put(server.server_port)
    go.wait()
    before = os.times()
    stop.wait()
    after = os.times()
    ready.put((after.user - before.user) + (after.system - before.system))
    server.shutdown()
    server.server_close()


def _post_all(port: int, requests: list[Request], clients: int) -> tuple[float, dict[int, int]]:
    work: queue.SimpleQueue[Request | None] = queue.SimpleQueue()
    for request in requests:
        work.put(request)
    for _ in range(clients):
        work.put(None)
    statuses: dict[int, int] = {}
    lock = threading.Lock()

    def client() -> None:
        found: dict[int, int] = {}
        while (item := work.get()) is not None:
            path, headers, body = item
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            connection.request("POST", path, body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            connection.close()
            found[response.status] = found.get(response.status, 0) + 1
        with lock:
            for status, n in found.items():
                statuses[status] = statuses.get(status, 0) + n

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, statuses


def _run(
    kind: str, folder: Path, ca_file: str, requests: list[Request], clients: int
) -> tuple[float, float, dict[int, int]]:
    """Seconds to answer every request, the server's CPU seconds meanwhile, the statuses."""
    context = multiprocessing.get_context("spawn")
    ready, go, stop = context.Queue(), context.Event(), context.Event()
    environment = {
        "NEWSLETTER_SECRET": "bench-secret-of-enough-length-0123456789",
        "MAILGUN_WEBHOOK_SIGNING_KEY": MAILGUN_KEY,
        "POSTMARK_WEBHOOK_PASSWORD": POSTMARK_PASSWORD,
        "RESEND_WEBHOOK_SECRET": RESEND_SECRET,
    }
    process = context.Process(
        target=_serve, args=(kind, str(folder), ca_file, ready, go, stop, environment)
    )
    process.start()
    try:
        port = ready.get(timeout=60)
        go.set()
        seconds, statuses = _post_all(port, requests, clients)
        stop.set()
        return seconds, ready.get(timeout=60), statuses
    finally:
        stop.set()
        process.join(30)


def _requests(
    senders: dict[str, Any], count: int, subscribers: int, sendgrid_batch: int, tag: str
) -> tuple[list[Request], int]:
    """``count`` requests, the sources in turn; SendGrid's carry ``sendgrid_batch`` events."""
    kinds = ["delivered"] * 17 + ["soft_bounce", "hard_bounce", "complaint"]
    now = time.time()
    found: list[Request] = []
    events = 0
    for n in range(count):
        source = SOURCES[n % len(SOURCES)]
        kind = kinds[n % len(kinds)]
        email = f"reader{(n * 7919) % subscribers}@example.net"
        if source == "sendgrid" and sendgrid_batch > 1:
            headers, body = _sendgrid_batch(senders[source], n, sendgrid_batch, subscribers, tag)
            events += sendgrid_batch
        else:
            headers, body = senders[source].event(
                kind, email, now=now, event_id=f"{tag}{n}", message_id=f"m{tag}{n}"
            )
            events += 1
        found.append((f"/webhooks/{source}", headers, body))
    return found, events


def _sendgrid_batch(
    sender: Any, n: int, size: int, subscribers: int, tag: str
) -> tuple[dict[str, str], bytes]:
    now = time.time()
    items = []
    for i in range(size):
        one = json.loads(
            sender.event(
                "delivered",
                f"reader{(n * 7919 + i) % subscribers}@example.net",
                now=now,
                event_id=f"{tag}{n}.{i}",
            )[1]
        )
        items.extend(one)
    signed: tuple[dict[str, str], bytes] = sender.sign(json.dumps(items).encode(), now)
    return signed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="requests per run")
    parser.add_argument("--clients", type=int, default=8, help="concurrent connections")
    parser.add_argument("--subscribers", type=int, default=10000, help="subscribers in the store")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; the best counts")
    parser.add_argument(
        "--sendgrid-batch",
        type=int,
        default=100,
        help="events in each SendGrid request of the batched run (SendGrid posts batches)",
    )
    parser.add_argument(
        "--postgresql",
        action="store_true",
        help="also run the one-event mix with the store on a private PostgreSQL server "
        "(bench/pg_server.py; not part of the target)",
    )
    args = parser.parse_args()

    rows: list[Row] = []
    server = pg_server.start_server() if args.postgresql else None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            sendgrid = SendgridSender()
            ses_key, certificate = signing_certificate()
            with sns_server(folder, certificate) as sns:
                sources = (
                    "[webhooks]\n[webhooks.mailgun]\n"
                    f'[webhooks.sendgrid]\npublic_key = "{sendgrid.public_key}"\n'
                    f'[webhooks.postmark]\nusername = "{POSTMARK_USER}"\n'
                    f'[webhooks.ses]\ntopic_arns = ["{TOPIC}"]\n'
                    "[webhooks.resend]\n"
                )
                senders: dict[str, Any] = {
                    "mailgun": MailgunSender(),
                    "sendgrid": sendgrid,
                    "postmark": PostmarkSender(),
                    "ses": SesSender(ses_key, f"{sns.base}/SimpleNotificationService-1.pem"),
                    "resend": ResendSender(),
                }
                bench = _Bench(args, senders, str(sns.ca_file))
                sqlite = bench.store(folder / "sqlite", sources)
                rows.append(bench.measure(sqlite, "one event per request", 1, "a"))
                batches = f"SendGrid batches of {args.sendgrid_batch}"
                rows.append(bench.measure(sqlite, batches, args.sendgrid_batch, "b"))
                if server is not None:
                    url = server.new_database("webhooks")
                    postgres = bench.store(
                        folder / "postgresql", f'[paths]\ndatabase = "{url}"\n' + sources
                    )
                    rows.append(
                        bench.measure(postgres, "  ... on PostgreSQL", 1, "c", server, "webhooks")
                    )
    finally:
        if server is not None:
            server.stop()

    print(
        f"{args.clients} client connections, one server process (threads), loopback; "
        f"best of {args.repeat} runs each; server CPU in ms per request"
    )
    print(
        f"{'run':<28}{'requests':>9}{'events':>8}{'204-only ev/s':>15}{'CPU':>6}"
        f"{'webhooks ev/s':>15}{'CPU':>6}{'ratio':>7}{'target':>8}"
    )
    met = True
    for n, row in enumerate(rows):
        (base_seconds, base_cpu, _), (hook_seconds, hook_cpu, _) = (
            row.best["baseline"],
            row.best["webhooks"],
        )
        base_rate, hook_rate = row.events / base_seconds, row.events / hook_seconds
        ratio = hook_rate / base_rate
        if n == 0:  # the target's run: one event per request, the sources mixed, SQLite
            met = hook_rate >= TARGET_EVENTS_PER_SECOND and ratio >= TARGET_SHARE_OF_BASELINE
            verdict = "met" if met else "missed"
        else:
            verdict = "-"
        print(
            f"{row.label:<28}{row.requests:>9,}{row.events:>8,}{base_rate:>15,.0f}"
            f"{base_cpu / row.requests * 1000:>6.2f}{hook_rate:>15,.0f}"
            f"{hook_cpu / row.requests * 1000:>6.2f}{ratio:>7.3f}{verdict:>8}"
        )
    for row in rows:
        print(
            f"every run, {row.label.strip(' .')}: 204-only "
            + " / ".join(f"{rate:,.0f}" for rate in row.attempts["baseline"])
            + " ev/s; webhooks "
            + " / ".join(f"{rate:,.0f}" for rate in row.attempts["webhooks"])
            + " ev/s"
        )
    for row in rows:
        if row.server_description:
            store_cpu = row.best["webhooks"][2] / row.requests * 1000
            print(
                f"{row.server_description}; its CPU during the best webhooks run: "
                f"{store_cpu:.2f} ms per request"
            )
    complete = all(row.complete for row in rows)
    print(f"every request answered as expected and every event stored: {complete}")
    print(
        f"target (one event per request, SQLite): ≥ {TARGET_EVENTS_PER_SECOND:,.0f} events/s "
        f"and ≥ {TARGET_SHARE_OF_BASELINE:.0%} of the 204-only rate"
    )
    sys.exit(0 if complete and met else 1)


@dataclass
class Row:
    label: str
    requests: int
    events: int
    # kind -> (seconds, server CPU seconds, PostgreSQL server CPU seconds) of its best run
    best: dict[str, tuple[float, float, float]]
    attempts: dict[str, list[float]]  # kind -> events per second of each run
    complete: bool  # every request answered as expected, every event stored
    server_description: str = ""


def _events_stored(folder: Path) -> int:
    settings = load_settings(folder / "newsletter.toml")
    with closing(store.open_store(settings.paths.database)) as conn:
        return int(conn.execute("SELECT count(*) FROM delivery_events").fetchone()[0])


class _Bench:
    def __init__(self, args: argparse.Namespace, senders: dict[str, Any], ca_file: str):
        self.args, self.senders, self.ca_file = args, senders, ca_file

    def store(self, folder: Path, settings_text: str) -> Path:
        """A newsletter folder whose store holds ``--subscribers`` active readers."""
        folder.mkdir()
        (folder / "newsletter.toml").write_text(settings_text, "utf-8")
        add_readers(load_settings(folder / "newsletter.toml").paths.database, self.args.subscribers)
        return folder

    def measure(
        self,
        folder: Path,
        label: str,
        batch: int,
        tag: str,
        server: pg_server.PostgresCluster | None = None,
        database: str = "",
    ) -> Row:
        """``--repeat`` alternating runs of the 204-only app and the webhooks on ``folder``."""
        args = self.args
        best: dict[str, tuple[float, float, float]] = {}
        attempts: dict[str, list[float]] = {"baseline": [], "webhooks": []}
        answered_ok, expected_events = True, 0
        stored_before = _events_stored(folder)
        for attempt in range(args.repeat):
            # Fresh events each time: the store keeps every one.
            requests, events = _requests(
                self.senders, args.requests, args.subscribers, batch, f"{tag}{attempt}."
            )
            for kind, expected in (("baseline", 204), ("webhooks", 200)):
                store_cpu = pg_server.settled_cpu_seconds(server, database) if server else 0.0
                seconds, cpu, answers = _run(kind, folder, self.ca_file, requests, args.clients)
                if server is not None:
                    store_cpu = pg_server.settled_cpu_seconds(server, database) - store_cpu
                answered_ok &= answers == {expected: len(requests)}
                attempts[kind].append(events / seconds)
                if seconds < best.get(kind, (float("inf"), 0.0, 0.0))[0]:
                    best[kind] = (seconds, cpu, store_cpu)
            expected_events += events
        stored = _events_stored(folder) - stored_before
        return Row(
            label,
            args.requests,
            events,
            best,
            attempts,
            answered_ok and stored == expected_events,
            pg_server.describe(server) if server else "",
        )


if __name__ == "__main__":
    main()
