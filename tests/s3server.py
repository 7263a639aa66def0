"""A real S3-compatible server on loopback for tests: moto in server mode, in its own process.

The server starts with authentication off, gets its users, keys, policies and buckets, then
authentication is switched on (moto's ``/moto-api/reset-auth``): from then on every request is
signed and checked against IAM like on AWS, so wrong keys and missing permissions fail for real.

Run as a script it is moto's server with one fix: werkzeug hands moto the request URL with the
query string *decoded* (``prefix=a%2F`` becomes ``prefix=a/``), so moto recomputes the SigV4
signature of every listing with a ``/`` in its prefix or delimiter over another string than the
client signed and refuses it. The fix gives moto the URL with the query string as it was sent.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

BUCKET = "crop2seg-test"
REGION = "us-east-1"

_READ_ONLY = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": ["s3:GetObject", "s3:ListBucket", "s3:GetBucketLocation", "s3:HeadBucket",
                                   "s3:ListAllMyBuckets"], "Resource": "*"}]}
_ALL = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}


@dataclass
class S3Server:
    """A running moto server: its endpoint, a bucket, and the keys of two users."""

    endpoint: str
    proc: subprocess.Popen
    bucket: str = BUCKET
    keys: dict[str, tuple[str, str]] = field(default_factory=dict)  # user -> (key id, secret)

    def env(self, user: str = "writer") -> dict[str, str]:
        """The environment a process needs to use the server as ``user`` (boto/fsspec and GDAL)."""
        key, secret = self.keys[user]
        return {"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret, "AWS_ENDPOINT_URL": self.endpoint,
                "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION, "AWS_EC2_METADATA_DISABLED": "true",
                "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}

    def client(self, user: str = "writer"):
        import boto3

        key, secret = self.keys[user]
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=key, aws_secret_access_key=secret,
                            region_name=REGION)

    def upload_tree(self, folder: Path, prefix: str) -> str:
        """Upload every file under ``folder`` to ``s3://BUCKET/prefix/...``; the prefix's URL."""
        c = self.client()
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                c.upload_file(str(p), self.bucket, f"{prefix}/{p.relative_to(folder).as_posix()}")
        return f"s3://{self.bucket}/{prefix}"

    def keys_under(self, prefix: str) -> list[str]:
        c, out, token = self.client(), [], None
        while True:
            kw = {"ContinuationToken": token} if token else {}
            r = c.list_objects_v2(Bucket=self.bucket, Prefix=prefix, **kw)
            out += [o["Key"] for o in r.get("Contents", [])]
            if not r.get("IsTruncated"):
                return out
            token = r["NextContinuationToken"]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_s3_server(log_dir: Path, timeout: float = 300.0) -> S3Server:
    """Start moto's server on a free loopback port and set it up (see the module docstring)."""
    import boto3

    port = _free_port()
    log = (log_dir / "moto.log").open("w")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    proc = subprocess.Popen([sys.executable, __file__, "127.0.0.1", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:  # until it answers (a loaded machine may need a while); fails at once if it died
        if proc.poll() is not None:
            raise RuntimeError(f"the moto server exited with code {proc.returncode}: {(log_dir / 'moto.log').read_text()}")
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=5).close()
            break
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline:
                proc.kill()
                raise TimeoutError(f"the moto server did not answer on {endpoint} in {timeout:.0f} s") from None
            time.sleep(0.1)
    server = S3Server(endpoint, proc)
    root = dict(endpoint_url=endpoint, aws_access_key_id="setup", aws_secret_access_key="setup", region_name=REGION)
    iam = boto3.client("iam", **root)
    for user, policy in (("writer", _ALL), ("reader", _READ_ONLY)):
        iam.create_user(UserName=user)
        iam.put_user_policy(UserName=user, PolicyName=f"{user}-policy", PolicyDocument=json.dumps(policy))
        k = iam.create_access_key(UserName=user)["AccessKey"]
        server.keys[user] = (k["AccessKeyId"], k["SecretAccessKey"])
    boto3.client("s3", **root).create_bucket(Bucket=BUCKET)
    # from now on every request is authenticated and authorized
    req = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=b"0", method="POST",
                                 headers={"Content-Type": "text/plain"})
    urllib.request.urlopen(req, timeout=30).close()
    server.keys["nobody"] = ("AKIAWRONGWRONGWRONG1", "not-the-secret-of-anyone-at-all")
    return server


def _main(host: str, port: str) -> None:
    import flask
    from moto.server import main

    flask.Request.url = property(  # the query string as sent (see the module docstring)
        lambda self: self.base_url + ("?" + self.query_string.decode("latin-1") if self.query_string else ""))
    main(["-H", host, "-p", port])


if __name__ == "__main__":
    _main(*sys.argv[1:3])
