"""A local mirror of the assets a build needs, for clusters whose compute nodes have no internet.

:func:`mirror` reads items (any provider, SAFE products too), keeps only the band assets the
pipeline reads (the 10 bands and SCL, or ``bands=``), and fetches them into ``out/<item id>/``
on the Dask cluster, one task per file:

- whole files by default (HTTP with ``Range`` resume, local files and files inside zips copied),
  each written under a temporary name and renamed once complete and verified: ``file:checksum``
  (a multihash) when the item has one, else the size (``file:size`` or the server's
  ``Content-Length``);
- or, with ``bbox=``, only the window covering the bbox (snapped outward to the 60 m lattice of
  the file, so 10/20/60 m grids stay aligned) as a local Cloud-Optimized GeoTIFF, read through
  GDAL (any href GDAL reads, ``s3://`` too);
- transient failures (connection resets, timeouts, HTTP 429/5xx) are retried with backoff and
  resume where they stopped; permanent ones (HTTP 4xx, checksum mismatch) fail naming the file;
- a re-run fetches only what is missing or incomplete.

Then ``out/items.json`` is written: the same items with those assets only, hrefs relative to
``out``, so every command takes it as ``--items``. Hrefs are signed (Planetary Computer) only at
fetch time (:func:`crop2seg_pipeline.access.resolve_href`); the mirror holds no secret.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import shutil
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import Crop2SegError, EmptySelectionError
from .items import normalize_items, read_items, select_items
from .locks import LOCK_DIR, writer_lock
from .nomenclature import BANDS

__all__ = ["DownloadError", "FileJob", "mirror", "plan_mirror", "fetch_file", "verify_multihash", "MirrorSummary"]

log = logging.getLogger(__name__)

MARKER = ".crop2seg-mirror.json"
_CHUNK = 1 << 20
_STREAM_CHUNK = 1 << 16
_TRANSIENT_HTTP = (408, 425, 429, 500, 502, 503, 504)
#: multihash function codes -> hashlib constructors
_MULTIHASH = {
    0x11: lambda: hashlib.sha1(),  # noqa: S324 (verification only)
    0x12: lambda: hashlib.sha256(),
    0x13: lambda: hashlib.sha512(),
    0x14: lambda: hashlib.sha3_512(),
    0x15: lambda: hashlib.sha3_384(),
    0x16: lambda: hashlib.sha3_256(),
    0x17: lambda: hashlib.sha3_224(),
    0xD5: lambda: hashlib.md5(),  # noqa: S324
    0xB220: lambda: hashlib.blake2b(digest_size=32),
    0xB240: lambda: hashlib.blake2b(digest_size=64),
}


class DownloadError(Crop2SegError):
    """A file could not be mirrored (permanent HTTP error, checksum mismatch, retries exhausted)."""


class _Transient(Exception):
    """A failure worth another attempt."""


# ----------------------------------------------------------------------------- checksums


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = data[pos]
        value |= (b & 0x7F) << shift
        pos += 1
        if not b & 0x80:
            return value, pos
        shift += 7


def parse_multihash(text: str) -> tuple[int, bytes]:
    """(function code, digest) of a hex multihash such as ``1220<64 hex>`` (sha2-256)."""
    try:
        raw = bytes.fromhex(text)
        code, pos = _varint(raw, 0)
        length, pos = _varint(raw, pos)
        digest = raw[pos:]
    except (ValueError, IndexError):
        raise DownloadError(f"file:checksum {text!r} is not a hex multihash") from None
    if len(digest) != length:
        raise DownloadError(f"file:checksum {text!r}: digest has {len(digest)} bytes, the multihash says {length}")
    return code, digest


def verify_multihash(path: str | os.PathLike, checksum: str) -> bool | None:
    """True/False when the file matches/does not; None when the hash function is unknown here."""
    code, digest = parse_multihash(checksum)
    make = _MULTIHASH.get(code)
    if make is None:
        return None
    h = make()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.digest() == digest


# ----------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class FileJob:
    """One file to mirror (pickled into a Dask task: plain fields, no open handles, no secrets).

    Attributes
    ----------
    href : str
        Source href, unsigned, absolute.
    dest : str
        Path relative to the mirror folder.
    item_id, key : str
        Item and asset key (for messages).
    size : int or None
        Expected size in bytes (``file:size``), if known.
    checksum : str or None
        Expected ``file:checksum`` multihash, if known.
    window : tuple or None
        ``(row_off, col_off, height, width)`` to cut from the file as a COG; None: the whole file.
    """

    href: str
    dest: str
    item_id: str
    key: str
    size: int | None = None
    checksum: str | None = None
    window: tuple[int, int, int, int] | None = None


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently transient failures are retried."""

    attempts: int = 5
    backoff_s: float = 0.5
    timeout_s: float = 60.0


