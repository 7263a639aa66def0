"""Where inputs and outputs live: a local path or an object-store URL, behind one set of calls.

Every place that reads or writes a store, a marker, a lock, an items file or an output folder
passes its location through here, so ``s3://bucket/store.zarr`` and ``/data/store.zarr`` take the
same code path above this module.

- A *URL* is ``scheme://...`` with a scheme other than ``file`` (``s3://``, ``gs://``, ``az://``,
  ``https://``...); anything else is a local path. URLs are opened with fsspec (``s3fs`` for
  ``s3://``); Zarr stores with zarr's :class:`~zarr.storage.FsspecStore`.
- Credentials and endpoints come from the usual environment / config of each filesystem
  (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_PROFILE``,
  ``~/.aws/credentials``, ``AWS_ENDPOINT_URL`` for an S3-compatible server, ...), read by the
  process that opens the location (each Dask worker reads its own). They are never passed
  around, written into a store, an item or a graph; :func:`redact` strips them from text.
- GDAL reads ``s3://`` asset hrefs as ``/vsis3/`` paths (see :mod:`crop2seg_pipeline.access`);
  :func:`gdal_s3_options` translates the boto-style ``AWS_ENDPOINT_URL`` into GDAL's
  ``AWS_S3_ENDPOINT`` / ``AWS_HTTPS`` / ``AWS_VIRTUAL_HOSTING`` (explicit GDAL settings win).
- Errors of the object store (missing bucket, refused credentials, no permission) become
  :class:`StorageError` naming the URL and what to fix.

Writes are whole objects: :func:`write_bytes` is atomic (a temporary file renamed locally, one
``PUT`` on an object store: readers see all of it or nothing); :func:`create_exclusive` writes only
if nothing is there (``O_EXCL``/hard link locally, a conditional ``PUT`` with
``If-None-Match: *`` on S3).
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import re
import shutil
import tempfile
import threading
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from .errors import Crop2SegError

__all__ = [
    "StorageError", "is_url", "protocol", "join", "parent", "basename", "filesystem", "zarr_store", "exists",
    "isdir", "listdir", "read_bytes", "write_bytes", "create_exclusive", "delete", "rmtree", "upload",
    "download", "local_copy", "file_version", "absolute", "cached_copy", "gdal_s3_options", "redact", "storage_errors", "check_reachable",
]

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.\-]*)://")


class StorageError(Crop2SegError):
    """An object-store location cannot be read or written (bucket, credentials, permission)."""


# ----------------------------------------------------------------------------- names


def is_url(location: Any) -> bool:
    """Whether ``location`` is an object-store / remote URL (not a local path, not ``file://``)."""
    if not isinstance(location, str):
        return False
    m = _SCHEME.match(location)
    return bool(m) and m.group(1).lower() != "file"


def protocol(location: str) -> str:
    """The URL's scheme (``"s3"``...), ``"file"`` for a local path."""
    m = _SCHEME.match(location) if isinstance(location, str) else None
    return m.group(1).lower() if m else "file"


def _local(location: Any) -> str:
    s = os.fspath(location)
    return s[len("file://"):] if isinstance(s, str) and s.startswith("file://") else s


def join(location: Any, *names: str) -> str:
    """``location/name/...`` (a URL stays a URL, a path a path)."""
    if is_url(location):
        return "/".join([location.rstrip("/"), *(n.strip("/") for n in names)])
    return os.path.join(_local(location), *names)


def parent(location: Any) -> str:
    """The folder holding ``location``."""
    if is_url(location):
        head, _, _ = location.rstrip("/").rpartition("/")
        return head if "://" in head and not head.endswith(":/") else location
    return str(Path(_local(location)).absolute().parent)


def basename(location: Any) -> str:
    return location.rstrip("/").rpartition("/")[2] if is_url(location) else Path(_local(location)).name


# ----------------------------------------------------------------------------- filesystems

#: filesystems of this process, per (protocol, credentials/endpoint environment): a changed
#: environment (another key, another endpoint) gets a new filesystem, never a stale one
_FS: dict[tuple, Any] = {}
_FS_LOCK = threading.Lock()
_ENV_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL",
             "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION", "GOOGLE_APPLICATION_CREDENTIALS",
             "AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_CONNECTION_STRING")


