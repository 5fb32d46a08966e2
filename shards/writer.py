"""Deterministic, atomic shard writing with the ``webdataset`` library's ``TarWriter``.

Tar headers carry fixed owner, mode and mtime, so the same samples always give byte-identical files. A shard is
written to a temporary file and made visible only when complete (:func:`.storage.staged_path`: renamed into
place locally, uploaded whole to an object store), so a half-written shard is never visible under its final name.
On close the writer lists the byte range of every member (``members``), the index the reader uses for random
access.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import webdataset as wds

from . import storage
from .index import Member, scan_members
from .io import file_digest
from .schema import Sample, SchemaError, encode_sample, validate_key

TAR_MTIME = 0  # fixed header fields -> reproducible bytes (an int: a float mtime adds a PAX header per member)
TAR_USER = "avtta"
TAR_MODE = 0o444


class _Aborted(Exception):
    """Handed to ``atomic_path`` so that it removes the temporary of an aborted shard."""


class ShardWriter:
    """Write samples into one tar shard; duplicate or dotted keys raise at write time.

    Use as a context manager; the file appears under ``path`` only after a clean ``close()``. On error the
    temporary file is removed.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path) if storage.is_local(path) else str(path)
        # staged_path (a temporary file; on success renamed into place or uploaded whole, on error removed), held
        # open while writing
        self._atomic = storage.staged_path(self.path)
        self._tmp: Path | None = self._atomic.__enter__()
        self._fh = open(self._tmp, "wb")  # noqa: SIM115 - closed in close()/abort()
        self._tar = wds.TarWriter(
            self._fh, user=TAR_USER, group=TAR_USER, mode=TAR_MODE, encoder=False, mtime=TAR_MTIME
        )
        self._keys: set[str] = set()
        self.count = 0
        self.members: list[Member] = []  # filled by close(): every member's byte range in the finished shard

    def write(self, sample: Sample | dict[str, Any]) -> None:
        raw = encode_sample(sample) if isinstance(sample, Sample) else sample
        key = validate_key(raw.get("__key__", ""))
        for field in raw:
            if field != "__key__" and (field.startswith("_") or "/" in field):
                raise SchemaError(f"sample {key}: invalid field name {field!r}")
        if key in self._keys:
            raise SchemaError(f"duplicate sample key {key!r} in {self.path}")
        self._keys.add(key)
        self._tar.write(raw)
        self.count += 1

    def close(self) -> tuple[int, str]:
        """Finish the tar, rename it into place; return (bytes, sha256)."""
        self._tar.close()
        self._fh.close()
        self.members = scan_members(self._tmp)  # read back from the bytes on disk, not from what we meant to write
        digest = file_digest(self._tmp)  # of the bytes that are then renamed or uploaded unchanged
        self._atomic.__exit__(None, None, None)
        self._tmp = None
        return digest

    def abort(self) -> None:
        """Drop the shard: close the files and remove the temporary (a no-op once the shard is closed)."""
        if self._tmp is None:
            return
        try:
            self._tar.close()
        finally:
            self._fh.close()
            err = _Aborted(f"{self.path}: writing aborted")
            self._atomic.__exit__(_Aborted, err, None)  # removes the temporary; returns False, nothing raised
            self._tmp = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