def _suffix(href: str, media_type: str | None) -> str:
    path = urllib.parse.urlparse(href).path if "://" in href else href
    ext = os.path.splitext(path)[1].lower()
    if ext in (".tif", ".tiff", ".jp2"):
        return ext
    return ".jp2" if media_type and "jp2" in media_type else ".tif"


def _safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.+" else "_" for c in text)


def _cut_window(asset: Mapping, bbox_xy: tuple[float, float, float, float]) -> tuple[int, int, int, int] | None:
    """The window of ``asset``'s grid covering ``bbox_xy`` (asset CRS), snapped outward to 60 m."""
    t = asset["proj:transform"]
    res, x0, y0 = float(t[0]), float(t[2]), float(t[5])
    h, w = asset["proj:shape"]
    step = 60.0
    minx, miny, maxx, maxy = bbox_xy
    gx0 = x0 + math.floor((minx - x0) / step + 1e-9) * step
    gx1 = x0 + math.ceil((maxx - x0) / step - 1e-9) * step
    gy1 = y0 - math.floor((y0 - maxy) / step + 1e-9) * step
    gy0 = y0 - math.ceil((y0 - miny) / step - 1e-9) * step
    col0, col1 = max(0, int(round((gx0 - x0) / res))), min(w, int(round((gx1 - x0) / res)))
    row0, row1 = max(0, int(round((y0 - gy1) / res))), min(h, int(round((y0 - gy0) / res)))
    if col1 <= col0 or row1 <= row0:
        return None
    return (row0, col0, row1 - row0, col1 - col0)


def plan_mirror(
    items: Any,
    bands: Sequence[str] = BANDS,
    bbox: Sequence[float] | None = None,
    bbox_crs: Any = 4326,
) -> tuple[list[dict], list[FileJob]]:
    """The mirrored items (hrefs rewritten, relative) and the files to fetch for them.

    Checks everything a download needs before anything is fetched: items readable, every band
    present, the bbox overlapping the items.
    """
    import pyproj

    raw = read_items(items)
    if not raw:
        raise EmptySelectionError("no STAC items were given (the collection is empty)")
    norm = normalize_items(raw, bands=bands, check_files=False)
    if bbox is not None:
        norm = select_items(norm, bbox=bbox, bbox_crs=bbox_crs)
    by_id = {str(it.get("id")): it for it in raw}
    out_items: list[dict] = []
    jobs: list[FileJob] = []
    used: set[str] = set()
    for it in norm:
        src = by_id[it["id"]]
        folder = _safe_name(it["id"])
        if folder in used:
            raise Crop2SegError(f"two items have the id {it['id']!r}; ids must be unique to mirror them")
        used.add(folder)
        new = {k: copy.deepcopy(v) for k, v in src.items() if k not in ("assets", "crop2seg:base_href", "links")}
        new["links"] = []
        new["assets"] = {}
        bbox_xy = None
        if bbox is not None:
            epsg = it["properties"]["proj:epsg"]
            src_crs = pyproj.CRS.from_user_input(bbox_crs)
            bbox_xy = tuple(pyproj.Transformer.from_crs(src_crs, epsg, always_xy=True).transform_bounds(
                *bbox, densify_pts=21)) if src_crs.to_epsg() != epsg else tuple(bbox)
        for band, a in it["assets"].items():
            key = a["crop2seg:source_key"]
            ra = copy.deepcopy(src["assets"][key])
            window = _cut_window(a, bbox_xy) if bbox_xy is not None else None
            if bbox_xy is not None and window is None:
                continue  # this asset does not reach the bbox (select_items kept the item for another)
            if window is None:
                dest = f"{folder}/{_safe_name(key)}{_suffix(a['href'], ra.get('type'))}"
                size = ra.get("file:size")
                jobs.append(FileJob(a["href"], dest, it["id"], key, int(size) if size is not None else None,
                                    ra.get("file:checksum")))
            else:
                dest = f"{folder}/{_safe_name(key)}.tif"
                jobs.append(FileJob(a["href"], dest, it["id"], key, window=window))
                row0, col0, h, w = window
                t = [float(v) for v in a["proj:transform"][:6]]
                ra["proj:transform"] = [t[0], 0.0, t[2] + col0 * t[0], 0.0, t[4], t[5] + row0 * t[4]]
                ra["proj:shape"] = [h, w]
                ra["type"] = "image/tiff; application=geotiff; profile=cloud-optimized"
                ra.pop("proj:bbox", None)
            ra.pop("file:checksum", None)
            ra.pop("file:size", None)
            ra.pop("alternate", None)
            ra["href"] = dest
            new["assets"][key] = ra
        if len(new["assets"]) == len(it["assets"]):
            out_items.append(new)
    if not out_items:
        raise EmptySelectionError("no item has all its band files inside the bbox; check --bbox and --bbox-crs")
    return out_items, jobs


