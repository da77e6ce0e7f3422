"""A store: a URL (local path, ``file://``, ``az://container/prefix``) opened through fsspec.

Credentials never travel with a :class:`Store`. It pickles as its URL alone and
opens its filesystem where it is used, from that process's environment
(``AZURE_STORAGE_CONNECTION_STRING``, account name with key or SAS token, a
service principal, or ``DefaultAzureCredential`` through adlfs). So what is
sent to Dask workers, logged or shown holds no secret.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import uuid
from functools import cached_property

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from azure.core.exceptions import AzureError, HttpResponseError
from fsspec.implementations.local import LocalFileSystem

_SECRET_IN_URL = re.compile(r"\?|AccountKey=|SharedAccessSignature=|sig=", re.IGNORECASE)


def is_transient(exc: BaseException | object) -> bool:
    """Whether a storage error can pass by itself: network, timeouts, throttling (429), server errors (5xx).

    A missing file, a refused permission or a file that cannot be parsed will
    fail the same way on every retry, so they are not transient.
    """
    if isinstance(exc, HttpResponseError):
        return exc.status_code in (408, 429) or (exc.status_code or 0) >= 500
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError)):
        return False
    return isinstance(exc, (AzureError, OSError, TimeoutError, ConnectionError))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_text(kind: pa.DataType) -> bool:
    """Whether an Arrow type holds text (plain, large or view strings)."""
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    """A frame as Parquet bytes: the same frame always gives the same bytes."""
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buffer)
    return buffer.getvalue()


class Store:
    """Relative paths of the storage layout, resolved against one store URL."""

    def __init__(self, url: str | os.PathLike[str]) -> None:
        url = os.fspath(url)
        if not url:
            raise ValueError("a store URL is required, e.g. ./data or az://container/prefix")
        if _SECRET_IN_URL.search(url):
            raise ValueError(
                "store URLs must not carry credentials; set AZURE_STORAGE_CONNECTION_STRING "
                "or AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY / AZURE_STORAGE_SAS_TOKEN"
            )
        self.url = url

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    def __reduce__(self):
        # Only the URL crosses process boundaries; the filesystem is reopened from env.
        return (Store, (self.url,))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Store) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)

    @cached_property
    def _opened(self) -> tuple[fsspec.AbstractFileSystem, str]:
        # fsspec caches instances by arguments: one filesystem (and connection pool) per process.
        # No listings cache: other processes write the same folders, and a commit decided on a
        # stale listing could list a file that is gone or delete one that was just written.
        fs, root = fsspec.core.url_to_fs(self.url, use_listings_cache=False)
        return fs, root.rstrip("/")

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        return self._opened[0]

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def path(self, rel: str) -> str:
        """Absolute path (as the filesystem names it) of a layout path."""
        return f"{self._opened[1]}/{rel}" if rel else self._opened[1]

    def url_of(self, rel: str) -> str:
        """A layout path as a URL users can paste (``az://c/p/predictions/...``)."""
        return f"{self.url.rstrip('/')}/{rel}"

    def rel(self, path: str) -> str:
        """Inverse of :meth:`path`."""
        return path.split(self._opened[1] + "/", 1)[-1]

    def create(self) -> None:
        """Create the store's root (for ``az://``, its container) if it does not exist."""
        try:
            self.fs.mkdir(self.path(""), create_parents=True)  # adlfs: creates the container
        except FileExistsError:
            pass

    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.path(rel))

    def read(self, rel: str) -> bytes:
        return self.fs.cat_file(self.path(rel))

    def read_many(self, rels: list[str]) -> dict[str, bytes]:
        """Read files in one bulk call (concurrent requests on blob storage); absent files are left out.

        Any other error (network, permissions) is raised: an outage must not look like missing files.
        """
        if not rels:
            return {}
        found = self.fs.cat([self.path(r) for r in rels], on_error="return")
        for result in found.values():
            if isinstance(result, Exception) and not isinstance(result, FileNotFoundError):
                raise result
        return {self.rel(p): data for p, data in found.items() if not isinstance(data, Exception)}

    def write(self, rel: str, data: bytes) -> None:
        """Write a whole file so that readers see the old content or the new, never a part.

        A blob upload is atomic by itself; on a local disk write aside, then rename.
        """
        target = self.path(rel)
        if not self.is_local:
            self.fs.pipe_file(target, data)
            return
        os.makedirs(os.path.dirname(target), exist_ok=True)
        staging = f"{target}.tmp-{uuid.uuid4().hex}"
        self.fs.pipe_file(staging, data)
        os.replace(staging, target)

    def write_many(self, files: dict[str, bytes]) -> None:
        """Write many independent files in one bulk call (each is complete or absent)."""
        if self.is_local:
            for rel, data in files.items():
                self.write(rel, data)
        elif files:
            self.fs.pipe({self.path(r): d for r, d in files.items()})

    def list(self, rel: str) -> list[str]:
        """Layout paths of the files directly under ``rel`` (empty if it does not exist)."""
        return [e["path"] for e in self.list_detail(rel)]

    def list_detail(self, rel: str) -> list[dict]:
        """Like :meth:`list`, with each file's ``size`` and ``version`` (blob etag, else modification time)."""
        try:
            entries = self.fs.ls(self.path(rel), detail=True)
        except FileNotFoundError:
            return []
        return sorted(({"path": self.rel(e["name"]), "size": int(e["size"]),
                        "version": str(e.get("etag") or e.get("last_modified") or e.get("mtime"))}
                       for e in entries if e["type"] == "file"), key=lambda e: e["path"])

    def list_dirs(self, rel: str) -> list[str]:
        try:
            entries = self.fs.ls(self.path(rel), detail=True)
        except FileNotFoundError:
            return []
        return sorted(self.rel(e["name"].rstrip("/")) for e in entries if e["type"] == "directory")

    def remove(self, rels: list[str]) -> None:
        if rels:
            self.fs.rm([self.path(r) for r in rels])
