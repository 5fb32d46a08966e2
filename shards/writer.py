"""Deterministic, atomic shard writing with the ``webdataset`` library's ``TarWriter``.

Tar headers carry fixed owner, mode and mtime, so the same samples always give byte-identical files. A shard is
written to a temporary name in its directory and renamed into place when complete, so a half-written shard is
never visible under its final name. On close the writer lists the byte range of every member (``members``), the
index the reader uses for random access.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import webdataset as wds

from .index import Member, scan_members
from .schema import Sample, SchemaError, encode_sample, validate_key

TAR_MTIME = 0  # fixed header fields -> reproducible bytes (an int: a float mtime adds a PAX header per member)
TAR_USER = "avtta"
TAR_MODE = 0o444


def atomic_replace(tmp: Path, final: Path) -> None:
    """fsync ``tmp`` and rename it to ``final`` (atomic on POSIX)."""
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, final)


def tmp_name(final: Path) -> Path:
    return final.with_name(f".{final.name}.tmp-{os.getpid()}")


class ShardWriter:
    """Write samples into one tar shard; duplicate or dotted keys raise at write time.

    Use as a context manager; the file appears under ``path`` only after a clean ``close()``. On error the
    temporary file is removed.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = tmp_name(self.path)
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
        atomic_replace(self._tmp, self.path)
        return file_digest(self.path)

    def abort(self) -> None:
        try:
            self._tar.close()
        finally:
            self._fh.close()
            self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def file_digest(path: str | Path) -> tuple[int, str]:
    """(size in bytes, sha256 hex) of a file."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
            size += len(block)
    return size, h.hexdigest()
