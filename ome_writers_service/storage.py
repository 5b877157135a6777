"""Where an OME-Zarr store's bytes go: a local directory, or an S3-compatible bucket.

``root_path="s3://bucket/prefix/name.ome.zarr"`` writes every object (arrays and every
``zarr.json``) through tensorstore's ``s3`` kvstore. Where the bucket is and who may write
it come from the writing process's environment, never from the settings: the standard AWS
variables (``AWS_ENDPOINT_URL``, ``AWS_REGION``/``AWS_DEFAULT_REGION``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, or a profile in
``~/.aws``), and an endpoint given explicitly to ``create_stream(s3_endpoint=...)``.
Credentials are handed to tensorstore by naming where to find them, so they appear in no
spec, message, log or ``repr`` of ours.

S3 has no rename: each object is replaced whole by a PUT (a reader sees the old or the new
one), so `write_bytes` needs no temporary name there.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .format_metadata import write_zarr_json  # (rewritten in place on a full disk)
from .safe_files import write_atomically

#: URL schemes a root_path may name and the service writes to.
WRITABLE_URL_SCHEMES = frozenset({"s3"})
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://(.*)$")
#: S3 bucket names (AWS's rules, loosely: 3-63 lowercase letters, digits, dots, dashes)
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
DEFAULT_REGION = "us-east-1"
#: A request that fails (refused connection, 5xx) is retried this often with backoff before
#: the error reaches the writer: an unreachable endpoint fails in seconds, not minutes.
S3_RETRIES = {"max_retries": 4, "initial_delay": "100ms", "max_delay": "2s"}


def url_scheme(path: str) -> str | None:
    """The URL scheme ``path`` names (lowercase), or None for a filesystem path (a Windows
    drive letter ``C://`` is not a scheme)."""
    match = _URL.match(path)
    if match is None or len(match.group(1)) == 1:
        return None
    return match.group(1).lower()


def check_root_path_scheme(root_path: str) -> None:
    """Refuse a URL root_path whose scheme the service does not write (it would otherwise
    become a local folder named like ``gs:``), naming the scheme; check an s3:// one."""
    scheme = url_scheme(root_path)
    if scheme is None:
        return
    if scheme not in WRITABLE_URL_SCHEMES:
        supported = ", ".join(f"{s}://" for s in sorted(WRITABLE_URL_SCHEMES))
        raise ValueError(f"root_path {root_path!r}: the URL scheme {scheme!r} is not supported "
                         f"(URL schemes written: {supported}); give a local or mounted "
                         "filesystem path")
    S3Location.parse(root_path)


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str  #: the object prefix, without a trailing "/"

    @classmethod
    def parse(cls, url: str) -> S3Location:
        match = _URL.match(url)
        rest = match.group(2) if match else ""
        bucket, _, key = rest.partition("/")
        key = key.strip("/")
        if not _BUCKET.match(bucket):
            raise ValueError(f"root_path {url!r}: {bucket!r} is not an S3 bucket name "
                             "(3-63 lowercase letters, digits, '.' or '-')")
        if not key:
            raise ValueError(f"root_path {url!r}: name the dataset inside the bucket "
                             "(s3://bucket/prefix/name.ome.zarr)")
        return cls(bucket, key)

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def s3_endpoint(explicit: str | None = None) -> str | None:
    """The S3 endpoint: the one given, else ``$AWS_ENDPOINT_URL`` (None: AWS itself)."""
    return explicit or os.environ.get("AWS_ENDPOINT_URL") or None


def s3_region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION


def _credentials_source() -> str:
    """Where tensorstore finds the credentials: the environment when it has keys, else the
    default chain (a profile in ~/.aws, the instance's role...)."""
    return "environment" if os.environ.get("AWS_ACCESS_KEY_ID") else "default"


class Store:
    """A dataset's objects by key relative to its root ("" is the root; "/"-separated)."""

    #: what messages call the dataset (its path or URL)
    name: str

    def kvstore(self, key: str) -> dict[str, Any]:
        """The tensorstore kvstore spec of the objects under ``key``."""
        raise NotImplementedError

    def context(self) -> dict[str, Any]:
        """Tensorstore context resources for this store."""
        return {}

    def write_bytes(self, key: str, data: bytes) -> None:
        """Write (or replace) one object whole: a reader sees the old or the new one."""
        raise NotImplementedError

    def write_json(self, key: str, doc: Any, *, reserve: int = 0) -> None:
        """A JSON document (``reserve``: spaces after it, room for a later, larger one where
        a disk may be full by then: local stores)."""
        self.write_bytes(key, json.dumps(doc, indent=2).encode())

    def read_json(self, key: str) -> Any:
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        raise NotImplementedError

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key under ``prefix`` (relative to the root)."""
        raise NotImplementedError

    def url_of(self, key: str) -> str:
        return f"{self.name}/{key}" if key else self.name


class LocalStore(Store):
    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.name = str(self.root)

    def kvstore(self, key: str) -> dict[str, Any]:
        return {"driver": "file", "path": str(self.root / key) + "/"}

    def context(self) -> dict[str, Any]:
        return {"file_io_sync": False}

    def write_bytes(self, key: str, data: bytes) -> None:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        # a temporary file of unpredictable name renamed over it: a reader never sees half
        # a document, and no name planted beside it is written through
        write_atomically(path, data)

    def write_json(self, key: str, doc: Any, *, reserve: int = 0) -> None:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        write_zarr_json(path, doc, reserve=reserve)

    def read_json(self, key: str) -> Any:
        return json.loads((self.root / key).read_text())

    def exists(self, key: str) -> bool:
        return (self.root / key).is_file()

    def keys(self, prefix: str = "") -> list[str]:
        base = self.root / prefix
        if not base.is_dir():
            return []
        return sorted(str(p.relative_to(self.root)).replace(os.sep, "/")
                      for p in base.rglob("*") if p.is_file())


class S3Store(Store):
    """Objects under ``s3://bucket/key/`` through tensorstore's s3 kvstore."""

    def __init__(self, url: str, endpoint: str | None = None) -> None:
        self.location = S3Location.parse(url)
        self.name = self.location.url
        self.endpoint = s3_endpoint(endpoint)
        self._kv = None

    def kvstore(self, key: str) -> dict[str, Any]:
        path = f"{self.location.key}/{key}".rstrip("/") + "/"
        spec: dict[str, Any] = {"driver": "s3", "bucket": self.location.bucket, "path": path,
                                "aws_region": s3_region(),
                                # tensorstore looks the credentials up: they are never
                                # part of a spec
                                "aws_credentials": {"type": _credentials_source()}}
        if self.endpoint:
            spec["endpoint"] = self.endpoint
        return spec

    def context(self) -> dict[str, Any]:
        return {"s3_request_retries": S3_RETRIES}

    def _store(self):
        if self._kv is None:
            import tensorstore as ts

            self._kv = ts.KvStore.open(self.kvstore(""), context=ts.Context(
                self.context())).result()
        return self._kv

    def write_bytes(self, key: str, data: bytes) -> None:
        self._store().write(key, data).result()

    def read_json(self, key: str) -> Any:
        got = self._store().read(key).result()
        if got.state != "value":
            raise FileNotFoundError(f"{self.url_of(key)} does not exist")
        return json.loads(bytes(got.value))

    def exists(self, key: str) -> bool:
        return self._store().read(key).result().state == "value"

    def keys(self, prefix: str = "") -> list[str]:
        import tensorstore as ts

        rng = ts.KvStore.KeyRange(prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)) \
            if prefix else ts.KvStore.KeyRange()
        return sorted(k.decode() for k in self._store().list(rng).result())

    def prepare(self, overwrite: bool) -> None:
        """The prefix made ready as `backends.base.prepare_output` makes a local path:
        objects already there are refused, or, with ``overwrite``, deleted if they are a zarr
        store (never other data). A failed listing raises ValueError (`storage_error`)."""
        keys = self.keys()
        if not keys:
            return
        if not overwrite:
            raise FileExistsError(f"{self.name} already exists; pass overwrite=True to "
                                  "replace it")
        if "zarr.json" not in keys and ".zgroup" not in keys:
            raise FileExistsError(f"{self.name} holds objects that are not a zarr store: "
                                  "overwrite=True replaces a dataset, never other data")
        self.delete_all()

    def delete_all(self) -> None:
        import tensorstore as ts

        self._store().delete_range(ts.KvStore.KeyRange()).result()


def storage_error(e: Exception) -> str:
    """The first line of a tensorstore error, with what it means for an S3 store."""
    text = str(e).split(" [", 1)[0]
    if "NoSuchBucket" in text:
        return f"the bucket does not exist ({text})"
    if "SignatureDoesNotMatch" in text or "InvalidAccessKeyId" in text or \
            "PERMISSION_DENIED" in text:
        return ("the credentials were refused (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY of "
                f"the writing process) ({text})")
    if "CURL error" in text or "retry attempts failed" in text:
        return f"the S3 endpoint cannot be reached ({text})"
    return text


def open_store(output_path: str, endpoint: str | None = None) -> Store:
    """The store of a dataset at ``output_path`` (a path, or an s3:// URL)."""
    if url_scheme(output_path) == "s3":
        return S3Store(output_path, endpoint)
    return LocalStore(output_path)


__all__ = ["LocalStore", "S3Location", "S3Store", "Store", "WRITABLE_URL_SCHEMES",
           "check_root_path_scheme", "open_store", "s3_endpoint", "storage_error", "url_scheme"]
