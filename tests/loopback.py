"""One way to run a test server on loopback: in a daemon thread, stopped when the block ends."""

from __future__ import annotations

import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def running(server: socketserver.BaseServer) -> Iterator[str]:
    """Serve ``server`` (already bound, e.g. to 127.0.0.1 port 0) until the block ends.

    Yields its base URL, ``http://127.0.0.1:PORT`` with no trailing slash.
    """
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield f"http://{host}:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
