"""Byte index of shard members, for reading samples by random access.

A shard is a plain tar, so the data of member ``<key>.<field>`` is one contiguous byte range of the file. The
writer records every member's range when it closes a shard (``ShardWriter.members``; the shard job and the
importer store them in the set's ``members.parquet``), so the reader can fetch a sample's fbank and one frame with
two ``pread`` calls instead of walking every tar header in front of them. A set without that table is indexed by
scanning its tars with :func:`scan_members` (Python's ``tarfile``, about 0.25 ms per sample).
"""

from __future__ import annotations

import os
import tarfile
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from .fetch import FetchConfig, RangeFetcher, ShardCache, is_remote, local_path


class Member(NamedTuple):
    """One tar member of a sample: ``<key>.<field>``, ``size`` bytes of data at byte ``offset`` of the shard."""

    key: str
    field: str
    offset: int
    size: int


def scan_members(path: str | Path) -> list[Member]:
    """Every regular member of a tar shard with the byte range of its data (headers only; data is skipped)."""
    out = []
    try:
        with tarfile.open(path, "r:") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                key, dot, field = m.name.partition(".")
                if not dot:
                    raise ValueError(f"{path}: tar member {m.name!r} is not <key>.<field>")
                out.append(Member(key, field, m.offset_data, m.size))
    except tarfile.TarError as err:
        raise ValueError(f"{path}: not a readable tar shard ({err})") from None
    return out


class MemberReader:
    """Reads byte ranges of shard files with ``os.pread``, keeping at most ``max_open`` files open (LRU).

    ``pread`` does not move a shared file offset, so descriptors inherited by forked DataLoader workers stay safe;
    each process still opens its own (the cache is keyed by process id).

    Shards named by a URL (:mod:`.fetch`) are read from their local cache copy when ``fetch`` has a cache folder,
    else by ranged GETs: :meth:`prefetch` fetches the ranges a batch will read in coalesced, concurrent GETs and
    holds them until they are read (one range read without a prefetch is one GET of its own).
    """

    def __init__(self, max_open: int = 64, fetch: FetchConfig | None = None):
        self.max_open = max_open
        self.fetch = fetch
        self._fds: OrderedDict[str, int] = OrderedDict()
        self._pid = os.getpid()
        self._scratch = bytearray()
        self._remote = RangeFetcher(fetch)
        self._cache = ShardCache(fetch) if fetch is not None and fetch.cache_dir else None
        self._local: dict[str, str | None] = {}  # URL -> its cache copy (None: read by ranged GETs)
        self._held: dict[tuple[str, int, int], memoryview] = {}

    def prefetch(self, requests: Sequence[tuple[str, int, int]]) -> None:
        """Fetch the ``(path, offset, size)`` ranges of remote, uncached shards now, coalesced (local: nothing to do).

        They are held until read; what an earlier prefetch held and nobody read is dropped.
        """
        self._held = {}
        wanted = [r for r in dict.fromkeys(requests) if is_remote(r[0]) and self._copy(r[0]) is None]
        self._held = dict(zip(wanted, self._remote.fetch(wanted), strict=True))

    @property
    def requests(self) -> int:
        """Ranged GETs this reader sent in this process."""
        return self._remote.requests

    def _copy(self, url: str) -> str | None:
        if url not in self._local:
            self._local[url] = self._cache.local(url) if self._cache is not None else None
        return self._local[url]

    def read(self, path: str, offset: int, size: int) -> bytearray:
        """``size`` bytes at ``offset`` of ``path``, in a fresh writable buffer."""
        data = bytearray(size)  # writable, so numpy/torch views of it are too
        self.read_into(path, offset, memoryview(data))
        return data

    def read_scratch(self, path: str, offset: int, size: int) -> memoryview:
        """Like :meth:`read`, into a buffer this reader reuses: valid only until its next ``read_scratch``.

        For data copied out at once (the fbank): a fresh buffer of that size would be fresh memory every time.
        """
        if len(self._scratch) < size:
            self._scratch = bytearray(size)
        view = memoryview(self._scratch)[:size]
        self.read_into(path, offset, view)
        return view

    def read_into(self, path: str, offset: int, out: memoryview) -> None:
        """Fill ``out`` with the bytes at ``offset`` of ``path``."""
        size = len(out)
        if is_remote(path):
            held = self._held.pop((path, offset, size), None)
            copy = self._copy(path) if held is None else None
            if copy is None:
                out[:] = held if held is not None else self._remote.fetch([(path, offset, size)])[0]
                return
            path = copy
        fd = self._fd(local_path(path))
        got = os.preadv(fd, [out], offset) if size else 0
        if got != size:
            raise ValueError(
                f"shard {path} is shorter than its index says ({size} bytes at offset {offset}, got {got}): "
                "truncated or replaced after it was written"
            )

    def _fd(self, path: str) -> int:
        if os.getpid() != self._pid:  # a forked worker: its parent's descriptors are not ours to close
            self._fds = OrderedDict()
            self._pid = os.getpid()
        fd = self._fds.get(path)
        if fd is None:
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError as err:
                raise FileNotFoundError(f"cannot open shard {path}: {err.strerror}") from None
            self._fds[path] = fd
            if len(self._fds) > self.max_open:
                os.close(self._fds.popitem(last=False)[1])
        else:
            self._fds.move_to_end(path)
        return fd

    def close(self) -> None:
        if os.getpid() == self._pid:
            for fd in self._fds.values():
                os.close(fd)
        self._fds = OrderedDict()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001, S110 - interpreter shutdown
            pass

    def __getstate__(self) -> dict:
        return {"max_open": self.max_open, "fetch": self.fetch}  # descriptors never travel to another process

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["max_open"], state.get("fetch"))