# ----------------------------------------------------------------------------- fetching one file


def _local_path(href: str) -> str | None:
    if href.startswith("file://"):
        return urllib.parse.unquote(href[7:])
    if "://" not in href and not href.startswith("/vsi"):
        return href
    return None


def _open_zip_member(href: str):
    import re
    import zipfile

    m = re.match(r"/vsizip/(/?.+?\.zip)/(.+)$", href, re.IGNORECASE)
    if not m:
        return None
    z = zipfile.ZipFile(m.group(1))
    return z, z.open(m.group(2))


def _http_fetch(job: FileJob, part: Path, policy: RetryPolicy) -> int | None:
    """Fetch ``job.href`` into ``part`` (resuming what is there); returns the total size the server gave."""
    import requests

    from .access import AccessError, invalidate_tokens, redact, resolve_href

    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        url = resolve_href(job.href)
    except AccessError:
        raise
    try:
        with requests.get(url, headers=headers, stream=True, timeout=policy.timeout_s) as r:
            if r.status_code == 416 and have:  # already complete
                return have
            if r.status_code == 403 and url != job.href:
                invalidate_tokens()  # a stale token: the next attempt gets a new one
                raise _Transient(f"HTTP 403 (token refused) for {job.href}")
            if r.status_code in _TRANSIENT_HTTP:
                raise _Transient(f"HTTP {r.status_code} for {job.href}")
            if r.status_code >= 400:
                raise DownloadError(
                    f"item {job.item_id!r}, asset {job.key!r}: HTTP {r.status_code} for {job.href}; "
                    f"{'the server refuses access: check the credentials/token configuration' if r.status_code in (401, 403) else 'check the href'}"
                )
            mode = "ab" if (have and r.status_code == 206) else "wb"
            total = None
            if r.status_code == 206:
                cr = r.headers.get("Content-Range", "")
                total = int(cr.rsplit("/", 1)[1]) if "/" in cr and cr.rsplit("/", 1)[1].isdigit() else None
            elif r.headers.get("Content-Length", "").isdigit():
                total = int(r.headers["Content-Length"])
            with open(part, mode) as f:
                for block in r.iter_content(_STREAM_CHUNK):  # small blocks: a dropped connection keeps most
                    f.write(block)
            got = part.stat().st_size
            if total is not None and got < total:
                raise _Transient(f"connection closed at {got} of {total} bytes for {job.href}")
            return total
    except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as e:
        raise _Transient(redact(f"{type(e).__name__}: {e}")) from None


def _copy_fetch(job: FileJob, part: Path) -> int:
    path = _local_path(job.href)
    if path is not None:
        if not os.path.isfile(path):
            raise DownloadError(f"item {job.item_id!r}, asset {job.key!r}: file {path!r} does not exist")
        with open(path, "rb") as src, open(part, "wb") as dst:
            shutil.copyfileobj(src, dst, _CHUNK)
        return os.path.getsize(path)
    opened = _open_zip_member(job.href)
    if opened is None:
        raise DownloadError(f"item {job.item_id!r}, asset {job.key!r}: cannot copy {job.href!r} as a file; "
                            "pass a bbox to cut it through GDAL")
    z, member = opened
    with z, member, open(part, "wb") as dst:
        shutil.copyfileobj(member, dst, _CHUNK)
    return part.stat().st_size


