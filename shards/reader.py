"""Streaming reader: avtta shards -> model-ready batches (CAV-MAE input transforms), deterministic shuffling.

The input transforms here (``load_image``, ``load_fbank``, ``fill_*``) are shared with the random-access reader
(:mod:`.indexed`, the default of ``open_dataset``); this sequential path (``access="stream"``) suits storage where
only sequential reads are cheap.

Tar shards are read with the ``webdataset`` library's tar iterators inside torch ``DataLoader`` workers. Each
worker decodes only what the model needs (the fbank and one frame), applies the CAV-MAE transforms and yields single
samples; the main process groups them into batches of exactly ``batch_size`` (one partial batch at the end, as the
reference ``DataLoader(drop_last=False)``), so the number and size of batches do not depend on ``num_workers``.

Shuffling is seeded and independent of the worker count: the shard order is permuted with ``random.Random(seed)``
and dealt to a fixed number of sample streams (``MAX_STREAMS``); each stream shuffles its samples through a buffer
seeded with ``(seed, stream)``; DataLoader workers each run some streams, and the main process puts the samples back
into round-robin stream order. The same seed and shards give the same batches with 0, 1 or 8 workers. The pipeline
writes clips in a hash-based order, so shards mix classes and a bounded buffer suffices.

Two shard sets can be read as one ("both modalities corrupted"): frames from one set, fbank from the other, joined
by key; both must come from the same job (same clips and shard boundaries), which the join checks.
"""

from __future__ import annotations

import io
import json
import logging
import random
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torchvision.io import ImageReadMode, decode_jpeg  # imported before DataLoader workers fork, not in each
from webdataset.tariterators import tarfile_samples

from .schema import EVAL_FRAME, FBANK_FIELD, FRAME_FIELD, LABEL_FIELD, META_FIELD, decode_npy

MAX_STREAMS = 8  # sample streams per shard set: the parallelism available to DataLoader workers
CHUNK = 8  # samples of one stream sent together from a DataLoader worker (fewer inter-process transfers)
FBANK_MEAN = -5.081  # CAV-MAE normalisation, used for every data set (spec item 23)
FBANK_STD = 4.4849
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReaderConfig:
    """How samples become model inputs."""

    frame: str | int = "eval"  # "eval" (frame 5, READ/BriMPR), "random" (training), or a frame index
    im_res: int = 224
    target_length: int = 1024
    freqm: int = 0  # SpecAugment masks (CAV-MAE fine-tuning: 48 / 192); 0 at test time
    timem: int = 0
    shuffle: bool = True
    shuffle_buffer: int = 1000
    seed: int = 0
    with_metadata: bool = False


def eval_frame_index(num_frames: int) -> int:
    """Frame 5 (READ/BriMPR: ``int(total_frame / 2)`` of 10); the middle one when a clip has fewer frames."""
    return EVAL_FRAME if num_frames > EVAL_FRAME else num_frames // 2


def _frame_index(cfg: ReaderConfig, num_frames: int, rng: random.Random) -> int:
    if cfg.frame == "eval":
        return eval_frame_index(num_frames)
    if cfg.frame == "random":
        return rng.randrange(num_frames)
    idx = int(cfg.frame)
    if not 0 <= idx < num_frames:
        raise ValueError(f"frame index {idx} out of range: the shards hold {num_frames} frames")
    return idx


def image_transform(jpeg: bytes, im_res: int) -> torch.Tensor:
    """The CAV-MAE eval image transform: Resize(im_res, bicubic) + CenterCrop + ToTensor + Normalize."""
    return normalize_images(load_image(jpeg, im_res)[None])[0]


def decode_rgb(jpeg: bytes | bytearray) -> torch.Tensor:
    """JPEG bytes -> uint8 [3, H, W] RGB.

    ``torchvision.io.decode_jpeg`` gives the same pixels as PIL (both libjpeg-turbo with its default IDCT and fancy
    upsampling; a test holds them equal on real and generated frames) about 25 % faster and already channel-first.
    Anything it cannot decode goes through PIL, as the reference does.
    """
    data = jpeg if isinstance(jpeg, bytearray) else bytearray(jpeg)  # torch wants writable memory
    try:
        return decode_jpeg(torch.frombuffer(data, dtype=torch.uint8), mode=ImageReadMode.RGB)
    except RuntimeError:
        img = Image.open(io.BytesIO(jpeg))
        return torch.from_numpy(np.array(img.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1)


def load_image(jpeg: bytes | bytearray, im_res: int) -> torch.Tensor:
    """JPEG -> uint8 [3, im_res, im_res]: decode, then Resize(im_res, bicubic) + CenterCrop unless already that size.

    The resize is PIL's, as in the reference ``transforms.Resize`` on a PIL image.
    """
    x = decode_rgb(jpeg)
    h, w = x.shape[1:]
    if (w, h) == (im_res, im_res):
        return x
    img = Image.fromarray(x.permute(1, 2, 0).numpy())
    if w <= h:
        nw, nh = im_res, int(im_res * h / w)
    else:
        nw, nh = int(im_res * w / h), im_res
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.BICUBIC)
    left, top = int(round((nw - im_res) / 2.0)), int(round((nh - im_res) / 2.0))
    img = img.crop((left, top, left + im_res, top + im_res))
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)  # np.array: one writable copy


