"""Loopback servers for access and download tests: a SAS token endpoint and an asset server.

- :class:`TokenEndpoint`: ``GET /token/{account}/{container}`` answers ``{"token": "se=..&sp=r&sig=..",
  "msft:expiry": ...}`` as the Planetary Computer's SAS endpoint does; tokens are HMACs of the
  container and expiry with a secret, valid for ``ttl_s`` seconds (negative: already expired).
- :class:`AssetServer`: serves a folder at ``/{container}/...`` with ``Range`` support; with a
  ``secret`` it demands a valid, unexpired token in the query (403 otherwise, as Azure does); it
  can answer 503 to the first N requests of a file, cut the first response of a file after N
  bytes (a dropped connection), and records every request.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

from httpserver import running, send_file


def _sig(secret: str, container: str, se: str) -> str:
    return hmac.new(secret.encode(), f"{container}|{se}".encode(), hashlib.sha256).hexdigest()


class _TokenHandler(BaseHTTPRequestHandler):
    server: "TokenEndpoint"

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        parts = urlparse(self.path).path.strip("/").split("/")
        with self.server.lock:
            self.server.requests.append(self.path)
        if len(parts) != 3 or parts[0] != "token" or self.server.refuse:
            self.send_response(403 if self.server.refuse else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        exp = int(time.time() + self.server.ttl_s)
        se = str(exp)
        doc = {"msft:expiry": dt.datetime.fromtimestamp(exp, dt.timezone.utc).isoformat().replace("+00:00", "Z"),
               "token": f"se={se}&sp=r&sig={_sig(self.server.secret, parts[2], se)}"}
        data = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class TokenEndpoint(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, secret: str, ttl_s: float = 3600.0) -> None:
        super().__init__(("127.0.0.1", 0), _TokenHandler)
        self.secret, self.ttl_s, self.refuse = secret, ttl_s, False
        self.requests: list[str] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/token"


class _AssetHandler(BaseHTTPRequestHandler):
    server: "AssetServer"

    def log_message(self, *args) -> None:
        pass

    def _empty(self, code: int, text: str = "") -> None:
        body = text.encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _serve(self, body: bool) -> None:
        u = urlparse(self.path)
        container, _, rel = unquote(u.path).lstrip("/").partition("/")
        q = parse_qs(u.query)
        s = self.server
        with s.lock:
            s.requests.append({"path": rel, "method": self.command, "range": self.headers.get("Range"),
                               "token": "sig" in q})
            left = s.failures.get(rel, 0)
            if left:
                s.failures[rel] = left - 1
            cut = s.truncate.pop(rel, None) if body else None
        if s.secret is not None:
            se, sig = q.get("se", [""])[0], q.get("sig", [""])[0]
            if not se or not hmac.compare_digest(sig, _sig(s.secret, container, se)):
                return self._empty(403, "AuthenticationFailed: Server failed to authenticate the request.")
            if int(se) < time.time():
                return self._empty(403, "AuthenticationFailed: Signed expiry time has passed.")
        if left:
            return self._empty(503)
        path = s.root / rel
        if container != s.container or not path.is_file():
            return self._empty(404)
        send_file(self, path, body, cut)

    def do_GET(self) -> None:  # noqa: N802
        self._serve(True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve(False)


class AssetServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: str | Path, container: str = "data", secret: str | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _AssetHandler)
        self.root, self.container, self.secret = Path(root), container, secret
        self.failures: dict[str, int] = {}
        self.truncate: dict[str, int] = {}
        self.requests: list[dict] = []
        self.lock = threading.Lock()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"

    @property
    def url(self) -> str:
        return f"http://{self.host}/{self.container}"

    def gets(self, rel: str) -> list[dict]:
        return [r for r in self.requests if r["path"] == rel and r["method"] == "GET"]


def serve_assets(root, container: str = "data", secret: str | None = None):
    return running(AssetServer(root, container, secret))


def serve_tokens(secret: str, ttl_s: float = 3600.0):
    return running(TokenEndpoint(secret, ttl_s))


def remote_items(scene, base_url: str) -> list[dict]:
    """The scene's items with hrefs on ``base_url`` (as a provider publishes them)."""
    doc = json.loads(Path(scene.items).read_text())
    for it in doc["features"]:
        for a in it["assets"].values():
            a["href"] = f"{base_url}/{a['href']}"
    return doc["features"]