def _cut_fetch(job: FileJob, part: Path) -> None:
    import rasterio
    from rasterio.windows import Window

    from .access import gdal_options, redact, resolve_href

    row0, col0, h, w = job.window  # type: ignore[misc]
    try:
        with rasterio.Env(GDAL_HTTP_MAX_RETRY="4", GDAL_HTTP_RETRY_DELAY="0.5", **gdal_options(job.href)):
            with rasterio.open(resolve_href(job.href)) as src:
                data = src.read(1, window=Window(col0, row0, w, h))
                transform = src.window_transform(Window(col0, row0, w, h))
                profile = {"driver": "COG", "width": w, "height": h, "count": 1, "dtype": src.dtypes[0],
                           "crs": src.crs, "transform": transform, "nodata": src.nodata, "compress": "DEFLATE",
                           "predictor": "2" if src.dtypes[0] == "uint16" else "NO",
                           "blocksize": 512 if max(h, w) > 512 else 256,
                           "overview_resampling": "NEAREST"}
        with rasterio.open(part, "w", **profile) as dst:
            dst.write(data, 1)
    except rasterio.errors.RasterioIOError as e:
        text = redact(str(e))
        if any(s in text for s in ("HTTP response code: 5", "timed out", "Connection", "429")):
            raise _Transient(text) from None
        raise DownloadError(f"item {job.item_id!r}, asset {job.key!r}: cannot read {job.href}: {text}") from None


def _is_complete(job: FileJob, dest: Path, policy: RetryPolicy) -> bool:
    """A file already in the mirror is trusted when its size (and checksum, if given) match."""
    if not dest.is_file():
        return False
    if job.window is not None:
        return True  # written whole and renamed: complete by construction
    if job.size is not None:
        return dest.stat().st_size == job.size
    return True  # renamed only once complete (its size matched the server's) and verified


def fetch_file(job: FileJob, root: str, policy: RetryPolicy = RetryPolicy()) -> dict:
    """Mirror one file into ``root/job.dest`` (a Dask task body). Returns what was done."""
    dest = Path(root) / job.dest
    if _is_complete(job, dest, policy):
        return {"dest": job.dest, "status": "present", "bytes": dest.stat().st_size, "attempts": 0}
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    is_http = job.href.startswith(("http://", "https://")) and job.window is None
    attempt = 0
    verified_once = False
    while True:
        attempt += 1
        try:
            if job.window is not None:
                _cut_fetch(job, part)
                total = None
            elif is_http:
                total = _http_fetch(job, part, policy)
            else:
                total = _copy_fetch(job, part)
            got = part.stat().st_size
            expected = job.size if job.size is not None else total
            if expected is not None and got != expected:
                part.unlink()
                raise _Transient(f"size {got} bytes, expected {expected}")
            if job.checksum:
                ok = verify_multihash(part, job.checksum)
                if ok is False:
                    part.unlink()
                    if verified_once or not is_http:
                        raise DownloadError(
                            f"item {job.item_id!r}, asset {job.key!r}: checksum mismatch for {job.href} "
                            f"(file:checksum {job.checksum}); the file at the source differs from what the item "
                            "declares: fix or drop the item"
                        )
                    verified_once = True
                    raise _Transient("checksum mismatch, fetching once more")
                if ok is None:
                    log.warning("%s: unknown multihash function in %s; verified by size only", job.dest, job.checksum)
            os.replace(part, dest)
            return {"dest": job.dest, "status": "cut" if job.window else "fetched", "bytes": got, "attempts": attempt}
        except _Transient as e:
            if attempt >= policy.attempts:
                raise DownloadError(
                    f"item {job.item_id!r}, asset {job.key!r}: {job.href} failed {attempt} times ({e}); "
                    "run the same command again to resume"
                ) from None
            log.warning("%s: attempt %d failed (%s), retrying", job.dest, attempt, e)
            time.sleep(policy.backoff_s * 2 ** (attempt - 1))


# ----------------------------------------------------------------------------- the driver


@dataclass
class MirrorSummary:
    """What a :func:`mirror` run did."""

    out: str
    items: str
    n_items: int
    n_files: int
    fetched: int = 0
    present: int = 0
    bytes_fetched: int = 0
    seconds: float = 0.0
    statuses: dict[str, str] = field(default_factory=dict)

    def format(self) -> str:
        return (f"mirror      : {self.out}\n"
                f"items       : {self.items} ({self.n_items} items, {self.n_files} files)\n"
                f"this run    : {self.fetched} fetched ({self.bytes_fetched / 1e6:.1f} MB), {self.present} already there\n"
                f"time        : {self.seconds:.1f} s")

    def to_dict(self) -> dict:
        return asdict(self)