def normalize_images(x: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> float32 ToTensor + ImageNet Normalize (batched: cheaper than per sample)."""
    mean = torch.tensor(IMAGE_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD, device=x.device).view(1, 3, 1, 1)
    return x.float().div_(255.0).sub_(mean).div_(std)


def normalize_fbank(x: torch.Tensor) -> torch.Tensor:
    """Raw log-mel fbank -> the CAV-MAE model input (mean -5.081, std 4.4849 for every data set)."""
    return (x.float() - FBANK_MEAN) / FBANK_STD


def fbank_transform(fbank: np.ndarray, cfg: ReaderConfig, gen: torch.Generator | None) -> torch.Tensor:
    """float16 [T,128] -> normalised float32 [target_length, 128], with optional SpecAugment masks."""
    return normalize_fbank(load_fbank(fbank, cfg, gen))


def load_fbank(fbank: np.ndarray, cfg: ReaderConfig, gen: torch.Generator | None) -> torch.Tensor:
    """Raw fbank -> [target_length, 128] (zero-padded / cut; masks set to 0 = the reference's pre-normalisation
    masking), kept in its stored dtype; normalised later, batched."""
    x = torch.from_numpy(np.asarray(fbank))
    t = x.shape[0]
    if t < cfg.target_length:
        x = torch.nn.functional.pad(x, (0, 0, 0, cfg.target_length - t))
    elif t > cfg.target_length:
        x = x[: cfg.target_length]
    if cfg.freqm or cfg.timem:
        x = x.clone()
        if cfg.freqm:
            w = int(torch.randint(0, cfg.freqm + 1, (1,), generator=gen))
            f0 = int(torch.randint(0, x.shape[1] - w + 1, (1,), generator=gen))
            x[:, f0 : f0 + w] = 0.0
        if cfg.timem:
            w = int(torch.randint(0, cfg.timem + 1, (1,), generator=gen))
            t0 = int(torch.randint(0, x.shape[0] - w + 1, (1,), generator=gen))
            x[t0 : t0 + w, :] = 0.0
    return x


def _iter_raw(paths: Sequence[str], select: Any = None) -> Iterator[dict[str, Any]]:
    yield from tarfile_samples([{"url": str(p)} for p in paths], select_files=select)


class _MemberFilter:
    """Which tar members to read when the frame is fixed and known: only that frame (others' bytes are skipped)."""

    def __init__(self, frame: int):
        self.frame = frame
        self.wanted = tuple("." + f for f in (FBANK_FIELD, LABEL_FIELD, FRAME_FIELD.format(frame), META_FIELD))

    def __call__(self, name: str) -> bool:
        return name.endswith(self.wanted)


def _member_filter(cfg: ReaderConfig, num_frames: int | None) -> _MemberFilter | None:
    if cfg.frame == "random" or not num_frames:
        return None
    k = eval_frame_index(num_frames) if cfg.frame == "eval" else int(cfg.frame)
    if not 0 <= k < num_frames:
        raise ValueError(f"frame index {k} out of range: the shards hold {num_frames} frames")
    return _MemberFilter(k)


def _audio_member_filter(name: str) -> bool:
    return name.endswith(("." + FBANK_FIELD, "." + META_FIELD))


class ShardStream(IterableDataset):
    """Samples of one shard set, or of two joined by key (frames from ``video_paths``, fbank from ``audio_paths``)."""

    def __init__(
        self,
        paths: Sequence[str | Path],
        cfg: ReaderConfig,
        audio_paths: Sequence[str | Path] | None = None,
        num_frames: int | None = None,
    ):
        super().__init__()
        self.paths = [str(p) for p in paths]
        self.audio_paths = [str(p) for p in audio_paths] if audio_paths is not None else None
        if self.audio_paths is not None and len(self.audio_paths) != len(self.paths):
            raise ValueError(
                f"cannot join shard sets with {len(self.paths)} and {len(self.audio_paths)} shards: "
                "both must come from the same job"
            )
        self.cfg = cfg
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
        for i in shard_ids:
            vid = _iter_raw([self.paths[i]], self.select)
            if self.audio_paths is None:
                yield from vid
                continue
            yield from _join_by_key(
                vid, _iter_raw([self.audio_paths[i]], _audio_member_filter), self.paths[i], self.audio_paths[i]
            )

    def _stream(self, v: int, shard_ids: list[int]) -> Iterator[dict[str, Any]]:
        """Stream ``v``: its shards, a buffer shuffle and per-sample randomness all seeded by (seed, epoch, v)."""
        rng = random.Random(f"{self.cfg.seed}:{self.epoch}:{v}:samples")
        gen = torch.Generator().manual_seed((self.cfg.seed * 1_000_003 + self.epoch * 1009 + v) & 0x7FFFFFFF)
        source = self._samples(shard_ids)
        if self.cfg.shuffle and self.cfg.shuffle_buffer > 1:
            source = _shuffle(source, max(2, self.cfg.shuffle_buffer // self.num_streams), rng)
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
            k = _frame_index(cfg, len(frames), rng)
        out = {
            "audio": load_fbank(decode_npy(raw[FBANK_FIELD]), cfg, gen),  # raw float16; normalised in collate()
            "video": load_image(raw[FRAME_FIELD.format(k)], cfg.im_res),  # uint8; normalised in collate()
            "label": int(raw[LABEL_FIELD]),
            "key": raw["__key__"],
        }
        if cfg.with_metadata:
            out["metadata"] = json.loads(raw[META_FIELD])
        return out


def _join_by_key(
    vid: Iterator[dict[str, Any]], aud: Iterator[dict[str, Any]], vpath: str, apath: str
) -> Iterator[dict[str, Any]]:
    """Merge two shards of the same job: frames from ``vid``, fbank from ``aud``, for the keys both hold.

    Both shards list their clips in the job's order; a clip that failed in one set only is skipped (it has no pair).
    """
    audio = {}
    order: list[str] = []
    for a in aud:  # a shard is small (hundreds of fbanks): index it by key, then stream the frames' shard
        audio[a["__key__"]] = a
        order.append(a["__key__"])
    matched = 0
    for v in vid:
        a = audio.get(v["__key__"])
        if a is None:
            continue
        matched += 1
        v = dict(v)
        v[FBANK_FIELD] = a[FBANK_FIELD]
        v["audio_json"] = a[META_FIELD]
        yield v
    if order and not matched:
        raise ValueError(f"shards {vpath} and {apath} have no clip in common: they cannot be joined")


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


_IMAGE_MEAN_255 = torch.tensor(IMAGE_MEAN).view(3, 1, 1).mul_(255.0)
_IMAGE_STD_255 = torch.tensor(IMAGE_STD).view(3, 1, 1).mul_(255.0)


def fill_fbank(out: torch.Tensor, fbank: torch.Tensor) -> None:
    """Write one normalised fbank into ``out`` (a float32 [T, 128] row of a batch): copy, then normalise in place.

    Per sample, so the three passes run over data still in the CPU cache.
    """
    out.copy_(fbank)
    out.sub_(FBANK_MEAN).div_(FBANK_STD)


def fill_image(out: torch.Tensor, image: torch.Tensor) -> None:
    """Write one normalised uint8 [3, H, W] frame into ``out`` (float32): ToTensor + Normalize, per sample."""
    out.copy_(image)
    out.sub_(_IMAGE_MEAN_255).div_(_IMAGE_STD_255)  # == (x / 255 - mean) / std to within 1 ulp


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


class BatchLoader:
    """Iterable of batches (dicts with audio, video, label, key). ``len()`` is the number of batches."""

    def __init__(
        self,
        stream: ShardStream,
        num_samples: int,
        batch_size: int,
        num_workers: int = 2,
        drop_last: bool = False,
        pin_memory: bool | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.stream = stream
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.num_workers = max(0, min(num_workers, stream.num_streams))
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory

    def set_epoch(self, epoch: int) -> None:
        """Change the shuffling for another epoch (training)."""
        self.stream.epoch = epoch

    def __len__(self) -> int:
        full, rest = divmod(self.num_samples, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        loader = DataLoader(
            self.stream,
            batch_size=None,
            num_workers=self.num_workers,
            pin_memory=False,
            persistent_workers=False,
            prefetch_factor=8 if self.num_workers else None,
        )
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
