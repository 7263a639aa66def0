"""A small but real STAC API on loopback, serving a list of items, as pystac-client talks to it.

- ``GET /``: the landing page (a Catalog with ``conformsTo``: core, item-search, query, collections)
  and its ``search`` (POST) and ``data`` links;
- ``GET /conformance``, ``GET /collections``, ``GET /collections/{id}`` (404 when unknown);
- ``POST /search``: collections, bbox, intersects, datetime ranges, the ``query`` extension
  (``eq``, ``lte``, ``gte``, ``in``) and paging with ``next`` links carrying a token in the POST
  body (``merge: true``), as Earth Search and Planetary Computer do.

Every search body is recorded in ``server.bodies``.
"""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import shapely.geometry

CONFORMS_TO = [
    "https://api.stacspec.org/v1.0.0/core",
    "https://api.stacspec.org/v1.0.0/item-search",
    "https://api.stacspec.org/v1.0.0/item-search#query",
    "https://api.stacspec.org/v1.0.0/collections",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
]


class _Handler(BaseHTTPRequestHandler):
    server: "StacApi"

    def log_message(self, *args) -> None:
        pass

    def _json(self, code: int, doc: dict, ctype: str = "application/json") -> None:
        data = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        url = self.server.url
        path = self.path.split("?")[0].rstrip("/")
        if path == "":
            self._json(200, {
                "type": "Catalog", "id": "loopback", "title": "loopback STAC API", "description": "test API",
                "stac_version": "1.0.0", "conformsTo": CONFORMS_TO,
                "links": [
                    {"rel": "self", "href": f"{url}/", "type": "application/json"},
                    {"rel": "root", "href": f"{url}/", "type": "application/json"},
                    {"rel": "conformance", "href": f"{url}/conformance", "type": "application/json"},
                    {"rel": "data", "href": f"{url}/collections", "type": "application/json"},
                    {"rel": "search", "href": f"{url}/search", "type": "application/geo+json", "method": "POST"},
                ],
            })
        elif path == "/conformance":
            self._json(200, {"conformsTo": CONFORMS_TO})
        elif path == "/collections":
            self._json(200, {"collections": [self._collection(c) for c in self.server.collections], "links": []})
        elif path.startswith("/collections/"):
            cid = path.split("/")[2]
            if cid in self.server.collections:
                self._json(200, self._collection(cid))
            else:
                self._json(404, {"code": "NotFoundError", "description": f"Collection {cid} does not exist."})
        else:
            self._json(404, {"code": "NotFound", "description": self.path})

    def _collection(self, cid: str) -> dict:
        url = self.server.url
        return {
            "type": "Collection", "id": cid, "stac_version": "1.0.0", "description": cid, "license": "proprietary",
            "extent": {"spatial": {"bbox": [[-180, -90, 180, 90]]}, "temporal": {"interval": [[None, None]]}},
            "links": [{"rel": "self", "href": f"{url}/collections/{cid}"},
                      {"rel": "items", "href": f"{url}/collections/{cid}/items"},
                      {"rel": "root", "href": f"{url}/"}],
        }

    def do_POST(self) -> None:  # noqa: N802
        if self.path.split("?")[0].rstrip("/") != "/search":
            self._json(404, {"code": "NotFound", "description": self.path})
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
        self._json(200, {"type": "FeatureCollection", "features": page, "links": links,
                         "context": {"returned": len(page), "matched": len(hits)}}, "application/geo+json")


def _matches(item: dict, body: dict) -> bool:
    props = item["properties"]
    if body.get("collections") and item.get("collection", "sentinel-2-l2a") not in body["collections"]:
        return False
    geom = shapely.geometry.shape(item["geometry"])
    if "bbox" in body and not geom.intersects(shapely.geometry.box(*body["bbox"])):
        return False
    if "intersects" in body and not geom.intersects(shapely.geometry.shape(body["intersects"])):
        return False
    if "datetime" in body:
        a, b = body["datetime"].split("/")
        if not (a <= props["datetime"] <= b):
            return False
    for name, ops in (body.get("query") or {}).items():
        v = props.get(name)
        for op, ref in ops.items():
            ok = {"eq": lambda: v == ref, "lte": lambda: v is not None and v <= ref,
                  "gte": lambda: v is not None and v >= ref, "in": lambda: v in ref}[op]()
            if not ok:
                return False
    return True


class StacApi(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, items: list[dict], collections: tuple[str, ...] = ("sentinel-2-l2a",)) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.items = items
        self.collections = collections
        self.bodies: list[dict] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


def serve(items: list[dict], collections: tuple[str, ...] = ("sentinel-2-l2a",)):
    """A STAC API over ``items`` on loopback, for the duration of a ``with`` block."""
    from httpserver import running

    return running(StacApi(items, collections))