#: Who holds a mirror folder's writer lock (shown to a second download into it).
LOCK_HOLDER = "crop2seg-download"


def _prepare_out(out: Path, description: Any) -> None:
    if out.exists() and not out.is_dir():
        raise Crop2SegError(f"{out} exists and is not a folder; choose another --out")
    if out.is_dir() and any(e.name != LOCK_DIR for e in out.iterdir()) and not (out / MARKER).is_file():
        raise Crop2SegError(f"{out} is not empty and is not a crop2seg mirror; choose a new or empty folder for --out")
    out.mkdir(parents=True, exist_ok=True)
    if not (out / MARKER).is_file():
        (out / MARKER).write_text(json.dumps({"source": description}, default=str), encoding="utf-8")


def mirror(
    items: Any,
    out: str | os.PathLike,
    *,
    bands: Sequence[str] = BANDS,
    bbox: Sequence[float] | None = None,
    bbox_crs: Any = 4326,
    client: Any = None,
    policy: RetryPolicy = RetryPolicy(),
    progress: Callable[[str], None] | None = None,
) -> MirrorSummary:
    """Mirror the band assets of ``items`` into ``out`` and write ``out/items.json``.

    Parameters
    ----------
    items
        Anything :func:`crop2seg_pipeline.items.read_items` accepts.
    out
        The mirror folder (created; a non-empty folder that is not a mirror is refused).
    bands
        Reflectance bands (SCL is always mirrored).
    bbox, bbox_crs
        Cut every file to the window covering this area (as local COGs).
    client
        A ``distributed.Client``: one task per file on its workers. None: files are fetched
        one after the other in this process.
    policy
        Retries of transient failures.

    Raises
    ------
    DownloadError
        Some files could not be fetched (each named); what was fetched is kept and a re-run
        fetches only the rest.
    LockHeld
        Another live download writes ``out``.
    """
    t0 = time.perf_counter()
    say = progress or log.info
    out = Path(out).expanduser().resolve()
    mirrored, jobs = plan_mirror(items, bands=bands, bbox=bbox, bbox_crs=bbox_crs)
    with writer_lock(out, LOCK_HOLDER, "mirror folder"):
        return _mirror(items, out, mirrored, jobs, client, policy, say, t0)


def _mirror(items: Any, out: Path, mirrored: list, jobs: list, client: Any, policy: RetryPolicy,
            say: Callable[[str], None], t0: float) -> MirrorSummary:
    _prepare_out(out, items if isinstance(items, (str, os.PathLike)) else f"{len(mirrored)} items")
    summary = MirrorSummary(out=str(out), items=str(out / "items.json"), n_items=len(mirrored), n_files=len(jobs))
    failures: list[str] = []
    done = 0

    def record(job: FileJob, res: dict | None, err: BaseException | None) -> None:
        nonlocal done
        done += 1
        if err is not None:
            failures.append(str(err))
            summary.statuses[job.dest] = "failed"
            say(f"[{done}/{len(jobs)}] FAILED {job.dest}: {err}")
            return
        summary.statuses[job.dest] = res["status"]
        if res["status"] == "present":
            summary.present += 1
        else:
            summary.fetched += 1
            summary.bytes_fetched += res["bytes"]
        say(f"[{done}/{len(jobs)}] {res['status']:<7} {job.dest} ({res['bytes'] / 1e6:.1f} MB)")

    if client is None:
        for job in jobs:
            try:
                record(job, fetch_file(job, str(out), policy), None)
            except Crop2SegError as e:
                record(job, None, e)
    else:
        from distributed import as_completed

        futures = {client.submit(fetch_file, job, str(out), policy, pure=False, key=f"mirror-{i}-{job.dest}"): job
                   for i, job in enumerate(jobs)}
        try:
            for fut in as_completed(futures):
                job = futures[fut]
                try:
                    record(job, fut.result(), None)
                except Crop2SegError as e:
                    record(job, None, e)
        except BaseException:
            client.cancel(list(futures))
            raise
    summary.seconds = time.perf_counter() - t0
    if failures:
        raise DownloadError(f"{len(failures)} of {len(jobs)} files could not be mirrored (the others are kept; "
                            "run again to resume):\n  " + "\n  ".join(failures[:20]))
    from .search import write_items

    write_items(mirrored, out / "items.json")
    return summary