def _env_key() -> str:
    return hashlib.sha256("\0".join(os.environ.get(k, "") for k in _ENV_KEYS).encode()).hexdigest()


def _fs_options(proto: str, asynchronous: bool = False) -> dict:
    opts: dict[str, Any] = {"skip_instance_cache": True}
    if proto in ("s3", "s3a", "gs", "gcs"):
        # other processes (workers) write markers and chunks: never answer from an old listing
        opts["use_listings_cache"] = False
    if asynchronous:
        opts["asynchronous"] = True
    return opts


def filesystem(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) of ``url``; one filesystem per protocol and environment."""
    import fsspec

    proto = protocol(url)
    key = (proto, _env_key())
    with _FS_LOCK:
        fs = _FS.get(key)
        if fs is None:
            try:
                cls = fsspec.get_filesystem_class(proto)
            except (ImportError, ValueError) as e:
                raise StorageError(f"cannot open {redact(url)}: {e}") from None
            fs = _FS[key] = cls(**_fs_options(proto))
    return fs, fs._strip_protocol(url)


def zarr_store(location: Any, read_only: bool = False, cache: str | os.PathLike | None = None) -> Any:
    """What ``zarr.open_group`` / ``xarray.open_zarr`` / ``to_zarr`` take for ``location``: the
    local path itself, or an :class:`~zarr.storage.FsspecStore` on the URL.

    ``cache`` (a local folder, URLs read-only): every object read is kept there (fsspec's
    ``simplecache``) and later reads of it come from the local copy."""
    if not is_url(location):
        return _local(location)
    key = (location, read_only, None if cache is None else str(cache), _env_key())
    with _FS_LOCK:
        store = _STORES.get(key)
        if store is None:
            store = _STORES[key] = _new_zarr_store(location, read_only, cache)
            if len(_STORES) == 1:
                atexit.register(_close_stores)
    return store


#: zarr stores of this process (one client session per store URL, reused by every task)
_STORES: dict[tuple, Any] = {}


def _close_stores() -> None:
    """Close the object-store sessions of this process's zarr stores (at exit: no 'unclosed
    client session' warnings), on zarr's event loop, which is still running then."""
    from zarr.core.sync import sync

    for store in list(_STORES.values()):
        fs = getattr(store.fs, "fs", store.fs)  # the wrapped filesystem of a cached store
        creator = getattr(fs, "_s3creator", None)
        if creator is not None:
            try:
                sync(creator.__aexit__(None, None, None), timeout=5)
            except Exception:  # noqa: BLE001 (best effort at exit)
                pass
    _STORES.clear()


def _new_zarr_store(location: str, read_only: bool, cache: str | os.PathLike | None) -> Any:
    from zarr.storage import FsspecStore

    proto = protocol(location)
    if cache is not None and read_only:
        import fsspec
        from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper

        Path(cache).mkdir(parents=True, exist_ok=True)
        inner = fsspec.filesystem(proto, **_fs_options(proto))
        cached = fsspec.filesystem("simplecache", fs=inner, cache_storage=str(cache), skip_instance_cache=True)
        fs = AsyncFileSystemWrapper(cached, asynchronous=True)
        return FsspecStore(fs, path=inner._strip_protocol(location), read_only=True)
    return FsspecStore.from_url(location, storage_options=_fs_options(proto), read_only=read_only)


# ----------------------------------------------------------------------------- errors


def _describe(url: str, e: BaseException, action: str) -> str:
    text = f"{type(e).__name__}: {e}"
    bucket = urllib.parse.urlparse(url).netloc if is_url(url) else ""
    where = redact(url)
    if re.search(r"InvalidAccessKeyId|SignatureDoesNotMatch|InvalidToken|ExpiredToken|NoCredentials|"
                 r"Unable to locate credentials|InvalidClientTokenId|AuthorizationHeaderMalformed|"
                 r"Access Key Id you provided does not exist|signature we calculated does not match", text):
        return (f"the object store refused the credentials to {action} {where}: check AWS_ACCESS_KEY_ID / "
                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) and AWS_ENDPOINT_URL, in the workers' environment too")
    if re.search(r"NoSuchBucket|bucket does not exist|The specified bucket", text):
        return f"the bucket {bucket!r} of {where} does not exist: create it or fix the URL"
    if isinstance(e, PermissionError) or re.search(r"AccessDenied|Forbidden|403", text):
        return (f"no permission to {action} {where} ({redact(str(e)) or 'access denied'}): grant these credentials "
                f"{'write' if action == 'write' else 'read'} access to the bucket, or choose another location")
    if isinstance(e, FileNotFoundError):
        return f"{where} does not exist: check the URL"
    return f"cannot {action} {where}: {redact(text)}"


@contextlib.contextmanager
def storage_errors(location: Any, action: str = "read") -> Iterator[None]:
    """Object-store errors inside the block become :class:`StorageError` naming ``location``.

    Local paths are left to the callers' own handling (their errors pass unchanged)."""
    if not is_url(location):
        yield
        return
    try:
        yield
    except Crop2SegError:
        raise
    except (OSError, ValueError, RuntimeError) as e:
        raise StorageError(_describe(str(location), e, action)) from None
    except Exception as e:  # botocore's ClientError / NoCredentialsError and their kin
        if type(e).__module__.split(".")[0] in ("botocore", "aiobotocore", "s3fs", "gcsfs", "adlfs", "aiohttp"):
            raise StorageError(_describe(str(location), e, action)) from None
        raise


