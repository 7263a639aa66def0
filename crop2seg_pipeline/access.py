"""Access to asset hrefs at read time: Planetary Computer signing, S3 paths, no secret kept anywhere.

Readers call :func:`resolve_href` just before they open a file (GDAL/rasterio or an HTTP
download) and use what it returns for that open only. Items, logs, error messages and stores
keep the *unsigned* href: a signed URL never leaves the process that asked for it (use
:func:`redact` on any text that might hold one).

Signing follows the Planetary Computer protocol (as its ``planetary-computer`` SDK does): an href
on a signed host (default ``*.blob.core.windows.net``) gets the SAS token of its storage account
and container, fetched from ``{sas_url}/{account}/{container}`` (JSON ``{"token": ...,
"msft:expiry": ...}``) and cached per process; a token is renewed once it has less than
``refresh_margin_s`` left, so long builds keep reading. Configuration comes from the
environment, read at each call (nothing is written):

- ``PC_SDK_SAS_URL``: the token endpoint (default the Planetary Computer's);
- ``PC_SDK_SUBSCRIPTION_KEY``: optional API key, sent as ``Ocp-Apim-Subscription-Key``;
- ``CROP2SEG_SIGN_HOSTS``: comma-separated host suffixes (or ``host:port``) to sign
  (default ``.blob.core.windows.net``);
- ``CROP2SEG_TOKEN_REFRESH_S``: renew tokens with less than this many seconds left (default 900).

Other hrefs: ``s3://bucket/key`` becomes GDAL's ``/vsis3/bucket/key`` (GDAL reads the
credentials itself: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, and for the Copernicus
Data Space ``AWS_S3_ENDPOINT=eodata.dataspace.copernicus.eu``, ``AWS_VIRTUAL_HOSTING=FALSE``,
``AWS_HTTPS=YES``); ``gs://`` becomes ``/vsigs/``; local paths, ``/vsi...`` paths and other
URLs are returned unchanged (GDAL's ``GDAL_HTTP_HEADERS`` / ``GDAL_HTTP_AUTH`` apply to those).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from . import storage
from .errors import Crop2SegError

__all__ = ["AccessError", "SigningConfig", "Signer", "resolve_href", "redact", "gdal_options", "invalidate_tokens"]

DEFAULT_SAS_URL = "https://planetarycomputer.microsoft.com/api/sas/v1/token"
DEFAULT_SIGN_HOSTS = (".blob.core.windows.net",)
#: Blob hosts the Planetary Computer serves without a token (thumbnails...).
_PUBLIC_HOSTS = ("ai4edatasetspublicassets.blob.core.windows.net",)
_SAS_KEYS = {"se", "sig", "sp", "st", "sv", "sr"}


class AccessError(Crop2SegError):
    """An href cannot be made readable (token endpoint refused or unreachable, expired token, missing credentials)."""


@dataclass(frozen=True)
class SigningConfig:
    """Where tokens come from and which hrefs need them (see the module docstring)."""

    sas_url: str = DEFAULT_SAS_URL
    hosts: tuple[str, ...] = DEFAULT_SIGN_HOSTS
    subscription_key: str | None = None
    refresh_margin_s: float = 900.0
    timeout_s: float = 30.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "SigningConfig":
        env = os.environ if environ is None else environ
        hosts = tuple(h.strip().lower() for h in env.get("CROP2SEG_SIGN_HOSTS", "").split(",") if h.strip())
        try:
            margin = float(env.get("CROP2SEG_TOKEN_REFRESH_S", 900))
        except ValueError:
            raise AccessError(f"CROP2SEG_TOKEN_REFRESH_S must be a number of seconds, got {env['CROP2SEG_TOKEN_REFRESH_S']!r}") from None
        return cls(sas_url=(env.get("PC_SDK_SAS_URL") or DEFAULT_SAS_URL).rstrip("/"),
                   hosts=hosts or DEFAULT_SIGN_HOSTS,
                   subscription_key=env.get("PC_SDK_SUBSCRIPTION_KEY") or None,
                   refresh_margin_s=margin)

    def needs_signing(self, href: str) -> bool:
        u = urllib.parse.urlparse(href)
        if u.scheme not in ("http", "https") or u.netloc.lower() in _PUBLIC_HOSTS:
            return False
        if _SAS_KEYS & set(urllib.parse.parse_qs(u.query)):
            return False  # already signed (by the user): left alone
        host, netloc = (u.hostname or "").lower(), u.netloc.lower()
        return any(netloc == h or host == h or (h.startswith(".") and host.endswith(h)) for h in self.hosts)


def _account_container(href: str) -> tuple[str, str]:
    u = urllib.parse.urlparse(href)
    host = (u.hostname or "").lower()
    account = host.split(".")[0] if host.endswith(".blob.core.windows.net") else u.netloc.lower()
    parts = u.path.lstrip("/").split("/", 1)
    if len(parts) < 2 or not parts[0]:
        raise AccessError(f"cannot tell the storage container of {href!r} (expected https://ACCOUNT.blob.core.windows.net/CONTAINER/...)")
    return account, parts[0]


class Signer:
    """Signs hrefs with SAS tokens, one token per (account, container), cached and renewed.

    Parameters
    ----------
    config : SigningConfig
    clock : callable
        Seconds since the epoch (``time.time``); tests pass another clock to drive renewal.
    """

    def __init__(self, config: SigningConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self._tokens: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()
        self.requests = 0  # token requests made (for logs and tests)

    def sign(self, href: str) -> str:
        if not self.config.needs_signing(href):
            return href
        account, container = _account_container(href)
        token = self.token(account, container)
        return f"{href}{'&' if '?' in href else '?'}{token}"

    def token(self, account: str, container: str) -> str:
        url = f"{self.config.sas_url}/{account}/{container}"
        with self._lock:
            cached = self._tokens.get(url)
            if cached is not None and cached[1] - self.clock() > self.config.refresh_margin_s:
                return cached[0]
            token, expiry = self._fetch(url)
            self._tokens[url] = (token, expiry)
            return token

    def invalidate(self) -> None:
        """Forget every cached token (after a server refused one)."""
        with self._lock:
            self._tokens.clear()

    def _fetch(self, url: str) -> tuple[str, float]:
        headers = {"Accept": "application/json"}
        if self.config.subscription_key:
            headers["Ocp-Apim-Subscription-Key"] = self.config.subscription_key
        last: Exception | None = None
        for attempt in range(4):
            self.requests += 1
            try:
                req = urllib.request.Request(url, headers=headers)
                with urllib.request.urlopen(req, timeout=self.config.timeout_s) as r:  # noqa: S310 (configured endpoint)
                    doc = json.loads(r.read().decode("utf-8"))
                break
            except urllib.error.HTTPError as e:
                if e.code in (429, 500, 502, 503, 504) and attempt < 3:
                    last = e
                    time.sleep(0.2 * 2**attempt)
                    continue
                raise AccessError(
                    f"the token endpoint {url} refused a token (HTTP {e.code}); check PC_SDK_SAS_URL"
                    f"{' and PC_SDK_SUBSCRIPTION_KEY' if e.code in (401, 403) else ''}"
                ) from None
            except (urllib.error.URLError, OSError, ValueError) as e:
                last = e
                if attempt < 3:
                    time.sleep(0.2 * 2**attempt)
                    continue
        else:
            raise AccessError(f"cannot get a token from {url}: {last}; check PC_SDK_SAS_URL and the network") from None
        try:
            token = str(doc["token"])
            expiry = dt.datetime.fromisoformat(str(doc["msft:expiry"]).replace("Z", "+00:00"))
        except (KeyError, TypeError, ValueError):
            raise AccessError(f"the token endpoint {url} answered no token/msft:expiry: not a SAS token endpoint") from None
        if expiry.tzinfo is None:
            expiry = expiry.replace(tzinfo=dt.timezone.utc)
        exp = expiry.timestamp()
        if exp <= self.clock():
            raise AccessError(
                f"the token endpoint {url} handed out a token that expired at {expiry.isoformat()} "
                f"(now {dt.datetime.fromtimestamp(self.clock(), dt.timezone.utc).isoformat(timespec='seconds')}); "
                "check the machine's clock and PC_SDK_SAS_URL"
            )
        return token, exp


_SIGNERS: dict[SigningConfig, Signer] = {}
_SIGNERS_LOCK = threading.Lock()


def _signer() -> Signer:
    config = SigningConfig.from_env()
    with _SIGNERS_LOCK:
        s = _SIGNERS.get(config)
        if s is None:
            s = _SIGNERS[config] = Signer(config)
        return s


def invalidate_tokens() -> None:
    """Forget this process's cached tokens (the next read fetches new ones)."""
    _signer().invalidate()


