"""A private PostgreSQL server for the tests, never a system service.

``PostgresCluster().start()`` runs ``initdb`` in a new temporary folder and ``pg_ctl start`` on a
free TCP port of 127.0.0.1 (and a Unix socket in that folder), tuned for throwaway data (no
fsync); ``stop()`` stops it and removes the folder. ``new_database(name)`` gives each test a
database of its own. The binaries come from PATH, else from the highest
/usr/lib/postgresql/*/bin (Debian's layout); scripts/install-postgresql installs them.

initdb and pg_ctl refuse to run as root: when the tests run as root (CI does), they run as the
unprivileged user ``nobody``, and the folder is that user's (mode 0700).
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType

import psycopg
from psycopg import sql

BINARIES = ("initdb", "pg_ctl", "postgres")
DEBIAN_BIN_DIRS = "/usr/lib/postgresql/*/bin"
INSTALL_HINT = "run scripts/install-postgresql (as root) to install Debian's postgresql"
SUPERUSER = "postgres"
HOST = "127.0.0.1"
# Who runs initdb and the server when the tests run as root.
UNPRIVILEGED_USER = "nobody"
# The server's settings: data that is thrown away needs no durability, and the store's pools may
# open many connections at once.
SERVER_SETTINGS = {
    "listen_addresses": HOST,
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
}
DATABASE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
PG_HBA = """\
# Written by tests/pg_cluster.py: trust, on loopback only (the socket is in a 0700 folder).
local all all trust
host all all 127.0.0.1/32 trust
"""
# RAM-backed, when it has this much room (a cluster takes about 40 MB, a database 8 MB more).
TMPFS = "/dev/shm"
TMPFS_ROOM = 1 << 30
START_ATTEMPTS = 5
# How long drop_database lets a test's last connections end by themselves before forcing them.
DROP_GRACE = 0.25
TIMEOUT = 60.0


class PostgresClusterError(RuntimeError):
    """The private server could not be found, started or used."""


def find_bin_dir(path: str | None = None, debian_dirs: str = DEBIAN_BIN_DIRS) -> Path:
    """The folder holding initdb, pg_ctl and postgres: PATH's (``path`` if given) first, then
    the highest version under ``debian_dirs``. pg_ctl and initdb find postgres beside their own
    real file, so a PATH entry counts through its symlinks."""
    on_path = {name: shutil.which(name, path=path) for name in BINARIES}
    candidates = [Path(os.path.realpath(found)).parent for found in on_path.values() if found]
    candidates += sorted(
        (Path(found) for found in glob.glob(debian_dirs)),
        key=lambda folder: [int(part) for part in re.findall(r"\d+", folder.parent.name)],
        reverse=True,
    )
    for folder in candidates:
        if all(os.access(folder / name, os.X_OK) for name in BINARIES):
            return folder
    missing = ", ".join(name for name, found in on_path.items() if not found) or "none"
    raise PostgresClusterError(
        f"PostgreSQL's server binaries (initdb, pg_ctl, postgres) were not found together "
        f"(missing on PATH: {missing}; none complete under {debian_dirs}): {INSTALL_HINT}"
    )


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on just now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def _tail(text: str, lines: int = 25) -> str:
    kept = text.rstrip().splitlines()[-lines:]
    return "\n".join("    " + line for line in kept) or "    (nothing)"


def _parent_folders(*, for_others: bool) -> list[Path]:
    """Where the cluster's folder may go, best first: tmpfs when it has room (creating and
    dropping a database there takes a tenth of the time it takes on a disk), then the usual
    temporary folders. ``for_others``: the server's user must be able to reach it."""
    candidates = [Path(tempfile.gettempdir()), Path("/tmp"), Path("/var/tmp")]
    try:
        shm = os.statvfs(TMPFS)
        if shm.f_bavail * shm.f_frsize >= TMPFS_ROOM:
            candidates.insert(0, Path(TMPFS))
    except OSError:
        pass
    return [
        folder
        for folder in candidates
        if folder.is_dir()
        and os.access(folder, os.W_OK | os.X_OK)
        and (not for_others or _searchable_by_others(folder))
    ]