def check_reachable(location: Any, write: bool = False) -> None:
    """Fail early, before anything starts, when ``location``'s bucket is missing or its
    credentials are refused (``write``: also when they may not write there: a probe object is
    created and removed). Nothing for a local path."""
    if not is_url(location):
        return
    fs, path = filesystem(location)
    bucket = path.split("/", 1)[0]
    with storage_errors(location, "write" if write else "read"):
        try:
            fs.ls(bucket, detail=False)  # credentials refused -> PermissionError
        except FileNotFoundError:
            raise FileNotFoundError(f"NoSuchBucket: {bucket}") from None
        if write:
            probe = f"{parent(location)}/.crop2seg-probe-{uuid.uuid4().hex[:12]}"
            fs.pipe_file(fs._strip_protocol(probe), b"")
            fs.rm_file(fs._strip_protocol(probe))


# ----------------------------------------------------------------------------- file operations


def exists(location: Any) -> bool:
    if not is_url(location):
        return os.path.exists(_local(location))
    fs, path = filesystem(location)
    with storage_errors(location):
        return bool(fs.exists(path))


def isdir(location: Any) -> bool:
    """A folder (a local directory; a URL prefix with something under it)."""
    if not is_url(location):
        return os.path.isdir(_local(location))
    fs, path = filesystem(location)
    with storage_errors(location):
        return bool(fs.isdir(path))


def listdir(location: Any) -> dict[str, bool]:
    """The entries of a folder: name -> is a folder ({} when there is none)."""
    if not is_url(location):
        p = Path(_local(location))
        return {e.name: e.is_dir() for e in p.iterdir()} if p.is_dir() else {}
    fs, path = filesystem(location)
    with storage_errors(location):
        try:
            entries = fs.ls(path, detail=True)
        except FileNotFoundError:
            return {}
    out = {}
    for e in entries:
        name = e["name"].rstrip("/").rpartition("/")[2]
        if name and e["name"].rstrip("/") != path.rstrip("/"):
            out[name] = e.get("type") == "directory"
    return out


