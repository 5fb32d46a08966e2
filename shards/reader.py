"""Stream mode: avtta shards -> model-ready batches through webdataset's sequential tar iterators.

The ``access="stream"`` reader of :func:`avtta.manifests.open_dataset`, for storage where only sequential reads are
cheap (the default, :mod:`.indexed`, reads by random access). Both modes share the input transforms
(:mod:`.transforms`), the settings, the frame decode, the key join and the loader shell (:mod:`.loader`), and give
the same samples with identical tensors, in different orders.

Tar shards are read with the ``webdataset`` library's tar iterators inside torch ``DataLoader`` workers. Each
worker decodes only what the model needs (the fbank and one frame), applies the CAV-MAE transforms and yields single
samples; the main process groups them into batches of exactly ``batch_size`` (one partial batch at the end, as the
reference ``DataLoader(drop_last=False)``), so the number and size of batches do not depend on ``num_workers``.

Shuffling is seeded and independent of the worker count: the shard order is permuted with ``random.Random(seed)``
and dealt to a fixed number of sample streams (``MAX_STREAMS``); each stream shuffles its samples through a buffer
(``shuffle_buffer``, a setting of this mode only) seeded with ``(seed, stream)``; DataLoader workers each run some
streams, and the main process puts the samples back into round-robin stream order. The same seed and shards give the
same batches with 0, 1 or 8 workers. The pipeline writes clips in a hash-based order, so shards mix classes and a
bounded buffer suffices.

Two shard sets can be read as one ("both modalities corrupted"): frames from one set, fbank from the other. The
catalog level joins them by key (:func:`.loader.join_keys`) and hands over the pairs of shards that hold the joined
clips; each pair is merged by key while streaming.
"""

from __future__ import annotations

import json
import logging
import random
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info
from webdataset.tariterators import group_by_keys, tar_file_expander

from .fetch import FetchConfig, ShardCache, open_stream
from .loader import Loader, ReaderConfig, load_image, resolve_pin_memory
from .schema import FBANK_FIELD, FRAME_FIELD, LABEL_FIELD, META_FIELD, decode_npy
from .storage import remote_errors
from .transforms import fill_fbank, fill_image, fixed_frame_index, frame_index, load_fbank

MAX_STREAMS = 8  # sample streams per shard set: the parallelism available to DataLoader workers
CHUNK = 8  # samples of one stream sent together from a DataLoader worker (fewer inter-process transfers)
SHUFFLE_BUFFER = 1000  # samples held by the buffer shuffle, over all streams

log = logging.getLogger(__name__)


def _iter_raw(
    paths: Sequence[str], select: Any = None, cache: ShardCache | None = None, fetch: FetchConfig | None = None
):
    """The raw samples of tar shards, read front to back (local files, cache copies or sequential GETs)."""
    for path in paths:
        with open_stream(str(path), fetch, cache) as stream, remote_errors(str(path)):
            files = tar_file_expander([{"url": str(path), "stream": stream}], select_files=select)
            yield from group_by_keys(files)


class _MemberFilter:
    """Which tar members to read when the frame is fixed and known: only that frame (others' bytes are skipped)."""

    def __init__(self, frame: int):
        self.frame = frame
        self.wanted = tuple("." + f for f in (FBANK_FIELD, LABEL_FIELD, FRAME_FIELD.format(frame), META_FIELD))

    def __call__(self, name: str) -> bool:
        return name.endswith(self.wanted)


def _member_filter(cfg: ReaderConfig, num_frames: int | None) -> _MemberFilter | None:
    k = fixed_frame_index(cfg.frame, num_frames) if num_frames else None
    return None if k is None else _MemberFilter(k)


def _audio_member_filter(name: str) -> bool:
    return name.endswith(("." + FBANK_FIELD, "." + META_FIELD))


