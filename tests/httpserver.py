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


def send_file(handler: BaseHTTPRequestHandler, path: Path, body: bool, cut: int | None = None) -> None:
    """Answer with ``path`` (200, or 206 for a ``Range`` request); ``cut``: drop the connection after that many bytes."""
    size = path.stat().st_size
    start, end = 0, size - 1
    rng = handler.headers.get("Range")
    if rng and rng.startswith("bytes="):
        a, _, b = rng[6:].partition("-")
        start = int(a) if a else max(size - int(b), 0)
        end = min(int(b), size - 1) if (a and b) else size - 1
        if start >= size:
            handler.send_response(416)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        handler.send_response(206)
        handler.send_header("Content-Range", f"bytes {start}-{end}/{size}")
    else:
        handler.send_response(200)
    handler.send_header("Accept-Ranges", "bytes")
    handler.send_header("Content-Length", str(end - start + 1))
    handler.end_headers()
    if body:
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read(end - start + 1)
        if cut is not None:  # a connection that drops mid-file
            handler.wfile.write(data[:cut])
            handler.wfile.flush()
            handler.close_connection = True
            return
        handler.wfile.write(data)


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
        send_file(self, path, body)

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