def _searchable_by_others(folder: Path) -> bool:
    """Whether every folder from / down to ``folder`` lets other users pass (o+x)."""
    return all(os.stat(part).st_mode & 0o001 for part in [folder, *folder.parents])


class PostgresCluster:
    """One private server: ``start()``, then ``admin_url``, ``new_database()``; ``stop()``.

    Also a context manager. ``start_seconds`` tells how long the start took (initdb included).
    """

    def __init__(self, bin_dir: Path | None = None) -> None:
        self._bin_dir = bin_dir
        self._base: Path | None = None
        self._port: int | None = None
        self._admin: psycopg.Connection[tuple[object, ...]] | None = None
        self._lock = threading.Lock()
        self._uid: int | None = None
        self._gid: int | None = None
        self.start_seconds: float | None = None

    # -- what a test uses -------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise PostgresClusterError("the cluster is not started")
        return self._port

    @property
    def base_dir(self) -> Path:
        """The temporary folder: the data directory, the log and the Unix socket are in it."""
        if self._base is None:
            raise PostgresClusterError("the cluster is not started")
        return self._base

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "postgres.log"

    @property
    def admin_url(self) -> str:
        return self.url(SUPERUSER)

    def url(self, database: str) -> str:
        """The URL of one of the cluster's databases, as the superuser over TCP."""
        return f"postgresql://{SUPERUSER}@{HOST}:{self.port}/{database}"

    def new_database(self, name: str) -> str:
        """``CREATE DATABASE name`` (a copy of template0) and return its URL."""
        identifier = self._identifier(name)
        with self._lock:
            admin = self._admin_connection()
            strategy = (
                sql.SQL(" STRATEGY FILE_COPY")
                if admin.info.server_version >= 150000
                else sql.SQL("")
            )
            admin.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE template0{}").format(identifier, strategy)
            )
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """``DROP DATABASE IF EXISTS name``, ending the connections still open to it."""
        identifier = self._identifier(name)
        with self._lock:
            admin = self._admin_connection()
            # A connection the test has just closed may still be leaving the server, and DROP
            # DATABASE would then wait for it in steps of 100 ms: give it a moment first.
            deadline = time.monotonic() + DROP_GRACE
            while time.monotonic() < deadline and self._connected(admin, name):
                time.sleep(0.002)
            if admin.info.server_version >= 130000:
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(identifier))
            else:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                    (name,),
                )
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(identifier))

    @staticmethod
    def _connected(admin: psycopg.Connection[tuple[object, ...]], name: str) -> bool:
        row = admin.execute(
            "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE datname = %s)", (name,)
        ).fetchone()
        return bool(row and row[0])

    # -- start and stop ---------------------------------------------------------------------

    def start(self) -> PostgresCluster:
        if self._base is not None:
            raise PostgresClusterError("the cluster is already started")
        began = time.monotonic()
        bin_dir = self._bin_dir = self._bin_dir or find_bin_dir()
        self._base = self._make_base_dir()
        atexit.register(self.stop)
        try:
            self._initdb(bin_dir)
            self._start_server(bin_dir)
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - began
        return self

    def stop(self) -> None:
        """Stop the server (``pg_ctl stop -m fast``) and remove the folder; safe to repeat."""
        atexit.unregister(self.stop)
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        base, self._base, self._port = self._base, None, None
        if base is None:
            return
        data = base / "data"
        if (data / "postmaster.pid").exists():
            bin_dir = self._bin_dir or find_bin_dir()
            done = self._run(
                [str(bin_dir / "pg_ctl"), "stop", "-D", str(data), "-m", "fast", "-w", "-t", "60"],
                cwd=base,
            )
            if done.returncode != 0:
                self._kill_postmaster(data)
        shutil.rmtree(base, ignore_errors=True)

    def __enter__(self) -> PostgresCluster:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()

    # -- the parts --------------------------------------------------------------------------

    def _make_base_dir(self) -> Path:
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam(UNPRIVILEGED_USER)
            except KeyError:
                raise PostgresClusterError(
                    f"running as root, initdb and pg_ctl must run as {UNPRIVILEGED_USER!r}, "
                    "but this machine has no such user"
                ) from None
            self._uid, self._gid = user.pw_uid, user.pw_gid
        parents = _parent_folders(for_others=self._uid is not None)
        if not parents:
            raise PostgresClusterError(
                "no temporary folder to put the cluster in"
                + (f" that {UNPRIVILEGED_USER!r} can reach" if self._uid is not None else "")
                + f" (tried {TMPFS}, {tempfile.gettempdir()}, /tmp, /var/tmp)"
            )
        base = Path(tempfile.mkdtemp(prefix="newsletter-pg-", dir=parents[0]))
        if self._uid is not None and self._gid is not None:
            os.chown(base, self._uid, self._gid)
        os.chmod(base, 0o700)
        return base

    def _run(self, command: list[str], *, cwd: Path) -> subprocess.CompletedProcess[bytes]:
        """Run one of PostgreSQL's programs, as ``nobody`` when we are root.

        The output goes to a file, never a pipe: the server pg_ctl leaves running must not
        hold our end open."""
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        env["LC_ALL"] = "C"
        with tempfile.TemporaryFile() as log:
            done = subprocess.run(
                command,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                user=self._uid,
                group=self._gid,
                extra_groups=[] if self._uid is not None else None,
                umask=0o077,
                timeout=TIMEOUT * 2,
                check=False,
            )
            log.seek(0)
            return subprocess.CompletedProcess(done.args, done.returncode, log.read(), None)

    def _initdb(self, bin_dir: Path) -> None:
        command = [
            str(bin_dir / "initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        ]
        done = self._run(command, cwd=self.base_dir)
        if done.returncode != 0:
            raise PostgresClusterError(
                f"initdb failed (exit {done.returncode}): {shlex.join(command)}\n"
                + _tail(done.stdout.decode(errors="replace"))
            )
        # The file belongs to the server's user; writing it in place keeps it so.
        (self.data_dir / "pg_hba.conf").write_text(PG_HBA, encoding="utf-8")

    def _start_server(self, bin_dir: Path) -> None:
        """``pg_ctl start`` on a free port; again on another should one be taken meanwhile."""
        command: list[str] = []
        done = None
        for _attempt in range(START_ATTEMPTS):
            port = free_port()
            settings = {**SERVER_SETTINGS, "unix_socket_directories": str(self.base_dir)}
            options = [f"-p {port}"] + [
                f"-c {shlex.quote(f'{name}={value}')}" for name, value in settings.items()
            ]
            command = [
                str(bin_dir / "pg_ctl"),
                "start",
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_path),
                "-w",
                "-t",
                str(int(TIMEOUT)),
                "-o",
                " ".join(options),
            ]
            done = self._run(command, cwd=self.base_dir)
            if done.returncode == 0:
                self._port = port
                return
            log = self._read_log()
            if "could not bind" not in log and "already in use" not in log:
                break
        assert done is not None
        raise PostgresClusterError(
            f"pg_ctl start failed (exit {done.returncode}): {shlex.join(command)}\n"
            + _tail(done.stdout.decode(errors="replace"))
            + f"\n  the server's log, {self.log_path}:\n"
            + _tail(self._read_log())
        )

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                with psycopg.connect(self.admin_url, connect_timeout=5) as connection:
                    connection.execute("SELECT 1")
                return
            except psycopg.OperationalError as error:
                if time.monotonic() > deadline:
                    raise PostgresClusterError(
                        f"the server on port {self.port} did not accept connections: {error}\n"
                        f"  the server's log, {self.log_path}:\n" + _tail(self._read_log())
                    ) from error
                time.sleep(0.05)

    def _admin_connection(self) -> psycopg.Connection[tuple[object, ...]]:
        if self._admin is None or self._admin.closed:
            self._admin = psycopg.connect(self.admin_url, autocommit=True)
        return self._admin

    def _identifier(self, name: str) -> sql.Identifier:
        if not DATABASE_NAME.fullmatch(name):
            raise PostgresClusterError(
                f"database name {name!r}: use lower-case letters, digits and _ (63 at most), "
                "not starting with a digit"
            )
        return sql.Identifier(name)

    def _read_log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    @staticmethod
    def _kill_postmaster(data: Path) -> None:
        """When pg_ctl could not stop the server: an immediate shutdown, then SIGKILL."""
        try:
            pid = int((data / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGQUIT)
        except (OSError, ValueError, IndexError):
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