def resolve_href(href: str, asset: Mapping | None = None) -> str:
    """What to open for ``href``, now: signed if its host needs it, GDAL paths for s3:// and gs://.

    Call it just before opening a file and use the result only for that open; never store,
    log or pickle it (:func:`redact` for messages).

    Parameters
    ----------
    href
        An asset href as written in the items (unsigned).
    asset
        The asset dict, when there is one (reserved for per-asset rules; unused today).

    Raises
    ------
    AccessError
        The token endpoint refused or is unreachable, handed out an expired token, or an
        ``s3://eodata`` href (Copernicus Data Space) has no endpoint configured.
    """
    if href.startswith("s3://"):
        bucket = href[5:].split("/", 1)[0]
        if bucket == "eodata" and not (os.environ.get("AWS_S3_ENDPOINT") or storage.gdal_s3_options()):
            raise AccessError(
                f"{href!r} is in the Copernicus Data Space bucket 'eodata': set AWS_S3_ENDPOINT="
                "eodata.dataspace.copernicus.eu, AWS_VIRTUAL_HOSTING=FALSE and your CDSE S3 keys in "
                "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (in the workers' environment too)"
            )
        return "/vsis3/" + href[5:]
    if href.startswith("gs://"):
        return "/vsigs/" + href[5:]
    if href.startswith(("http://", "https://")):
        return _signer().sign(href)
    return href


def gdal_options(href: str) -> dict[str, str]:
    """GDAL configuration options to open ``href`` with (none are secrets; credentials stay in the environment).

    ``s3://`` hrefs get the endpoint of a boto-style ``AWS_ENDPOINT_URL`` translated for GDAL
    (:func:`crop2seg_pipeline.storage.gdal_s3_options`: an S3-compatible server, MinIO, a loopback one)."""
    if href.startswith(("s3://", "/vsis3/")):
        opts = storage.gdal_s3_options()
        if href.startswith(("s3://eodata/", "/vsis3/eodata/")):
            opts.setdefault("AWS_VIRTUAL_HOSTING", os.environ.get("AWS_VIRTUAL_HOSTING", "FALSE"))
        return opts
    return {}


def redact(text: str) -> str:
    """``text`` without credentials: the query string of every URL (where SAS tokens live), a URL's
    ``user:password@`` and the environment's secrets (:func:`crop2seg_pipeline.storage.redact`)."""
    return storage.redact(text)