def read_bytes(location: Any) -> bytes | None:
    """The content of a file, None when there is none."""
    if not is_url(location):
        try:
            return Path(_local(location)).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
    fs, path = filesystem(location)
    with storage_errors(location):
        try:
            return fs.cat_file(path)
        except FileNotFoundError:
            return None


def write_local_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], Any], *, fsync: bool = False) -> None:
    """Write the local file ``path`` through ``write(file_object)``, atomically.

    The content goes to a temporary file beside ``path`` (same folder, so the same filesystem),
    which then replaces ``path`` in one rename: readers see the old file or all of the new one,
    and an interrupted write leaves no partial file (the temporary one is removed). ``fsync``
    flushes the data to disk before the rename (for files that must survive a crash, such as
    training checkpoints).
    """
    p = Path(path)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(location: Any, data: bytes) -> None:
    """Write a whole file atomically (readers see the old content, or all of the new)."""
    if not is_url(location):
        p = Path(_local(location))
        p.parent.mkdir(parents=True, exist_ok=True)
        write_local_atomic(p, lambda f: f.write(data))
        return
    fs, path = filesystem(location)
    with storage_errors(location, "write"):
        fs.pipe_file(path, data)  # one PUT: atomic on an object store


def create_exclusive(location: str, data: bytes) -> bool:
    """Write ``data`` at the URL ``location`` unless an object is there; False if one was.

    S3 (and GCS): one conditional ``PUT`` (``If-None-Match: *``), atomic on the server: of two
    writers started together exactly one succeeds. Stores without conditional writes: a
    check then a write (two writers racing within one round trip could both succeed)."""
    fs, path = filesystem(location)
    with storage_errors(location, "write"):
        try:
            fs.pipe_file(path, data, mode="create")
            return True
        except FileExistsError:
            return False
        except (TypeError, NotImplementedError):
            pass
        except OSError as e:
            if re.search(r"PreconditionFailed|412|At least one of the pre-conditions", str(e)):
                return False
            raise
        if fs.exists(path):
            return False
        fs.pipe_file(path, data)
        return True


def delete(location: Any) -> None:
    """Remove a file (nothing if it is gone)."""
    if not is_url(location):
        Path(_local(location)).unlink(missing_ok=True)
        return
    fs, path = filesystem(location)
    with storage_errors(location, "write"):
        try:
            fs.rm_file(path)
        except FileNotFoundError:
            pass


def rmtree(location: Any) -> None:
    """Remove a folder and everything in it (a file: just it)."""
    if not is_url(location):
        p = Path(_local(location))
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        return
    fs, path = filesystem(location)
    with storage_errors(location, "write"):
        try:
            fs.rm(path, recursive=True)
        except FileNotFoundError:
            pass


def upload(local: str | os.PathLike, url: str) -> None:
    """Copy a local file (or folder, recursively) to ``url``, streamed (never held in memory)."""
    fs, path = filesystem(url)
    with storage_errors(url, "write"):
        if os.path.isdir(local):
            fs.put(str(local).rstrip("/") + "/", path.rstrip("/") + "/", recursive=True)
        else:
            fs.put_file(str(local), path)


