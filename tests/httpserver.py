"""A loopback HTTP file server with Range support that can fail the first N requests of a file.

Used to test reads of remote COGs (GDAL /vsicurl/) and the retry of transient errors, with no
network: it binds to 127.0.0.1 on a free port and serves one folder.
"""

from __future__ import annotations

import contextlib
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote


class _Handler(BaseHTTPRequestHandler):
    server: "FlakyServer"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _serve(self, body: bool) -> None:
        rel = unquote(self.path.split("?")[0]).lstrip("/")
        path = self.server.root / rel
        with self.server.lock:
            self.server.requests[rel] = self.server.requests.get(rel, 0) + 1
            left = self.server.failures.get(rel, 0)
            if left:
                self.server.failures[rel] = left - 1
        if left:
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if not path.is_file():
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        size = path.stat().st_size
        start, end = 0, size - 1
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            a, _, b = rng[6:].partition("-")
            start = int(a) if a else max(size - int(b), 0)
            end = min(int(b), size - 1) if (a and b) else size - 1
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        else:
            self.send_response(200)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        if body:
            with open(path, "rb") as f:
                f.seek(start)
                self.wfile.write(f.read(end - start + 1))

    def do_GET(self) -> None:  # noqa: N802
        self._serve(True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve(False)


class FlakyServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: str | os.PathLike) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = Path(root)
        self.failures: dict[str, int] = {}
        self.requests: dict[str, int] = {}
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@contextlib.contextmanager
def running(server: ThreadingHTTPServer):
    """Serve ``server`` from a daemon thread for the duration of the block."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def serve(root: str | os.PathLike):
    """Serve the files under ``root`` on loopback (see :class:`FlakyServer`)."""
    return running(FlakyServer(root))
