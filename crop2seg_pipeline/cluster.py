"""Cluster specs -> a ``distributed.Client``.

``--cluster`` takes

* ``local`` (the default): a :class:`distributed.LocalCluster` sized to the machine;
* a scheduler address (``tcp://host:port`` or ``tls://host:port``) of a running scheduler;
* the name of a shipped spec (``local``, ``slurm``, ``slurm-gpu``, ``pbs``, ``existing``) or the
  path of a YAML spec (see ``cluster/*.yaml``, where every field is documented).

Spec types are ``local``, ``address``, ``slurm`` and ``pbs`` (the last two need dask-jobqueue:
``pip install crop2seg-pipeline[hpc]``). Specs are validated before anything starts; every error
names the file and the key. Strings that dask-jobqueue writes verbatim into job scripts (queue,
account, job name, walltime, memory, directives, worker arguments, paths) are checked against a
conservative character set so that a spec cannot smuggle shell into a job script;
``job_script_prologue`` is the one field where a spec writes shell on purpose.

:func:`connect` is a context manager yielding a client and closing what it started (the local
cluster, or the jobqueue scheduler and its jobs). :func:`describe` is the dry run: what would start,
with the exact job script for SLURM/PBS, without starting or submitting anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import logging
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from .errors import Crop2SegError

log = logging.getLogger(__name__)

#: Spec types and the keys each accepts (besides ``type``).
TYPES = ("local", "address", "slurm", "pbs")

#: Where the dashboard listens unless a spec or the caller says otherwise: loopback only.
DEFAULT_DASHBOARD = "127.0.0.1:8787"

#: Environment of the worker processes of the local clusters this package starts (added to the
#: nanny's ``pre-spawn-environ``). ``MALLOC_ARENA_MAX=1``: task threads allocate from glibc's main
#: arena, whose size is unbounded, so the mmap threshold that model processes raise
#: (:mod:`crop2seg_pipeline.malloc`) applies to them; in a per-thread arena (64 MB heaps) every
#: larger tensor is a fresh mmap whatever the threshold. Measured: the model forward in a
#: non-main thread 23 % faster. SLURM/PBS job scripts export it before the spec's
#: ``job_script_prologue``; on an existing scheduler, export it where the workers start.
WORKER_ENV = {"MALLOC_ARENA_MAX": "1"}


@contextlib.contextmanager
def worker_environment() -> Iterator[None]:
    """Add :data:`WORKER_ENV` to the environment of worker processes started inside the block."""
    import dask

    env = dict(dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {})
    with dask.config.set({"distributed.nanny.pre-spawn-environ": {**env, **WORKER_ENV}}):
        yield

_LOCAL_KEYS = {"n_workers", "threads_per_worker", "memory_limit", "processes", "dashboard_address",
               "scheduler_port", "local_directory"}
_ADDRESS_KEYS = {"address", "security", "timeout"}
_JOBQUEUE_KEYS = {"cores", "processes", "memory", "walltime", "queue", "account", "job_name",
                  "local_directory", "log_directory", "worker_extra_args", "job_script_prologue",
                  "job_extra_directives", "job_directives_skip", "interface", "python", "shebang",
                  "death_timeout", "dashboard_address", "security", "adapt", "scale",
                  "wait_for_workers", "wait_timeout"}
KEYS = {
    "local": _LOCAL_KEYS,
    "address": _ADDRESS_KEYS,
    "slurm": _JOBQUEUE_KEYS | {"job_cpu", "job_mem"},
    "pbs": _JOBQUEUE_KEYS | {"resource_spec"},
}
_SECURITY_KEYS = {"tls_ca_file", "tls_client_cert", "tls_client_key", "tls_scheduler_cert",
                  "tls_scheduler_key", "tls_worker_cert", "tls_worker_key", "require_encryption"}

# One token of a job-script line (an #SBATCH/#PBS directive or a dask-worker argument): no
# whitespace, quotes, newlines or shell metacharacters ($ ` ; & | < > ( ) * ? ! \ ' " # { }).
_TOKEN = re.compile(r"[A-Za-z0-9_.,:=+/@%-]+")
# Queue, account, job name, network interface.
_NAME = re.compile(r"[A-Za-z0-9_.+@-]+")
# A filesystem path; may start with ~. _ENV_PATH (local_directory only) may start with one
# environment variable ($TMPDIR/..., ${SCRATCH}/..., ${TMPDIR:-/tmp}), which the job's shell
# expands on the compute node.
_PATH = re.compile(r"~?[A-Za-z0-9_.,:=+/@%-]*")
_ENV_PATH = re.compile(r"(\$[A-Za-z_][A-Za-z0-9_]*|\$\{[A-Za-z_][A-Za-z0-9_]*(:-[A-Za-z0-9_./-]*)?\}|~)?[A-Za-z0-9_.,:=+/@%-]*")
_BYTES = re.compile(r"\d+(\.\d+)?\s?[A-Za-z]{0,3}")
# An interpreter path or /usr/bin/env NAME, with at most one flag (-l): nothing that runs a command.
_SHEBANG = re.compile(r"#!(/usr/bin/env [A-Za-z0-9_.-]+|/[A-Za-z0-9_./-]+)( -[A-Za-z]+)?")
_SLURM_TIME = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?")


class ClusterSpecError(Crop2SegError):
    """A cluster spec is missing, malformed, or has a bad key or value."""


# ----------------------------------------------------------------------------- finding specs


def spec_dirs() -> list[Path]:
    """Folders searched for a spec given by name, first match wins.

    ``$CROP2SEG_CLUSTER_DIR`` (``os.pathsep``-separated), ``./cluster``, the ``cluster/`` folder of
    the repository this package runs from (a checkout or an editable install), the package's
    ``data/cluster`` and ``<prefix>/share/crop2seg-pipeline/cluster`` (installed copies).
    """
    dirs = [Path(p) for p in os.environ.get("CROP2SEG_CLUSTER_DIR", "").split(os.pathsep) if p]
    dirs.append(Path.cwd() / "cluster")
    pkg = Path(__file__).resolve().parent
    root = pkg.parent
    # only a real checkout of this project, never an arbitrary site-packages/cluster folder
    if (root / "setup.cfg").is_file() and "crop2seg" in (root / "setup.cfg").read_text(errors="replace"):
        dirs.append(root / "cluster")
    dirs += [pkg / "data" / "cluster", Path(sys.prefix) / "share" / "crop2seg-pipeline" / "cluster"]
    out: list[Path] = []
    for d in dirs:
        if d not in out:
            out.append(d)
    return out


def available_specs() -> dict[str, Path]:
    """Spec name -> file, over :func:`spec_dirs` (earlier folders shadow later ones)."""
    found: dict[str, Path] = {}
    for d in spec_dirs():
        if d.is_dir():
            for f in sorted(d.glob("*.yaml")):
                found.setdefault(f.stem, f)
    return found


def find_spec(cluster: str) -> Path:
    """The spec file for a name (``slurm``) or a path (``my/spec.yaml``)."""
    path = Path(cluster).expanduser()
    if path.is_file():
        return path
    looks_like_path = os.sep in cluster or "/" in cluster or path.suffix in (".yaml", ".yml")
    if looks_like_path:
        raise ClusterSpecError(f"cluster spec file {cluster} does not exist")
    for d in spec_dirs():
        for cand in (d / f"{cluster}.yaml", d / f"{cluster}.yml"):
            if cand.is_file():
                return cand
    names = ", ".join(sorted(available_specs())) or "none found"
    raise ClusterSpecError(
        f"--cluster {cluster!r} is neither a scheduler address (tcp://HOST:PORT, tls://HOST:PORT), "
        f"a YAML spec file, nor the name of a spec (available: {names}; searched "
        f"{', '.join(str(d) for d in spec_dirs())})"
    )


def resolve_spec(cluster: str | None) -> dict[str, Any]:
    """Turn a ``--cluster`` value into a validated spec dict (``type`` plus that type's keys).

    The dict also carries ``_source``: the spec file, or where the spec came from.
    """
    if cluster in (None, "", "local") and "local" not in available_specs():
        return {"type": "local", "_source": "built-in local spec"}
    cluster = "local" if cluster in (None, "") else str(cluster)
    if "://" in cluster:
        return validate_spec({"type": "address", "address": cluster}, source=f"--cluster {cluster}")
    path = find_spec(cluster)
    return load_spec(path)


def load_spec(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate one YAML spec file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ClusterSpecError(f"cannot read cluster spec {path}: {e}") from e
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ClusterSpecError(f"cluster spec {path} is not valid YAML: {e}") from e
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ClusterSpecError(f"cluster spec {path} must be a mapping of keys to values, not {type(raw).__name__}")
    return validate_spec(raw, source=str(path), base=path.parent)


# ----------------------------------------------------------------------------- validation


def _bad(source: str, key: str, msg: str) -> ClusterSpecError:
    return ClusterSpecError(f"cluster spec {source}: {key}: {msg}")


def _one_line(v: Any, source: str, key: str) -> str:
    if not isinstance(v, str):
        raise _bad(source, key, f"expected a string, got {type(v).__name__} {v!r}")
    if "\n" in v or "\r" in v or "\x00" in v:
        raise _bad(source, key, f"must be a single line, got {v!r}")
    return v


def _match(rx: re.Pattern, v: Any, source: str, key: str, what: str) -> str:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        v = str(v)
    v = _one_line(v, source, key)
    if not rx.fullmatch(v):
        raise _bad(source, key, f"{v!r} is not a valid {what} (allowed characters: letters, digits and "
                                f"{_allowed(rx)}; no spaces, quotes or shell metacharacters)")
    return v


def _allowed(rx: re.Pattern) -> str:
    return {_TOKEN: "_ . , : = + / @ % -", _NAME: "_ . + @ -", _PATH: "_ . , : = + / @ % - and a leading ~",
            _ENV_PATH: "_ . , : = + / @ % - and a leading ~, $VAR, ${VAR} or ${VAR:-default}"}.get(rx, "a restricted set")


def _int(v: Any, source: str, key: str, lo: int = 0, hi: int | None = None, none_ok: bool = False) -> int | None:
    if v is None and none_ok:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise _bad(source, key, f"expected an integer, got {v!r}")
    if v < lo or (hi is not None and v > hi):
        raise _bad(source, key, f"{v} is out of range ({lo}..{hi if hi is not None else ''})")
    return v


def _bool(v: Any, source: str, key: str) -> bool:
    if not isinstance(v, bool):
        raise _bad(source, key, f"expected true or false, got {v!r}")
    return v


def _bytes(v: Any, source: str, key: str, none_ok: bool = True) -> int | str | None:
    from dask.utils import parse_bytes

    if v is None and none_ok:
        return None
    if isinstance(v, int) and not isinstance(v, bool):
        n = v
    else:
        v = _one_line(v, source, key).strip()
        if not _BYTES.fullmatch(v):
            raise _bad(source, key, f"{v!r} is not a memory size like '4GB' or '3.5GiB'")
        try:
            n = parse_bytes(v)
        except ValueError as e:
            raise _bad(source, key, f"{v!r} is not a memory size like '4GB': {e}") from e
    if n <= 0:
        raise _bad(source, key, f"must be positive, got {v!r}")
    return v


def _duration(v: Any, source: str, key: str) -> str | float:
    from dask.utils import parse_timedelta

    if isinstance(v, (int, float)) and not isinstance(v, bool):
        if v <= 0:
            raise _bad(source, key, f"must be positive, got {v!r}")
        return v
    v = _match(re.compile(r"\d+(\.\d+)?\s?[a-z]*"), v, source, key, "duration like '30s', '55m' or '2h'")
    try:
        parse_timedelta(v)
    except (ValueError, KeyError) as e:
        raise _bad(source, key, f"{v!r} is not a duration like '30s', '55m' or '2h'") from e
    return v


def walltime_seconds(walltime: str, kind: str = "slurm") -> int:
    """Seconds of a SLURM (``minutes``, ``MM:SS``, ``HH:MM:SS``, ``D-HH[:MM[:SS]]``) or PBS (``HH:MM:SS``) walltime."""
    m = _SLURM_TIME.fullmatch(walltime)
    if not m:
        raise ValueError(walltime)
    days, a, b, c = m.groups()
    if kind == "pbs":
        if days is not None:
            raise ValueError(walltime)
        parts = [int(x) for x in (a, b, c) if x is not None]
        parts = [0] * (3 - len(parts)) + parts  # [[HH:]MM:]SS
        return parts[0] * 3600 + parts[1] * 60 + parts[2]
    if days is not None:  # D-HH[:MM[:SS]]
        return int(days) * 86400 + int(a) * 3600 + int(b or 0) * 60 + int(c or 0)
    if c is not None:  # HH:MM:SS
        return int(a) * 3600 + int(b) * 60 + int(c)
    if b is not None:  # MM:SS
        return int(a) * 60 + int(b)
    return int(a) * 60  # minutes


def _security(v: Any, source: str, base: Path | None, jobqueue: bool) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise _bad(source, "security", f"expected a mapping of TLS options, got {v!r}")
    out: dict[str, Any] = {}
    for k, x in v.items():
        key = f"security.{k}"
        if k not in _SECURITY_KEYS:
            raise _bad(source, key, _unknown(k, _SECURITY_KEYS))
        if k == "require_encryption":
            out[k] = _bool(x, source, key)
            continue
        # paths end up on the dask-worker command line of job scripts: same rules as other tokens
        p = Path(_match(_PATH, x, source, key, "file path")).expanduser()
        if base is not None and not p.is_absolute():
            p = base / p
        if not p.is_file():
            raise _bad(source, key, f"file {p} does not exist")
        out[k] = str(p)
    if not any(k.startswith("tls_") for k in out):
        raise _bad(source, "security", "give at least tls_ca_file, tls_client_cert and tls_client_key")
    if jobqueue:
        # one certificate for every role unless the spec gives role-specific ones
        for role in ("scheduler", "worker"):
            for part in ("cert", "key"):
                if f"tls_client_{part}" in out:
                    out.setdefault(f"tls_{role}_{part}", out[f"tls_client_{part}"])
    return out


def _unknown(key: Any, allowed: set[str]) -> str:
    close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown key{hint}; allowed keys: {', '.join(sorted(allowed))}"


def _str_list(v: Any, source: str, key: str) -> list:
    if v is None:
        return []
    if not isinstance(v, list):
        raise _bad(source, key, f"expected a list, got {v!r}")
    return v


def validate_spec(raw: dict[str, Any], source: str = "<spec>", base: Path | None = None) -> dict[str, Any]:
    """Check a spec dict; return a normalised copy with ``_source``. Raises :class:`ClusterSpecError`."""
    kind = raw.get("type")
    if kind is None:
        raise _bad(source, "type", f"missing; one of {', '.join(TYPES)}")
    if kind not in TYPES:
        raise _bad(source, "type", f"unknown cluster type {kind!r}; one of {', '.join(TYPES)}")
    allowed = KEYS[kind]
    for k in raw:
        if k != "type" and k not in allowed:
            raise _bad(source, str(k), f"not a {kind} spec key: " + _unknown(k, allowed))
    spec: dict[str, Any] = {"type": kind, "_source": source}
    get = raw.get

    if kind == "local":
        spec["n_workers"] = _int(get("n_workers"), source, "n_workers", lo=1, none_ok=True)
        spec["threads_per_worker"] = _int(get("threads_per_worker"), source, "threads_per_worker", lo=1, none_ok=True)
        spec["memory_limit"] = _bytes(get("memory_limit"), source, "memory_limit")
        spec["processes"] = _bool(get("processes", True), source, "processes")
        spec["scheduler_port"] = _int(get("scheduler_port", 0), source, "scheduler_port", lo=0, hi=65535)
        if get("local_directory") is not None:
            spec["local_directory"] = _match(_PATH, get("local_directory"), source, "local_directory", "path")
    elif kind == "address":
        addr = _one_line(get("address"), source, "address") if get("address") is not None else None
        if not addr:
            raise _bad(source, "address", "missing; the scheduler address, e.g. tcp://scheduler:8786")
        if not re.fullmatch(r"(tcp|tls)://[A-Za-z0-9_.\-\[\]:]+:\d+", addr):
            raise _bad(source, "address", f"{addr!r} is not a scheduler address like tcp://HOST:PORT or tls://HOST:PORT")
        spec["address"] = addr
        spec["timeout"] = _duration(get("timeout", "30s"), source, "timeout")
        if get("security") is not None:
            spec["security"] = _security(get("security"), source, base, jobqueue=False)
    else:
        _validate_jobqueue(raw, spec, source, base)

    if "dashboard_address" in allowed and get("dashboard_address") is not None:
        spec["dashboard_address"] = _match(re.compile(r"[A-Za-z0-9_.\-\[\]]*:\d+"), get("dashboard_address"),
                                           source, "dashboard_address", "address like 127.0.0.1:8787 or :8787")
    return spec


def _validate_jobqueue(raw: dict[str, Any], spec: dict[str, Any], source: str, base: Path | None) -> None:
    kind, get = spec["type"], raw.get
    for req in ("cores", "memory"):
        if get(req) is None:
            raise _bad(source, req, f"missing; a {kind} spec needs cores and memory per job")
    cores = spec["cores"] = _int(get("cores"), source, "cores", lo=1)
    procs = spec["processes"] = _int(get("processes", 1), source, "processes", lo=1)
    if procs > cores:
        raise _bad(source, "processes", f"{procs} worker processes per job need at least as many cores (cores: {cores})")
    spec["memory"] = _bytes(get("memory"), source, "memory", none_ok=False)

    if get("walltime") is not None:
        wt = _match(re.compile(r"[0-9:-]+"), get("walltime"), source, "walltime", "walltime")
        try:
            walltime_seconds(wt, kind)
        except ValueError:
            form = "HH:MM:SS" if kind == "pbs" else "minutes, HH:MM:SS or D-HH:MM:SS"
            raise _bad(source, "walltime", f"{wt!r} is not a {kind} walltime ({form})") from None
        spec["walltime"] = wt
    for key in ("queue", "account", "job_name"):
        if get(key) is not None:
            spec[key] = _match(_NAME, get(key), source, key, key.replace("_", " "))
    if get("interface") is not None:
        spec["interface"] = _match(_NAME, get("interface"), source, "interface", "network interface name")
    if get("local_directory") is not None:
        spec["local_directory"] = _match(_ENV_PATH, get("local_directory"), source, "local_directory", "path")
    if get("log_directory") is not None:
        spec["log_directory"] = os.path.expanduser(_match(_PATH, get("log_directory"), source, "log_directory", "path"))
    if get("python") is not None:
        spec["python"] = _match(_PATH, get("python"), source, "python", "path to a Python interpreter")
    if get("shebang") is not None:
        spec["shebang"] = _match(_SHEBANG, get("shebang"), source, "shebang", "shebang like '#!/usr/bin/env bash'")
    if get("death_timeout") is not None:
        spec["death_timeout"] = _duration(get("death_timeout"), source, "death_timeout")
    if kind == "slurm":
        if get("job_cpu") is not None:
            spec["job_cpu"] = _int(get("job_cpu"), source, "job_cpu", lo=1)
        if get("job_mem") is not None:
            spec["job_mem"] = _match(re.compile(r"\d+[KMGT]?"), get("job_mem"), source, "job_mem", "SLURM memory like 16G")
    if kind == "pbs" and get("resource_spec") is not None:
        spec["resource_spec"] = _match(_TOKEN, get("resource_spec"), source, "resource_spec", "PBS resource spec")

    args = [_match(_TOKEN, a, source, f"worker_extra_args[{i}]", "dask-worker argument")
            for i, a in enumerate(_str_list(get("worker_extra_args"), source, "worker_extra_args"))]
    spec["worker_extra_args"] = args
    directives = []
    for i, d in enumerate(_str_list(get("job_extra_directives"), source, "job_extra_directives")):
        key = f"job_extra_directives[{i}]"
        d = _one_line(d, source, key)
        for tok in d.split(" "):
            _match(_TOKEN, tok, source, key, f"{kind} directive (in {d!r})")
        directives.append(d)
    spec["job_extra_directives"] = directives
    spec["job_directives_skip"] = [_match(_TOKEN, d, source, f"job_directives_skip[{i}]", "directive to skip")
                                   for i, d in enumerate(_str_list(get("job_directives_skip"), source, "job_directives_skip"))]
    # the one place where a spec writes shell on purpose: one line each, copied as written
    spec["job_script_prologue"] = [_one_line(x, source, f"job_script_prologue[{i}]")
                                   for i, x in enumerate(_str_list(get("job_script_prologue"), source, "job_script_prologue"))]

    _check_lifetime(spec, source)

    adapt, scale = get("adapt"), get("scale")
    if (adapt is None) == (scale is None):
        raise _bad(source, "adapt/scale", "give exactly one: adapt: {minimum_jobs: 0, maximum_jobs: 10} or scale: {jobs: 2}")
    if adapt is not None:
        if not isinstance(adapt, dict):
            raise _bad(source, "adapt", f"expected a mapping with minimum_jobs and maximum_jobs, got {adapt!r}")
        for k in adapt:
            if k not in ("minimum_jobs", "maximum_jobs"):
                raise _bad(source, f"adapt.{k}", _unknown(k, {"minimum_jobs", "maximum_jobs"}))
        lo = _int(adapt.get("minimum_jobs", 0), source, "adapt.minimum_jobs", lo=0)
        if adapt.get("maximum_jobs") is None:
            raise _bad(source, "adapt.maximum_jobs", "missing; the most jobs adapt may have queued or running")
        hi = _int(adapt.get("maximum_jobs"), source, "adapt.maximum_jobs", lo=1)
        if hi < lo:
            raise _bad(source, "adapt.maximum_jobs", f"{hi} is below adapt.minimum_jobs ({lo})")
        spec["adapt"] = {"minimum_jobs": lo, "maximum_jobs": hi}
    else:
        if not isinstance(scale, dict) or set(scale) != {"jobs"}:
            raise _bad(source, "scale", f"expected {{jobs: N}}, got {scale!r}")
        spec["scale"] = {"jobs": _int(scale["jobs"], source, "scale.jobs", lo=0)}
    spec["wait_for_workers"] = _int(get("wait_for_workers", 0), source, "wait_for_workers", lo=0)
    spec["wait_timeout"] = _duration(get("wait_timeout", "1h"), source, "wait_timeout")
    floor = spec["adapt"]["minimum_jobs"] if "adapt" in spec else spec["scale"]["jobs"]
    if spec["wait_for_workers"] > floor * procs:
        what = "adapt.minimum_jobs" if "adapt" in spec else "scale.jobs"
        raise _bad(source, "wait_for_workers",
                   f"{spec['wait_for_workers']} workers never join while nothing runs: {what} ({floor}) x processes "
                   f"({procs}) start only {floor * procs}; raise {what} or lower wait_for_workers")
    if get("security") is not None:
        spec["security"] = _security(get("security"), source, base, jobqueue=True)


def _check_lifetime(spec: dict[str, Any], source: str) -> None:
    """Workers must retire (``--lifetime``) before the walltime kills them mid-task."""
    from dask.utils import parse_timedelta

    args = spec["worker_extra_args"]
    lifetime = stagger = None
    for flag, val in zip(args, args[1:] + [None]):
        if flag in ("--lifetime", "--lifetime-stagger"):
            if val is None or val.startswith("-"):
                raise _bad(source, "worker_extra_args", f"{flag} needs a duration after it, like 55m")
            try:
                secs = parse_timedelta(val)
            except (ValueError, KeyError):
                raise _bad(source, "worker_extra_args", f"{flag} {val!r}: not a duration like 55m") from None
            if flag == "--lifetime":
                lifetime = secs
            else:
                stagger = secs
    if "walltime" not in spec:
        return
    wall = walltime_seconds(spec["walltime"], spec["type"])
    if lifetime is None:
        log.warning("cluster spec %s: no --lifetime in worker_extra_args: the %s walltime may kill "
                    "workers in the middle of a task", source, spec["walltime"])
        return
    if lifetime + (stagger or 0) >= wall:
        raise _bad(source, "worker_extra_args",
                   f"--lifetime {lifetime:g}s (+ stagger {stagger or 0:g}s) must end before the walltime "
                   f"{spec['walltime']} ({wall}s), or jobs are killed in the middle of a task")


# ----------------------------------------------------------------------------- cluster arguments


def _machine() -> tuple[int, int]:
    from dask.system import CPU_COUNT  # cgroup/affinity aware
    from distributed.system import MEMORY_LIMIT  # cgroup aware

    return int(CPU_COUNT or os.cpu_count() or 1), int(MEMORY_LIMIT)


#: Log level of a local cluster's worker processes (their errors reach the client as exceptions).
_WORKER_LOG_LEVEL = logging.CRITICAL


def local_kwargs(spec: dict[str, Any], *, n_workers=None, threads_per_worker=None, memory_limit=None,
                 dashboard_address=None, worker_log_level: int | None = None) -> dict[str, Any]:
    """``LocalCluster`` keyword arguments for a local spec and the caller's overrides.

    One thread per worker and one worker per core unless set; each worker's memory limit is the
    machine's memory (cgroup limits included) divided by the number of workers unless set.
    ``worker_log_level`` is the level of the worker processes' own log lines (default
    CRITICAL: their errors reach the client as exceptions; the commands' ``-v`` lowers it).
    """
    from dask.utils import parse_bytes

    src = spec.get("_source", "<spec>")
    ncores, mem = _machine()
    threads = threads_per_worker if threads_per_worker is not None else spec.get("threads_per_worker") or 1
    workers = n_workers if n_workers is not None else spec.get("n_workers") or max(1, ncores // threads)
    if workers < 1 or threads < 1:
        raise ClusterSpecError(f"{src}: the number of workers (--workers) and threads per worker "
                               "(--threads-per-worker) must be at least 1")
    limit = memory_limit if memory_limit is not None else spec.get("memory_limit")
    if limit is None:
        limit = mem // workers
    else:
        try:
            limit = parse_bytes(limit) if isinstance(limit, str) else int(limit)
        except ValueError as e:
            raise ClusterSpecError(f"memory limit {limit!r} is not a size like 4GB: {e}") from e
    kw = {
        "n_workers": workers,
        "threads_per_worker": threads,
        "memory_limit": limit,
        "processes": spec.get("processes", True),
        "dashboard_address": dashboard_address or spec.get("dashboard_address") or DEFAULT_DASHBOARD,
        "scheduler_port": spec.get("scheduler_port", 0),
        # the workers' own log lines (heartbeat tracebacks while a cluster shuts down, remote task
        # tracebacks) stay off the user's terminal: failures reach the client as exceptions
        "silence_logs": _WORKER_LOG_LEVEL if worker_log_level is None else worker_log_level,
    }
    if spec.get("local_directory"):
        kw["local_directory"] = os.path.expanduser(spec["local_directory"])
    return kw


def _security_obj(spec: dict[str, Any]):
    if not spec.get("security"):
        return None
    from distributed.security import Security

    return Security(**spec["security"])


def _jobqueue_class(kind: str):
    try:
        import dask_jobqueue
    except ImportError as e:
        raise ClusterSpecError(
            f"a {kind} cluster needs dask-jobqueue: pip install 'crop2seg-pipeline[hpc]' (or pip install dask-jobqueue)"
        ) from e
    return {"slurm": dask_jobqueue.SLURMCluster, "pbs": dask_jobqueue.PBSCluster}[kind]


_JOB_KEYS = ("cores", "processes", "memory", "walltime", "queue", "account", "job_name", "local_directory",
             "log_directory", "worker_extra_args", "job_script_prologue", "job_extra_directives",
             "job_directives_skip", "interface", "python", "shebang", "death_timeout", "job_cpu", "job_mem",
             "resource_spec")


def jobqueue_kwargs(spec: dict[str, Any], *, dashboard_address=None) -> dict[str, Any]:
    """``SLURMCluster``/``PBSCluster`` keyword arguments for a validated jobqueue spec."""
    kw = {k: spec[k] for k in _JOB_KEYS if spec.get(k) is not None}
    # the job's worker processes get WORKER_ENV too (the spec's own prologue comes after it)
    kw["job_script_prologue"] = [f"export {k}={v}" for k, v in WORKER_ENV.items()] + list(
        kw.get("job_script_prologue") or [])
    kw["scheduler_options"] = {"dashboard_address": dashboard_address or spec.get("dashboard_address") or DEFAULT_DASHBOARD}
    sec = _security_obj(spec)
    if sec is not None:
        kw["security"] = sec
    return kw


def _check_overrides(spec: dict[str, Any], **overrides: Any) -> None:
    names = {"n_workers": "--workers", "threads_per_worker": "--threads-per-worker", "memory_limit": "--memory-limit"}
    given = [f"{names.get(k, k)} ({k})" if k in names else k for k, v in overrides.items() if v is not None]
    if given and spec["type"] != "local":
        what = "the scheduler's workers" if spec["type"] == "address" else "scale/adapt, cores and memory in the spec"
        raise ClusterSpecError(
            f"{', '.join(given)}: only for a local cluster; for the {spec['type']} cluster of "
            f"{spec['_source']} set {what} instead"
        )


# ----------------------------------------------------------------------------- connect / describe


@contextlib.contextmanager
def _dashboard_link_host(dashboard_address: str) -> Iterator[None]:
    """Make ``client.dashboard_link`` name the host the dashboard listens on (127.0.0.1 by default).

    Dask formats the link with the scheduler's host, which for a jobqueue scheduler is the
    machine's network address: a link nobody can open when the dashboard listens on loopback.
    A custom ``distributed.dashboard.link`` template (e.g. a Jupyter proxy) is left alone.
    """
    import dask

    host = dashboard_address.rsplit(":", 1)[0].strip("[]")
    default = "{scheme}://{host}:{port}/status"
    if host in ("", "0.0.0.0", "::") or dask.config.get("distributed.dashboard.link") != default:
        yield
        return
    host = f"[{host}]" if ":" in host else host
    with dask.config.set({"distributed.dashboard.link": "{scheme}://" + host + ":{port}/status"}):
        yield


@contextlib.contextmanager
def connect(
    cluster: str | None = None,
    *,
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit: str | None = None,
    dashboard_address: str | None = None,
    worker_log_level: int | None = None,
) -> Iterator[Any]:
    """Start or join a Dask cluster and yield a ``distributed.Client``; close what was started on exit.

    Parameters
    ----------
    cluster
        ``local`` / None, ``tcp://host:port`` / ``tls://host:port``, or a YAML spec path or name.
    n_workers, threads_per_worker, memory_limit
        Override a local spec (``memory_limit`` per worker, e.g. ``"2GB"``); an error for other types.
    dashboard_address
        Where the dashboard of a cluster started here listens (the local cluster's, or the jobqueue
        scheduler's); default the spec's ``dashboard_address``, else ``127.0.0.1:8787`` (loopback
        only; a random port when taken). Ignored when joining an existing scheduler.
    worker_log_level
        Log level of a local cluster's worker processes (default CRITICAL; see :func:`local_kwargs`).
    """
    from distributed import Client, LocalCluster

    spec = check(cluster, n_workers=n_workers, threads_per_worker=threads_per_worker, memory_limit=memory_limit)
    kind = spec["type"]

    if kind == "address":
        if dashboard_address is not None:
            log.warning("dashboard_address is ignored when joining the existing scheduler %s", spec["address"])
        try:
            client = Client(spec["address"], timeout=spec["timeout"], security=_security_obj(spec))
        except (OSError, ValueError, TypeError) as e:
            raise Crop2SegError(f"cannot reach the Dask scheduler at {spec['address']}: {e}") from e
        try:
            log.info("joined the Dask scheduler %s; dashboard: %s", spec["address"], client.dashboard_link)
            yield client
        finally:
            client.close()
        return

    if kind == "local":
        kw = local_kwargs(spec, n_workers=n_workers, threads_per_worker=threads_per_worker,
                          memory_limit=memory_limit, dashboard_address=dashboard_address,
                          worker_log_level=worker_log_level)
        with _dashboard_link_host(kw["dashboard_address"]), worker_environment(), LocalCluster(**kw) as lc, \
                Client(lc) as client:
            log.info("local Dask cluster: %d workers x %d threads; dashboard: %s", kw["n_workers"],
                     kw["threads_per_worker"], client.dashboard_link)
            yield client
        return

    cls = _jobqueue_class(kind)
    kw = jobqueue_kwargs(spec, dashboard_address=dashboard_address)
    with _dashboard_link_host(kw["scheduler_options"]["dashboard_address"]), cls(**kw) as jc:
        if "adapt" in spec:
            jc.adapt(**spec["adapt"])
        else:
            jc.scale(jobs=spec["scale"]["jobs"])
        with Client(jc) as client:
            log.info("%s cluster (scheduler %s); dashboard: %s", cls.__name__, jc.scheduler_address, client.dashboard_link)
            if spec["wait_for_workers"]:
                from dask.utils import parse_timedelta

                try:
                    client.wait_for_workers(spec["wait_for_workers"], timeout=parse_timedelta(spec["wait_timeout"]))
                except TimeoutError as e:
                    raise Crop2SegError(
                        f"no {spec['wait_for_workers']} worker(s) joined within {spec['wait_timeout']} "
                        f"(jobs still queued? see squeue/qstat); raise wait_timeout in {spec['_source']}"
                    ) from e
            yield client


def check(cluster: str | None = None, *, n_workers=None, threads_per_worker=None, memory_limit=None) -> dict[str, Any]:
    """Validate a ``--cluster`` value and its overrides without starting anything; the spec.

    Everything :func:`connect` would refuse is refused here (a bad spec, overrides for a cluster
    that takes none, a bad memory limit, dask-jobqueue missing), and a scheduler address is
    probed: a refused connection or an unknown host is reported at once, not after the
    connection timeout.
    """
    spec = resolve_spec(cluster)
    _check_overrides(spec, n_workers=n_workers, threads_per_worker=threads_per_worker, memory_limit=memory_limit)
    if spec["type"] == "local":
        local_kwargs(spec, n_workers=n_workers, threads_per_worker=threads_per_worker, memory_limit=memory_limit)
    elif spec["type"] == "address":
        probe_address(spec["address"])
    else:
        _jobqueue_class(spec["type"])
    return spec


def probe_address(address: str, timeout: float = 5.0) -> None:
    """Fail at once when nothing can listen at a scheduler address (refused, unknown host).

    A timeout is not decided here (a slow network): the client's own connection timeout applies.
    """
    import socket

    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    host = host.strip("[]")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return
    except ConnectionRefusedError:
        raise ClusterSpecError(
            f"nothing listens at the Dask scheduler address {address} (connection refused): start the "
            f"scheduler there (dask scheduler --port {port}) or fix --cluster"
        ) from None
    except socket.gaierror as e:
        raise ClusterSpecError(f"cannot resolve the host of the Dask scheduler address {address} ({e}); fix --cluster") from None
    except (socket.timeout, TimeoutError):
        return
    except OSError as e:
        raise ClusterSpecError(f"cannot reach the Dask scheduler at {address}: {e}; check the address and the network") from None


def job_script(spec: dict[str, Any], *, dashboard_address=None) -> str:
    """The job script a jobqueue spec submits, from dask-jobqueue's own ``cluster.job_script()``.

    The cluster object is built inside a throw-away event loop in asynchronous mode, so that its
    scheduler is never started (no port is opened) and no job is submitted (``sbatch``/``qsub`` are
    not needed). The scheduler address in the script is dask-jobqueue's placeholder.
    """
    from distributed.core import Status
    from distributed.deploy.spec import SpecCluster

    cls = _jobqueue_class(spec["type"])
    kw = jobqueue_kwargs(spec, dashboard_address=dashboard_address)

    async def build() -> str:
        jc = cls(asynchronous=True, **kw)
        try:
            if jc.scheduler is not None or jc.status != Status.created:  # pragma: no cover - jobqueue changed
                raise RuntimeError("dask-jobqueue started its scheduler during a dry run")
            return jc.job_script()
        finally:
            jc.status = Status.closed
            SpecCluster._instances.discard(jc)

    try:
        asyncio.get_running_loop()
    except RuntimeError:  # the usual case: no event loop in this thread
        run = asyncio.run
    else:  # called from async code (a notebook): build it in a thread with its own loop
        from concurrent.futures import ThreadPoolExecutor

        def run(coro):
            with ThreadPoolExecutor(1) as ex:
                return ex.submit(asyncio.run, coro).result()
    try:
        return run(build())
    except (ValueError, TypeError) as e:
        raise ClusterSpecError(f"cluster spec {spec['_source']}: dask-jobqueue rejected it: {e}") from e


def describe(cluster: str | None = None, *, n_workers=None, threads_per_worker=None, memory_limit=None,
             dashboard_address=None) -> str:
    """What :func:`connect` would start for these arguments, without starting anything (the dry run)."""
    from dask.utils import format_bytes

    spec = resolve_spec(cluster)
    kind = spec["type"]
    _check_overrides(spec, n_workers=n_workers, threads_per_worker=threads_per_worker, memory_limit=memory_limit)
    head = f"# cluster spec: {spec['_source']} (type: {kind})"
    if kind == "address":
        tls = "TLS with " + ", ".join(sorted(spec["security"])) if spec.get("security") else "no TLS options in the spec"
        return "\n".join([head, f"join the existing scheduler {spec['address']} ({tls}; timeout {spec['timeout']})",
                          "nothing is started; closing the client leaves the scheduler and its workers running"])
    if kind == "local":
        kw = local_kwargs(spec, n_workers=n_workers, threads_per_worker=threads_per_worker,
                          memory_limit=memory_limit, dashboard_address=dashboard_address)
        ncores, mem = _machine()
        lines = [head, f"# machine: {ncores} cores, {format_bytes(mem)} memory",
                 f"# LocalCluster: {kw['n_workers']} worker {'processes' if kw['processes'] else 'threads'} x "
                 f"{kw['threads_per_worker']} threads, {format_bytes(kw['memory_limit'])} per worker",
                 "# worker environment: " + " ".join(f"{k}={v}" for k, v in WORKER_ENV.items()),
                 "LocalCluster(", *(f"    {k}={v!r}," for k, v in kw.items()), ")"]
        return "\n".join(lines)
    cls = _jobqueue_class(kind)
    script = job_script(spec, dashboard_address=dashboard_address)
    da = dashboard_address or spec.get("dashboard_address") or DEFAULT_DASHBOARD
    if "adapt" in spec:
        jobs = f"adapt between {spec['adapt']['minimum_jobs']} and {spec['adapt']['maximum_jobs']} jobs"
    else:
        jobs = f"scale to {spec['scale']['jobs']} jobs"
    submit = "sbatch" if kind == "slurm" else "qsub"
    lines = [head,
             f"# {cls.__name__}: scheduler here (dashboard {da}), {jobs} submitted with {submit}, each job "
             f"{spec['processes']} worker process(es) x {spec['cores'] // spec['processes']} threads, "
             f"{spec['memory']} memory",
             "# TLS: " + ("on" if spec.get("security") else "off (any user who can reach the scheduler port can run code as you)"),
             "# job script (the scheduler address is filled in at start):",
             script]
    return "\n".join(lines)