def download(url: str, local: str | os.PathLike) -> None:
    """Copy the file at ``url`` to a local path (through a temporary file: never half there)."""
    fs, path = filesystem(url)
    local = Path(local)
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(f".{local.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        with storage_errors(url):
            fs.get_file(path, str(tmp))
        os.replace(tmp, local)
    finally:
        tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- GDAL and redaction


def gdal_s3_options(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """GDAL config options for ``/vsis3/`` from a boto-style endpoint (``AWS_ENDPOINT_URL_S3`` or
    ``AWS_ENDPOINT_URL``): ``AWS_S3_ENDPOINT=host:port``, ``AWS_HTTPS=NO`` for ``http://``, and
    path-style addressing (``AWS_VIRTUAL_HOSTING=FALSE``). GDAL's own settings in the environment
    win. No secret is among them (GDAL reads the keys from the environment itself)."""
    env = os.environ if environ is None else environ
    url = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if not url or env.get("AWS_S3_ENDPOINT"):
        return {}
    u = urllib.parse.urlparse(url if "://" in url else f"https://{url}")
    opts = {"AWS_S3_ENDPOINT": u.netloc + u.path.rstrip("/"), "AWS_HTTPS": "NO" if u.scheme == "http" else "YES",
            "AWS_VIRTUAL_HOSTING": "FALSE"}
    return {k: env.get(k, v) for k, v in opts.items()}


_USERINFO = re.compile(r"([a-zA-Z][a-zA-Z0-9+.\-]*://)[^/\s@'\"]+@")
_QUERY = re.compile(r"([a-zA-Z][a-zA-Z0-9+.\-]*://[^\s'\"?]+)\?[^\s'\"]*")
_SECRET_KEYS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AZURE_STORAGE_KEY", "AZURE_STORAGE_SAS_TOKEN")


def redact(text: str) -> str:
    """``text`` without credentials: a URL's ``user:password@`` and query string (where SAS tokens
    live), and the value of any secret of the environment that appears in it."""
    text = _USERINFO.sub(r"\1<redacted>@", str(text))
    text = _QUERY.sub(lambda m: m.group(1) + "?<redacted>", text)
    for k in _SECRET_KEYS:
        v = os.environ.get(k)
        if v and len(v) >= 8:
            text = text.replace(v, "<redacted>")
    return text


def file_version(url: str) -> tuple[Any, Any]:
    """(size, version tag: ETag or modification time) of the file at ``url``; (None, None) if absent."""
    fs, path = filesystem(url)
    with storage_errors(url):
        try:
            info = fs.info(path)
        except FileNotFoundError:
            return None, None
    return info.get("size"), str(info.get("ETag") or info.get("LastModified") or info.get("mtime") or "")


@contextlib.contextmanager
def local_copy(url: str) -> Iterator[str]:
    """A local copy of the file at ``url`` for the block (in a temporary folder, removed after),
    under the same file name (readers that go by the extension keep working)."""
    with tempfile.TemporaryDirectory(prefix="crop2seg-copy-") as tmp:
        local = os.path.join(tmp, basename(url) or "file")
        download(url, local)
        yield local


def absolute(location: Any) -> str:
    """A URL as it is, a local path made absolute (to compare or record locations)."""
    return str(location) if is_url(location) else str(Path(_local(location)).expanduser().resolve())


def cached_copy(url: str, cache_dir: str | os.PathLike | None = None) -> str:
    """A local copy of the folder (or file) at ``url``, downloaded once: later calls reuse it
    while the objects are unchanged (same names, sizes and ETags). For weights folders.

    The copy lives under ``cache_dir`` (default ``$XDG_CACHE_HOME/crop2seg`` or
    ``~/.cache/crop2seg``), in a folder named after a hash of the URL and the objects' versions;
    it appears there whole (downloaded beside it, then renamed), never half."""
    fs, path = filesystem(url)
    with storage_errors(url):
        if not fs.exists(path):
            raise FileNotFoundError(f"{redact(url)} does not exist")
        if fs.isdir(path):
            found = fs.find(path, detail=True)
            names = {k[len(path.rstrip("/")) + 1:]: v for k, v in found.items()}
        else:
            info = fs.info(path)
            names = {basename(url): info}
    versions = sorted((n, v.get("size"), str(v.get("ETag") or v.get("mtime") or "")) for n, v in names.items())
    key = hashlib.sha256(repr((redact(url), versions)).encode()).hexdigest()[:24]
    root = Path(cache_dir) if cache_dir else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "crop2seg"
    target = root / "downloads" / f"{basename(url) or 'object'}-{key}"
    if target.is_dir():
        return str(target)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        tmp.mkdir(parents=True)
        for name in names:
            download(url if len(names) == 1 and not fs.isdir(path) else join(url, name), tmp / name)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished the same copy first
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target)
