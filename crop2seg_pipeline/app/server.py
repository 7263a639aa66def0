"""The app's web server: a Bokeh server (one Bokeh document per browser tab) plus plain tornado
handlers for downloads and the cache listing, all on one loopback port.

BokehJS and every other asset the page loads are served by this server from the installed
``bokeh`` package (``Resources(mode="server")``, whatever ``BOKEH_RESOURCES`` says): the page
works with no internet and never asks a CDN.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import mimetypes
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import Crop2SegError
from .cache import AppCache, CacheError
from .jobs import JobRunner

log = logging.getLogger(__name__)

__all__ = ["AppConfig", "AppState", "AppServer", "PortError", "bind_port"]

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class PortError(Crop2SegError):
    """The app cannot listen on the asked address and port."""


@dataclass
class AppConfig:
    """What the command line decides for every tab (the page can change items, weights, area...)."""

    items: str
    weights: str
    cache_dir: str
    parcels: str | None = None
    mapping: str | None = None
    id_column: str | None = "ID_DPB"
    crop_column: str = "KOD_PLODINY"
    layer: str | None = None
    cell_size: int | None = None  # None: the area's default (see area.default_cell_size)
    overlap: int = 32
    batch_size: int = 8
    chunksize: int = 512
    device: str = "auto"
    max_side: int = 1024
    map_width: int = 720
    parallel: int = 1


@dataclass
class AppState:
    """Shared by all sessions: configuration, cache, job runner, Dask client, background threads."""

    config: AppConfig
    cache: AppCache
    runner: JobRunner = field(init=False)
    client: Any = None
    slots: threading.BoundedSemaphore = field(default_factory=lambda: threading.BoundedSemaphore(4))

    def __post_init__(self) -> None:
        self.runner = JobRunner(self.cache, client=lambda: self.client, parallel=self.config.parallel)

    def submit(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on a daemon thread, at most 4 at a time (never holds up the app's exit)."""

        def run() -> None:
            with self.slots:
                fn()

        threading.Thread(target=run, name="crop2seg-app-task", daemon=True).start()

    @property
    def dashboard_link(self) -> str | None:
        return getattr(self.client, "dashboard_link", None)


def bind_port(address: str, port: int) -> list[socket.socket]:
    """Listening sockets on ``address:port`` (0: a free port), or a PortError saying what to change."""
    from tornado.netutil import bind_sockets

    try:
        return bind_sockets(port, address=address)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise PortError(f"port {port} on {address} is already in use; choose another --port (0 picks a free one)") from None
        if e.errno == errno.EACCES:
            raise PortError(f"no permission to listen on {address}:{port}; choose a --port above 1023") from None
        raise PortError(f"cannot listen on {address}:{port}: {e.strerror or e}; check --host and --port") from None


def _handlers(state: AppState) -> list:
    from tornado.web import HTTPError, RequestHandler

    class Download(RequestHandler):
        """``/download/<kind>/<key>/<name>``: a file of a complete cache entry, as an attachment."""

        def get(self, kind: str, key: str, name: str) -> None:
            try:
                files = {p.name: p for p in state.cache.files(kind, key)}
            except CacheError:
                raise HTTPError(404) from None
            path = files.get(name)
            if path is None:
                raise HTTPError(404)
            ctype = {".tif": "image/tiff", ".gpkg": "application/geopackage+sqlite3",
                     ".json": "application/json", ".png": "image/png"}.get(path.suffix) or \
                mimetypes.guess_type(name)[0] or "application/octet-stream"
            self.set_header("Content-Type", ctype)
            self.set_header("Content-Disposition", f'attachment; filename="{key[:8]}-{name}"')
            self.set_header("Content-Length", str(path.stat().st_size))
            with open(path, "rb") as fh:
                while True:
                    block = fh.read(1 << 20)
                    if not block:
                        break
                    self.write(block)

    class CacheListing(RequestHandler):
        """``/cache.json``: the app's cache entries (what the cache view shows)."""

        def get(self) -> None:
            entries = [{"kind": e.kind, "key": e.key, "size_bytes": e.size_bytes, "files": e.n_files,
                        "status": e.status, "created": e.created, "description": e.description}
                       for e in state.cache.entries()]
            self.set_header("Content-Type", "application/json")
            self.write(json.dumps({"root": str(state.cache.root), "entries": entries}))

    return [(r"/download/(predictions|backgrounds)/([0-9a-f]{16,64})/([^/]+)", Download), (r"/cache\.json", CacheListing)]


class AppServer:
    """The Bokeh server of the app, run on its own thread and event loop.

    Parameters
    ----------
    state
        The shared :class:`AppState`.
    make_document
        ``fn(state, doc)`` building one tab's Bokeh document.
    sockets
        Listening sockets from :func:`bind_port` (bound before anything else starts, so a port in
        use fails fast).
    allow_origins
        Extra ``host:port`` the page may be opened from (beyond loopback).
    """

    def __init__(self, state: AppState, make_document: Callable[[AppState, Any], None], sockets: list[socket.socket],
                 allow_origins: list[str] | None = None):
        self.state = state
        self._make_document = make_document
        self._sockets = sockets
        addr = sockets[0].getsockname()
        self.host, self.port = addr[0], addr[1]
        self._origins = [f"{h}:{self.port}" for h in ("127.0.0.1", "localhost", "[::1]")] + list(allow_origins or [])
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._loop: Any = None
        self._server: Any = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        host = self.host
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/"

    def start(self) -> "AppServer":
        self._thread = threading.Thread(target=self._serve, name="crop2seg-app-server", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error
        return self

    def _serve(self) -> None:
        from bokeh.application import Application
        from bokeh.application.handlers.function import FunctionHandler
        from bokeh.resources import Resources
        from bokeh.server.server import BaseServer
        from bokeh.server.tornado import BokehTornado
        from bokeh.server.views.static_handler import StaticHandler
        from tornado.httpserver import HTTPServer
        from tornado.ioloop import IOLoop

        class LocalResources(BokehTornado):
            def resources(self, absolute_url: Any = None) -> Resources:  # noqa: D102 - never a CDN
                return Resources(mode="server", root_url="/", path_versioner=StaticHandler.append_version)

        asyncio.set_event_loop(asyncio.new_event_loop())
        try:
            self._loop = IOLoop.current()
            app = Application(FunctionHandler(lambda doc: self._make_document(self.state, doc)))
            tornado_app = LocalResources({"/": app}, extra_websocket_origins=self._origins,
                                         extra_patterns=_handlers(self.state), use_index=False, redirect_root=False)
            http = HTTPServer(tornado_app)
            http.add_sockets(self._sockets)
            self._server = BaseServer(self._loop, tornado_app, http)
            self._server.start()
        except BaseException as e:  # noqa: BLE001 - re-raised on the starting thread
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        self._loop.start()

    def stop(self) -> None:
        """Stop serving and wait for the server thread (idempotent)."""
        if self._loop is None or self._thread is None:
            return
        loop, self._loop = self._loop, None

        def shutdown() -> None:
            try:
                self._server.stop(wait=False)
            finally:
                loop.stop()

        loop.add_callback(shutdown)
        self._thread.join(30)
        for s in self._sockets:
            s.close()

