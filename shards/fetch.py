"""How the readers get shard bytes that are not on a local disk: coalesced ranged GETs and a local shard cache.

Shards named by a URL (``s3://bucket/prefix/shard-000000.tar``, or any other fsspec scheme) are read through fsspec,
the library the storage layer is built on:

- The index mode asks for a whole batch's byte ranges at once (:meth:`RangeFetcher.fetch`). Ranges of one shard
  that lie at most ``max_gap`` bytes apart are merged into one GET (a sample's fbank and the frame after it are
  separated by a 512-byte tar header, plus the frames in between), and the GETs of a batch run concurrently
  (``cat_ranges`` of fsspec's asynchronous filesystems). Fetching a few hundred kilobytes too many costs less than
  one more request on an object store.
- The stream mode reads each tar front to back through one file object that fetches ``block_size`` bytes per GET
  (:func:`open_stream`).
- With a cache folder (:class:`ShardCache`) a shard is downloaded whole the first time it is touched and read from
  local disk afterwards, by the next method, seed or run. The cache file is named by the shard's sha256 from
  ``shards.parquet``, so a rewritten shard is never served from a stale copy; the download is hashed and checked
  against it, written under a temporary name and renamed into place (a killed download leaves no file that is ever
  used), and a cache file of the wrong size is fetched again. Shards without a recorded sha256 are not cached.

Nothing here keeps a network client across a fork: DataLoader workers and Ray actors build their own from the
(picklable) :class:`FetchConfig`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from . import storage

log = logging.getLogger(__name__)

MAX_GAP = 256 << 10  # merge two wanted ranges of one shard when at most 256 KiB apart: one more GET costs about what
# 256 KiB more of one costs (a few ms of request latency against ~100 MB/s per connection, on loopback and on a cloud
# object store alike); it spans the frames between a sample's fbank and the frame read (10 frames of 224 px are about
# 150 KiB), but seldom reaches into the next sample (a fbank alone is 256 KiB)
STREAM_BLOCK = 8 << 20  # bytes per GET of the stream mode's sequential reads
_DOWNLOAD_BLOCK = 8 << 20

__all__ = [
    "MAX_GAP",
    "FetchConfig",
    "RangeFetcher",
    "ShardCache",
    "coalesce",
    "is_remote",
    "open_stream",
]


def is_remote(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a URL of a non-local filesystem (``file://`` and plain paths are local)."""
    return not storage.is_local(path)


def local_path(path: str | os.PathLike) -> str:
    """A local path or ``file://`` URL -> the path."""
    return str(storage.local_path(path))


@dataclass(frozen=True)
class FetchConfig:
    """How a reader fetches remote shards (picklable: it travels to DataLoader workers and Ray actors).

    Args:
        cache_dir: keep fetched shards in this local folder (None: no cache, ranged reads every time).
        digests: shard URL -> (bytes, sha256) from the set's ``shards.parquet``: the cache key and the check of a
            download.
        max_gap: ranges of one shard at most this many bytes apart are fetched by one GET.
        block_size: bytes per GET of the stream mode's sequential reads.

    The filesystem, its endpoint and the credentials come from :mod:`.storage` in each process (environment and
    AWS config files), never from here.
    """

    cache_dir: str | None = None
    digests: Mapping[str, tuple[int, str]] = field(default_factory=dict)
    max_gap: int = MAX_GAP
    block_size: int = STREAM_BLOCK


def coalesce(requests: Sequence[tuple[str, int, int]], max_gap: int) -> list[tuple[str, int, int, list[int]]]:
    """Merge byte ranges into GETs: ``(path, offset, size)`` requests -> ``(path, start, end, [request indices])``.

    Ranges of one path whose gap is at most ``max_gap`` bytes (overlapping ones included) share one GET.
    """
    order = sorted(range(len(requests)), key=lambda j: (requests[j][0], requests[j][1]))
    spans: list[list[Any]] = []
    for j in order:
        path, offset, size = requests[j]
        last = spans[-1] if spans else None
        if last is not None and last[0] == path and offset - last[2] <= max_gap:
            last[2] = max(last[2], offset + size)
            last[3].append(j)
        else:
            spans.append([path, offset, offset + size, [j]])
    return [(p, s, e, idx) for p, s, e, idx in spans]


