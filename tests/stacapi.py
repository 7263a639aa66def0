"""A minimal STAC API (``POST /search``) on loopback, serving a list of items, for workflow tests.

Implements bbox intersection, datetime ranges, ``query: {eo:cloud_cover: {lte: X}}`` and paging
with ``next`` links carrying a token in the POST body, as Earth Search and Planetary Computer do.
"""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import shapely.geometry


class _Handler(BaseHTTPRequestHandler):
    server: "StacApi"

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802
        if self.path.rstrip("/") != "/search":
            self.send_response(404)
            self.end_headers()
            return
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        self.server.bodies.append(body)
        hits = [it for it in self.server.items if _matches(it, body)]
        limit, start = int(body.get("limit", 10)), int(body.get("token", 0))
        page = hits[start : start + limit]
        links = []
        if start + limit < len(hits):
            links.append({"rel": "next", "href": f"{self.server.url}/search", "method": "POST",
                          "body": {"token": start + limit}, "merge": True})
        data = json.dumps({"type": "FeatureCollection", "features": page, "links": links}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/geo+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _matches(item: dict, body: dict) -> bool:
    props = item["properties"]
    if body.get("collections") and item.get("collection", "sentinel-2-l2a") not in body["collections"]:
        return False
    if "bbox" in body and not shapely.geometry.shape(item["geometry"]).intersects(shapely.geometry.box(*body["bbox"])):
        return False
    if "datetime" in body:
        a, b = body["datetime"].split("/")
        if not (a <= props["datetime"] <= b):
            return False
    lte = body.get("query", {}).get("eo:cloud_cover", {}).get("lte")
    return lte is None or props.get("eo:cloud_cover", 0) <= lte


class StacApi(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, items: list[dict]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.items = items
        self.bodies: list[dict] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


def serve(items: list[dict]):
    """A STAC API over ``items`` on loopback, for the duration of a ``with`` block."""
    from httpserver import running

    return running(StacApi(items))
