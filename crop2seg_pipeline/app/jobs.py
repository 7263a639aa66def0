"""Prediction requests and the jobs that run them, one output folder per request.

A :class:`PredictRequest` is everything that decides a prediction's outputs; its
:meth:`~PredictRequest.key` (a digest of the items' content, the weights' bytes, the parcels
file, the area, dates and settings) names its cache entry. :class:`JobRunner` runs each key at
most once at a time: a second tab asking for a key that is running gets the same :class:`Job`
(and its progress); a key already complete in the cache is served from there. Different keys
write into different folders, and an entry is written under its lock (``fcntl.flock``), so two
app processes sharing a cache folder never write one entry twice either.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import Crop2SegError
from .cache import AppCache, file_digest, request_key

log = logging.getLogger(__name__)

__all__ = ["PredictRequest", "Job", "JobRunner"]

_PERCENT = re.compile(r"\((\d+(?:\.\d+)?)%\)")


@dataclass(frozen=True)
class PredictRequest:
    """What the user asked for (paths as given; the key hashes their contents)."""

    items: str
    items_digest: str
    weights: str
    bbox: tuple[float, float, float, float]
    epsg: int
    start: str | None = None
    end: str | None = None
    parcels: str | None = None
    mapping: str | None = None
    id_column: str | None = "ID_DPB"
    crop_column: str = "KOD_PLODINY"
    layer: str | None = None
    overlap: int = 32
    batch_size: int = 8
    chunksize: int = 512
    device: str = "auto"
    probabilities: bool = False
    label: str = ""

    def key(self) -> str:
        """The cache key: the same for requests that must give the same outputs."""
        from .. import __version__

        w = Path(self.weights)
        parts: dict[str, Any] = {
            "version": __version__,
            "items": self.items_digest,
            "weights": [file_digest(w / "weights.pt"), file_digest(w / "model.json")],
            "bbox": [round(float(v), 3) for v in self.bbox], "epsg": self.epsg,
            "start": self.start, "end": self.end,
            "parcels": _file_stamp(self.parcels), "mapping": None if self.mapping is None else file_digest(self.mapping),
            "columns": [self.id_column, self.crop_column, self.layer],
            "overlap": self.overlap, "batch_size": self.batch_size, "chunksize": self.chunksize,
            "device": self.device, "probabilities": self.probabilities,
        }
        return request_key(parts)

    def describe(self) -> str:
        box = ", ".join(f"{v:.0f}" for v in self.bbox)
        dates = f"{self.start or '...'} .. {self.end or '...'}"
        return f"{self.label or 'bbox'} [{box}] EPSG:{self.epsg}, {dates}, weights {Path(self.weights).name}"


def _file_stamp(path: str | None) -> Any:
    if path is None:
        return None
    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        return str(path)
    return [str(p.resolve()), st.st_size, st.st_mtime_ns]


@dataclass
class Job:
    """One prediction: its state, progress lines and, when done, its folder or error message."""

    key: str
    request: PredictRequest
    folder: Path
    state: str = "queued"  # queued, running, done, failed
    lines: list[str] = field(default_factory=list)
    percent: float = 0.0
    error: str | None = None
    from_cache: bool = False
    started: float = field(default_factory=time.time)
    _listeners: list[Callable[["Job"], None]] = field(default_factory=list, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _done: threading.Event = field(default_factory=threading.Event, repr=False)

    def subscribe(self, fn: Callable[["Job"], None]) -> Callable[[], None]:
        """Call ``fn(job)`` on every change (from the job's thread); returns the unsubscribe."""
        with self._lock:
            self._listeners.append(fn)
        fn(self)

        def unsubscribe() -> None:
            with self._lock:
                if fn in self._listeners:
                    self._listeners.remove(fn)

        return unsubscribe

    def _notify(self) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for fn in listeners:
            try:
                fn(self)
            except Exception:  # noqa: BLE001 - a closed tab must not stop the job
                log.debug("job listener failed", exc_info=True)

    def say(self, line: str) -> None:
        self.lines.append(line)
        m = _PERCENT.search(line)
        if m and line.startswith("predict:"):
            self.percent = float(m.group(1))
        self._notify()

    def finish(self, state: str, error: str | None = None) -> None:
        self.state, self.error = state, error
        if state == "done":
            self.percent = 100.0
        self._done.set()
        self._notify()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    @property
    def done(self) -> bool:
        return self._done.is_set()


class JobRunner:
    """Runs prediction jobs on a Dask client, ``parallel`` at a time; one job per key.

    Parameters
    ----------
    cache
        The app's cache (entries under ``predictions/``).
    client
        A ``distributed.Client`` or a callable returning it (the client may be created after the
        runner); None runs on the default Dask scheduler.
    parallel
        How many predictions run at once (others wait, state ``queued``).
    predict_fn
        The prediction function (default :func:`crop2seg_pipeline.predict.predict`).
    """

    def __init__(self, cache: AppCache, client: Any = None, parallel: int = 1,
                 predict_fn: Callable[..., Any] | None = None):
        self.cache = cache
        self._client = client
        self._slots = threading.BoundedSemaphore(max(1, int(parallel)))
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._predict = predict_fn
        self.runs = 0  # predictions actually started by this runner (a diagnostic)

    @property
    def client(self) -> Any:
        return self._client() if callable(self._client) else self._client

    def running(self) -> list[Job]:
        with self._lock:
            return [j for j in self._jobs.values() if not j.done]

    def submit(self, request: PredictRequest) -> Job:
        """The job of ``request``'s key: the running one, a finished one from the cache, or a new one."""
        key = request.key()
        with self._lock:
            job = self._jobs.get(key)
            if job is not None and (not job.done or job.state == "done" and self.cache.is_complete("predictions", key)):
                return job
            job = Job(key, request, self.cache.path("predictions", key))
            self._jobs[key] = job
        if self.cache.is_complete("predictions", key) and not self.cache.is_locked("predictions", key):
            job.from_cache = True
            job.say("served from the cache")
            job.finish("done")
            return job
        threading.Thread(target=self._run, args=(job,), name=f"crop2seg-app-{key[:8]}", daemon=True).start()
        return job

    def _run(self, job: Job) -> None:
        kind, key = "predictions", job.key
        try:
            with self._slots, self.cache.lock(kind, key):
                if self.cache.is_complete(kind, key):  # another process did it while we waited
                    job.from_cache = True
                    job.say("served from the cache")
                    job.finish("done")
                    return
                self.cache.clear_partial(kind, key)
                job.state = "running"
                job.say("starting the prediction")
                req = job.request
                self.cache.write_marker(kind, key, status="running", request=asdict(req), description=req.describe())
                predict = self._predict
                if predict is None:
                    from ..predict import predict
                self.runs += 1
                try:
                    summary = predict(
                        req.items, req.weights, job.folder, parcels=req.parcels, mapping=req.mapping,
                        id_column=req.id_column, crop_column=req.crop_column, layer=req.layer, bbox=req.bbox,
                        bbox_crs=f"EPSG:{req.epsg}", start=req.start, end=req.end, overlap=req.overlap,
                        batch_size=req.batch_size, device=req.device, chunksize=req.chunksize,
                        probabilities=req.probabilities, client=self.client, progress=job.say,
                    )
                except BaseException:
                    self.cache.clear_partial(kind, key)
                    raise
                self.cache.write_marker(kind, key, status="complete", seconds=getattr(summary, "seconds", None))
            job.finish("done")
        except Crop2SegError as e:
            job.finish("failed", str(e))
        except Exception as e:  # noqa: BLE001 - shown in the page as a message, logged in full here
            log.error("prediction %s failed:\n%s", key, traceback.format_exc())
            job.finish("failed", f"the prediction failed ({type(e).__name__}: {e}); the app's log has the details")