class ShardStream(IterableDataset):
    """Samples of one shard set, or of two joined by key (frames from ``paths``, fbank from ``audio_paths``).

    Args:
        paths: the shards, in the set's order.
        cfg: the reader settings.
        audio_paths: for a joined pair, the shard of the audio set that holds the clips of each shard in ``paths``
            (the pairs :func:`avtta.manifests.open_dataset` derives from the key join); each pair is merged by key.
        num_frames: the frames every sample holds, when known: a fixed frame is then read alone.
        shuffle_buffer: samples held by the buffer shuffle (over all streams; 1 or less: no buffer shuffle).
        fetch: how shards named by URLs are read (:mod:`.fetch`: sequential GETs, or a local cache).
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        cfg: ReaderConfig,
        audio_paths: Sequence[str | Path] | None = None,
        num_frames: int | None = None,
        shuffle_buffer: int = SHUFFLE_BUFFER,
        fetch: FetchConfig | None = None,
    ):
        super().__init__()
        self.fetch = fetch
        self.paths = [str(p) for p in paths]
        self.audio_paths = [str(p) for p in audio_paths] if audio_paths is not None else None
        if self.audio_paths is not None and len(self.audio_paths) != len(self.paths):
            raise ValueError(
                f"cannot join shard sets with {len(self.paths)} and {len(self.audio_paths)} shards: "
                "both must come from the same job"
            )
        self.cfg = cfg
        self.shuffle_buffer = shuffle_buffer
        self.select = _member_filter(cfg, num_frames)  # None: read every member
        self.epoch = 0

    @property
    def num_streams(self) -> int:
        """Fixed number of sample streams (independent of the DataLoader worker count), at most ``MAX_STREAMS``."""
        return max(1, min(len(self.paths), MAX_STREAMS))

    def _stream_shards(self) -> list[list[int]]:
        order = list(range(len(self.paths)))
        if self.cfg.shuffle:
            random.Random(f"{self.cfg.seed}:{self.epoch}:shards").shuffle(order)
        v = self.num_streams
        return [order[i::v] for i in range(v)]

    def _samples(self, shard_ids: list[int]) -> Iterator[dict[str, Any]]:
        fetch = self.fetch
        cache = ShardCache(fetch) if fetch is not None and fetch.cache_dir else None
        for i in shard_ids:
            vid = _iter_raw([self.paths[i]], self.select, cache, fetch)
            if self.audio_paths is None:
                yield from vid
                continue
            yield from _merge_by_key(vid, _iter_raw([self.audio_paths[i]], _audio_member_filter, cache, fetch))

    def _stream(self, v: int, shard_ids: list[int]) -> Iterator[dict[str, Any]]:
        """Stream ``v``: its shards, a buffer shuffle and per-sample randomness all seeded by (seed, epoch, v)."""
        rng = random.Random(f"{self.cfg.seed}:{self.epoch}:{v}:samples")
        gen = torch.Generator().manual_seed((self.cfg.seed * 1_000_003 + self.epoch * 1009 + v) & 0x7FFFFFFF)
        source = self._samples(shard_ids)
        if self.cfg.shuffle and self.shuffle_buffer > 1:
            source = _shuffle(source, max(2, self.shuffle_buffer // self.num_streams), rng)
        chunk: list[dict[str, Any]] = []
        for raw in source:
            chunk.append(self._transform(raw, rng, gen))
            if len(chunk) == CHUNK:
                yield _pack(chunk, v)
                chunk = []
        if chunk:
            yield _pack(chunk, v)
        yield {"_stream": v, "_end": True}

    def iter_samples(self) -> Iterator[dict[str, Any]]:
        """All samples in canonical order, in this process (what a DataLoader with any worker count yields)."""
        return _unpack(canonical_order(iter(self), self.num_streams))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """This worker's streams, round robin; items are tagged with their stream for :func:`canonical_order`."""
        info = get_worker_info()
        wid, n = (info.id, info.num_workers) if info is not None else (0, 1)
        streams = [self._stream(v, ids) for v, ids in enumerate(self._stream_shards()) if v % n == wid]
        while streams:
            for it in list(streams):
                item = next(it, None)
                if item is None:
                    streams.remove(it)
                else:
                    yield item

    def _transform(self, raw: dict[str, Any], rng: random.Random, gen: torch.Generator) -> dict[str, Any]:
        cfg = self.cfg
        if self.select is not None:
            k = self.select.frame
            if FRAME_FIELD.format(k) not in raw:
                raise ValueError(f"sample {raw.get('__key__')} in {raw.get('__url__')} has no frame {k}")
        else:
            frames = [f for f in raw if f.startswith("frame_") and f.endswith(".jpg")]
            if not frames:
                raise ValueError(f"sample {raw.get('__key__')} in {raw.get('__url__')} has no frames")
            k = frame_index(cfg.frame, len(frames), rng)
        fbank = load_fbank(decode_npy(raw[FBANK_FIELD]), cfg.target_length, cfg.freqm, cfg.timem, gen)
        out = {
            "audio": fbank,  # raw float16; normalised in collate()
            "video": load_image(raw[FRAME_FIELD.format(k)], cfg.im_res),  # uint8; normalised in collate()
            "label": int(raw[LABEL_FIELD]),
            "key": raw["__key__"],
        }
        if cfg.with_metadata:
            out["metadata"] = json.loads(raw[META_FIELD])
        return out