class RangeFetcher:
    """Byte ranges of remote shards by coalesced, concurrent ranged GETs; ``requests`` counts the GETs sent."""

    def __init__(self, config: FetchConfig | None = None):
        self.config = config or FetchConfig()
        self.requests = 0

    def fetch(self, requests: Sequence[tuple[str, int, int]]) -> list[memoryview]:
        """The bytes of every ``(url, offset, size)`` request, in order (views into the fetched spans)."""
        if not requests:
            return []
        spans = coalesce(requests, self.config.max_gap)
        fs, _ = storage.resolve(spans[0][0])
        paths = [storage.resolve(p)[1] for p, _, _, _ in spans]
        self.requests += len(spans)
        with storage.remote_errors(spans[0][0]):
            got = fs.cat_ranges(paths, [s for _, s, _, _ in spans], [e for _, _, e, _ in spans], on_error="return")
        out: list[memoryview | None] = [None] * len(requests)
        for (url, start, _, members), data in zip(spans, got, strict=True):
            if isinstance(data, BaseException):
                with storage.remote_errors(url):
                    raise data
            view = memoryview(data)
            for j in members:
                _, offset, size = requests[j]
                part = view[offset - start : offset - start + size]
                if len(part) != size:
                    raise ValueError(
                        f"shard {url} is shorter than its index says ({size} bytes at offset {offset}, got "
                        f"{len(part)}): truncated or replaced after it was written"
                    )
                out[j] = part
        return out  # type: ignore[return-value]


class ShardCache:
    """Whole shards downloaded once into a local folder, named by their sha256 (see the module docstring)."""

    def __init__(self, config: FetchConfig):
        if config.cache_dir is None:
            raise ValueError("ShardCache needs FetchConfig.cache_dir")
        self.config = config
        self.folder = Path(config.cache_dir)
        self.downloads = 0  # shards fetched by this process
        self._uncached_warned = False

    def path_of(self, url: str) -> Path | None:
        """Where the cache keeps ``url`` (None: its sha256 is unknown, it is not cached)."""
        digest = self.config.digests.get(url)
        if not digest or not digest[1]:
            if not self._uncached_warned:
                log.warning("shard %s has no sha256 in its shards.parquet: read without the cache", url)
                self._uncached_warned = True
            return None
        return self.folder / digest[1][:2] / f"{digest[1]}.tar"

    def local(self, url: str) -> str | None:
        """A local copy of ``url``, downloaded first if the cache lacks it (None: not cacheable)."""
        path = self.path_of(url)
        if path is None:
            return None
        size, sha = self.config.digests[url]
        if _has_size(path, size):
            return str(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(path.with_name(path.name + ".lock")):  # one download per shard among this host's processes
            if not _has_size(path, size):
                self._download(url, path, size, sha)
        return str(path)

    def _download(self, url: str, path: Path, size: int, sha: str) -> None:
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        h = hashlib.sha256()
        try:
            with storage.open_read(url, block_size=_DOWNLOAD_BLOCK) as src, open(tmp, "wb") as dst:
                for block in iter(lambda: src.read(_DOWNLOAD_BLOCK), b""):
                    h.update(block)
                    dst.write(block)
                dst.flush()
                os.fsync(dst.fileno())
            got = tmp.stat().st_size
            if got != size or h.hexdigest() != sha:
                raise ValueError(
                    f"shard {url} does not match its shards.parquet ({got} bytes, sha256 {h.hexdigest()}; recorded "
                    f"{size} bytes, {sha}): it was replaced after the set was written"
                )
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self.downloads += 1
        log.debug("cached %s as %s", url, path)


def _has_size(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size
    except FileNotFoundError:
        return False


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def open_stream(path: str, config: FetchConfig | None = None, cache: ShardCache | None = None) -> IO[bytes]:
    """A file object that reads shard ``path`` front to back: a local file, a cached copy, or ``block_size`` GETs."""
    if not is_remote(path):
        return open(local_path(path), "rb")  # noqa: SIM115 - the caller closes it
    if cache is not None and (copy := cache.local(path)) is not None:
        return open(copy, "rb")  # noqa: SIM115
    config = config or FetchConfig()
    fs, rpath = storage.resolve(path)
    with storage.remote_errors(path):
        return fs.open(rpath, "rb", block_size=config.block_size, cache_type="readahead")