def _merge_by_key(vid: Iterator[dict[str, Any]], aud: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Merge a pair of shards of two joined sets: frames from ``vid``, fbank from ``aud``, for the keys both hold.

    The pair comes from the key join (:func:`.loader.join_keys`), which decided which clips are read and counted
    those without a pair: here they are only skipped.
    """
    audio = {a["__key__"]: a for a in aud}  # a shard is small (hundreds of fbanks): index it, stream the frames
    for v in vid:
        a = audio.get(v["__key__"])
        if a is None:
            continue
        v = dict(v)
        v[FBANK_FIELD] = a[FBANK_FIELD]
        v["audio_json"] = a[META_FIELD]
        yield v


def _pack(samples: list[dict[str, Any]], stream: int) -> dict[str, Any]:
    """Group a few samples of one stream. In a DataLoader worker they are stacked (one shared-memory transfer per
    chunk instead of two per sample); in-process they stay a list (no copy)."""
    in_worker = get_worker_info() is not None
    out = {
        "audio": torch.stack([x["audio"] for x in samples]) if in_worker else [x["audio"] for x in samples],
        "video": torch.stack([x["video"] for x in samples]) if in_worker else [x["video"] for x in samples],
        "label": [x["label"] for x in samples],
        "key": [x["key"] for x in samples],
        "_stream": stream,
    }
    if "metadata" in samples[0]:
        out["metadata"] = [x["metadata"] for x in samples]
    return out


def _unpack(chunks: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for c in chunks:
        for i, key in enumerate(c["key"]):
            sample = {"audio": c["audio"][i], "video": c["video"][i], "label": c["label"][i], "key": key}
            if "metadata" in c:
                sample["metadata"] = c["metadata"][i]
            yield sample


def canonical_order(items: Iterator[dict[str, Any]], num_streams: int) -> Iterator[dict[str, Any]]:
    """Reorder tagged items into round robin over streams 0..V-1 (skipping finished ones).

    Whatever the number of DataLoader workers (which each run some of the streams), the samples then come out in the
    same order, so results do not depend on ``num_workers``. Buffering stays small: workers also go round robin.
    """
    pending: list[deque[dict[str, Any]]] = [deque() for _ in range(num_streams)]
    done = [False] * num_streams
    v = 0
    items = iter(items)
    while not all(done) or any(pending):
        if pending[v]:
            yield pending[v].popleft()
            v = (v + 1) % num_streams
            continue
        if done[v]:
            v = (v + 1) % num_streams
            continue
        item = next(items, None)
        if item is None:
            raise RuntimeError("shard reader: a stream ended without its end marker")
        s = item.pop("_stream")
        if item.get("_end"):
            done[s] = True
        else:
            pending[s].append(item)


def _shuffle(source: Iterator[Any], bufsize: int, rng: random.Random) -> Iterator[Any]:
    """Buffer shuffle: fill, then emit a random element and replace it (deterministic given ``rng``)."""
    buf: list[Any] = []
    for item in source:
        if len(buf) < bufsize:
            buf.append(item)
            continue
        j = rng.randrange(len(buf))
        buf[j], item = item, buf[j]
        yield item
    rng.shuffle(buf)
    yield from buf


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack samples into one float32 batch, converting and normalising in place (one allocation per tensor)."""
    b = len(samples)
    audio = torch.empty((b, *samples[0]["audio"].shape), dtype=torch.float32)
    video = torch.empty((b, *samples[0]["video"].shape), dtype=torch.float32)
    for i, s in enumerate(samples):
        fill_fbank(audio[i], s["audio"])
        fill_image(video[i], s["video"])
    batch = {
        "audio": audio,
        "video": video,
        "label": torch.tensor([s["label"] for s in samples], dtype=torch.long),
        "key": [s["key"] for s in samples],
    }
    if "metadata" in samples[0]:
        batch["metadata"] = [s["metadata"] for s in samples]
    return batch


class BatchLoader(Loader):
    """The stream mode's batches over a :class:`ShardStream` (see :class:`.loader.Loader`)."""

    def __init__(
        self,
        stream: ShardStream,
        num_samples: int,
        batch_size: int,
        num_workers: int = 2,
        drop_last: bool = False,
        pin_memory: bool | None = None,
    ):
        super().__init__(num_samples, batch_size, min(num_workers, stream.num_streams), drop_last)
        self.dataset = self.stream = stream
        self.pin_memory = resolve_pin_memory(pin_memory)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        loader = self.data_loader(self.stream, self.num_workers, prefetch=8, batch_size=None)
        pending: list[dict[str, Any]] = []
        for sample in _unpack(canonical_order(loader, self.stream.num_streams)):
            pending.append(sample)
            if len(pending) == self.batch_size:
                yield self._finish(collate(pending))
                pending = []
        if pending and not self.drop_last:
            yield self._finish(collate(pending))

    def _finish(self, batch: dict[str, Any]) -> dict[str, Any]:
        if self.pin_memory:
            batch["audio"] = batch["audio"].pin_memory()
            batch["video"] = batch["video"].pin_memory()
        return batch
