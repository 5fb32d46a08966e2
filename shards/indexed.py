"""Index mode: model-ready batches straight from the byte ranges the member index records.

The default way :func:`avtta.manifests.open_dataset` reads a local catalog (``access="index"``); it shares the input
transforms (:mod:`.transforms`), the settings, the frame decode, the key join and the loader shell (:mod:`.loader`)
with the stream mode (:mod:`.reader`). Each sample costs two ``pread`` calls (its
fbank and the one frame the model sees), an npy view, one JPEG decode and the normalisation, written directly into
the batch tensor. It is a map-style dataset: a torch ``DataLoader`` with a batch sampler hands whole batches of
indices to its workers, which decode the frames into a shared-memory ring; the consuming process reads the fbanks
and normalises (see :class:`IndexedShards`). Batch memory is recycled (:class:`OutputBuffers`, :class:`FrameRing`):
fresh memory per batch cost more than the work itself.

A :class:`~.loader.SampleHook` (``hook=``) changes samples between their stored bytes and the input transforms: the
catalog layer's on-the-fly corruption of a clean set (``avtta.manifests.onthefly``). The workers then also make the
one corrupted frame the model sees and, when the hook changes the audio, decode the ``wav.flac`` waveform, corrupt
it and compute its fbank (float16, as stored), the costly parts, which scale with the workers; with
``hook.fbank_device`` the workers send the corrupted waveforms and the consuming process computes the batch's fbanks
on that device (CUDA).

The sample index (:class:`SampleRefs`) is columnar: numpy arrays of shard indices and byte ranges and the keys in one
buffer (:class:`Keys`), about 200 B a sample and no Python object per sample, built from the manifests' Arrow
columns without a Python loop over members.

Shuffling is a full permutation of the set, seeded by ``(seed, epoch)``; per-sample randomness (the random training
frame, SpecAugment masks) is seeded by ``(seed, epoch, sample)``. Batches therefore do not depend on the number of
workers. The samples are exactly those of the streaming reader (:class:`avtta.shards.reader.ShardStream`), with
identical tensors; only the order differs.
"""

from __future__ import annotations

import copy
import io
import json
import math
import multiprocessing as mp
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch.utils.data import Dataset, get_worker_info

from .fbank import compute_fbank, decode_flac, kaldi_fbank_batch
from .fetch import FetchConfig, is_remote
from .index import MemberReader
from .loader import Loader, ReaderConfig, SampleHook, decode_rgb, join_keys, load_image
from .schema import FBANK_DTYPE, FBANK_FIELD, FRAME_RE, META_FIELD, TARGET_LENGTH, WAVE_FIELD
from .transforms import NUM_MEL_BINS, fill_fbank, fill_image, frame_index, load_fbank


class Keys(Sequence[str]):
    """Sample keys as one UTF-8 buffer and their offsets: no Python object per sample while they are kept.

    A selection's keys live as long as its loader (and in every DataLoader worker); a list of strings costs about
    70 B a key and pages that forked workers copy as soon as they touch the reference counts. Keys are decoded when
    a batch names them (:meth:`take`).
    """

    def __init__(self, data: bytes, offsets: np.ndarray):
        self._data = data
        self._offsets = offsets  # int64 [N + 1]: key i is data[offsets[i]:offsets[i + 1]]

    @classmethod
    def from_arrow(cls, keys: pa.Array | pa.ChunkedArray) -> Keys:
        keys = pc.cast(keys, pa.large_string())
        keys = keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys
        if keys.null_count:
            raise ValueError("sample keys must not be null")
        _, offsets, data = keys.buffers()
        offsets = np.frombuffer(offsets, dtype=np.int64, count=len(keys) + 1, offset=keys.offset * 8)
        start, end = int(offsets[0]), int(offsets[-1])
        return cls(data.to_pybytes()[start:end] if data is not None else b"", offsets - start)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> str:  # type: ignore[override]
        i = range(len(self))[i]  # negative indices; IndexError out of range
        return self._data[self._offsets[i] : self._offsets[i + 1]].decode()

    def take(self, indices: Sequence[int] | np.ndarray) -> list[str]:
        """The keys at ``indices`` (one numpy gather per batch, not a lookup per sample)."""
        idx = np.asarray(indices, dtype=np.int64)
        data, starts, ends = self._data, self._offsets[idx].tolist(), self._offsets[idx + 1].tolist()
        return [data[a:b].decode() for a, b in zip(starts, ends, strict=True)]


@dataclass
class SampleRefs:
    """Where every sample of a selection lies: shard file indices and (offset, size) byte ranges, as numpy arrays.

    ``frames[i, k]`` is frame ``k`` of sample ``i`` (size -1 where a sample has fewer frames); ``meta`` is the
    metadata JSON member. Frames and metadata come from the video set, the fbank from the audio set (the same set
    unless two sets are joined). About 200 B a sample with 10 frames, and no Python object per sample, so the
    index of a large set is cheap to hold and to hand to DataLoader workers.
    """

    paths: list[str]
    keys: Keys
    labels: np.ndarray  # int64 [N], from the manifest (the same value as the <key>.cls member)
    video_shard: np.ndarray  # int32 [N] index into paths
    frames: np.ndarray  # int64 [N, F, 2]
    num_frames: np.ndarray  # int32 [N]
    meta: np.ndarray  # int64 [N, 2]
    audio_shard: np.ndarray  # int32 [N]
    fbank: np.ndarray  # int64 [N, 2]
    wave: np.ndarray | None = None  # int64 [N, 2]: the video set's wav.flac member (size -1 where it has none)

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def build(
        cls,
        samples: pa.Table,
        video_members: pa.Table,
        audio_members: pa.Table | None = None,
        names: tuple[str, str] = ("the video set", "the audio set"),
    ) -> SampleRefs:
        """Join manifests into references, column by column (Arrow and numpy; nothing per sample in Python).

        Args:
            samples: the video set's samples in reading order: ``shard`` (the shard's path, plain or dictionary
                encoded), ``key``, ``label``.
            video_members: the video set's member index: ``shard`` (path), ``key``, ``field``, ``offset``, ``size``.
            audio_members: the same for the set the fbank comes from (None: the video set; only its fbank rows are
                used). The two sets are joined by key (:func:`.loader.join_keys`): clips that failed in one set only
                are left out.
            names: the two sets, for messages.
        """
        keys, (vcode, paths) = _array(samples["key"]), _shard_codes(samples["shard"], [])
        labels = samples["label"].to_numpy().astype(np.int64)
        if audio_members is not None:
            afbank = audio_members.filter(pc.equal(audio_members["field"], FBANK_FIELD))
            akeys = _array(afbank["key"])
            joined = join_keys(keys.to_pylist(), akeys.to_pylist(), *names).keys  # (transient: keys only)
            keep = pc.is_in(keys, value_set=pa.array(joined, pa.string()))
            keys, vcode, labels = keys.filter(keep), vcode[_bools(keep)], labels[_bools(keep)]
            row = pc.index_in(keys, value_set=akeys).to_numpy(zero_copy_only=False)  # all found: joined
            acode, paths = _shard_codes(afbank["shard"], paths)
            ashard, fbank = acode[row], _ranges(afbank)[row]
        n = len(keys)
        mcode, paths = _shard_codes(video_members["shard"], paths)
        sample_of, first = _sample_of(vcode, keys, mcode, _array(video_members["key"]))
        field = _array(video_members["field"])
        ranges = _ranges(video_members)
        present = np.zeros(n, dtype=bool)
        present[sample_of[sample_of >= 0]] = True

        def one(name: str) -> tuple[np.ndarray, np.ndarray]:
            """(offset, size) of member ``name`` of every sample ((0, -1) where it has none), and where it has one."""
            rows = _bools(pc.equal(field, name)) & (sample_of >= 0)
            out = np.tile(np.array([0, -1], dtype=np.int64), (n, 1))
            out[sample_of[rows]] = ranges[rows]
            have = np.zeros(n, dtype=bool)
            have[sample_of[rows]] = True
            return out, have

        meta, _ = one(META_FIELD)
        wave, _ = one(WAVE_FIELD)
        if audio_members is None:
            fbank, has_fbank = one(FBANK_FIELD)
            ashard = vcode
        else:
            has_fbank = np.ones(n, dtype=bool)
        frames, num_frames, frames_ok = _frame_ranges(field, sample_of, ranges, n)
        if (first != np.arange(n)).any():
            present, meta, wave, frames, num_frames, frames_ok = (
                a[first] for a in (present, meta, wave, frames, num_frames, frames_ok)
            )
            if audio_members is None:
                fbank, has_fbank = fbank[first], has_fbank[first]
        bad = ~(present & has_fbank & frames_ok)
        if bad.any():
            i = int(np.argmax(bad))
            key, shard = keys[i].as_py(), paths[vcode[i]]
            if not present[i]:
                raise ValueError(f"sample {key!r} of the manifest is not in the member index of {shard}")
            if not has_fbank[i]:
                raise ValueError(f"sample {key!r} in {shard} has no {FBANK_FIELD} member")
            mine = _bools(pc.match_substring_regex(field, FRAME_RE.pattern)) & (sample_of == first[i])
            have = sorted(_frame_numbers(field.filter(pa.array(mine))).tolist())
            raise ValueError(f"sample {key!r} in {shard} has frames {have}, not 0..N-1")
        return cls(
            paths=paths,
            keys=Keys.from_arrow(keys),
            labels=labels,
            video_shard=vcode.astype(np.int32),
            frames=frames,
            num_frames=num_frames,
            meta=meta,
            audio_shard=ashard.astype(np.int32),
            fbank=fbank,
            wave=wave,
        )


def _array(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def _bools(mask: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A boolean Arrow column as numpy (nulls, which only null inputs give, count as False)."""
    return _array(mask).fill_null(False).to_numpy(zero_copy_only=False)


def _shard_codes(shard: pa.Array | pa.ChunkedArray, paths: list[str]) -> tuple[np.ndarray, list[str]]:
    """A shard column (paths, plain or dictionary encoded) -> an index into ``paths`` per row, and ``paths`` with the
    new paths appended (one list for both sets of a join)."""
    shard = _array(shard)
    if not pa.types.is_dictionary(shard.type):
        shard = pc.dictionary_encode(shard)
    if shard.null_count:
        raise ValueError("the shard column of a manifest must not be null")
    names = shard.dictionary.to_pylist()  # the distinct shards: a few per set
    slot = {p: i for i, p in enumerate(paths)}
    for p in names:
        slot.setdefault(p, len(slot))
    return np.asarray([slot[p] for p in names], dtype=np.int64)[shard.indices.to_numpy()], list(slot)


def _sample_of(vcode: np.ndarray, keys: pa.Array, mcode: np.ndarray, mkeys: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The sample (index into ``keys``; -1: none) each member row belongs to, matched on (shard, key), and the
    first listing of every sample (itself, unless the manifest lists a sample twice; its members go to the first).
    """
    if pc.count_distinct(keys).as_py() == len(keys):  # the usual case: keys alone identify the samples
        sample_of = pc.index_in(mkeys, value_set=keys).fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
        sample_of[(sample_of >= 0) & (vcode[sample_of] != mcode)] = -1  # the key, but in another shard
        return sample_of, np.arange(len(keys))

    def shard_key(codes: np.ndarray, k: pa.Array) -> pa.Array:
        return pc.binary_join_element_wise(pc.cast(pa.array(codes), pa.string()), k, "/")

    sample_key = shard_key(vcode, keys)
    first = pc.index_in(sample_key, value_set=sample_key).to_numpy(zero_copy_only=False)
    sample_of = pc.index_in(shard_key(mcode, mkeys), value_set=sample_key).fill_null(-1)
    return sample_of.to_numpy(zero_copy_only=False).astype(np.int64), first


def _ranges(members: pa.Table) -> np.ndarray:
    """int64 [rows, 2]: (offset, size) of every member row."""
    return np.stack([members["offset"].to_numpy(), members["size"].to_numpy()], axis=1).astype(np.int64)


def _frame_numbers(field: pa.Array) -> np.ndarray:
    """The frame index of every ``frame_<k>.jpg`` field (the caller selects those rows)."""
    return pc.cast(pc.utf8_slice_codeunits(field, 6, -4), pa.int64()).to_numpy()


def _frame_ranges(
    field: pa.Array, sample_of: np.ndarray, ranges: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """frames int64 [N, F, 2] ((0, -1) past a sample's last frame), frame counts int32 [N], and whether each sample's
    frames are exactly 0..count-1."""
    rows = _bools(pc.match_substring_regex(field, FRAME_RE.pattern)) & (sample_of >= 0)
    s, k, rng = sample_of[rows], _frame_numbers(field.filter(pa.array(rows))), ranges[rows]
    count = np.bincount(s, minlength=n)
    fits = k < count[s]  # frames 0..count-1 all fit below count; a larger index is a gap
    ok = count > 0
    ok[s[~fits]] = False
    seen = np.zeros((n, max(int(count.max(initial=0)), 1)), dtype=np.int64)
    np.add.at(seen, (s[fits], k[fits]), 1)
    ok &= (seen <= 1).all(axis=1)  # each of count frames at most once and all below count: exactly 0..count-1
    frames = np.full((n, seen.shape[1], 2), -1, dtype=np.int64)
    frames[s[fits], k[fits]] = rng[fits]
    return frames, count.astype(np.int32), ok


@lru_cache(maxsize=64)
def _npy_layout(header: bytes) -> tuple[tuple[int, ...], np.dtype, int]:
    """Shape, dtype and data offset of an npy file from its first bytes (parsed once per distinct header)."""
    buf = io.BytesIO(header)
    version = np.lib.format.read_magic(buf)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(buf)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(buf)
    else:
        raise ValueError(f"unsupported npy format version {version}")
    if fortran or dtype.hasobject:
        raise ValueError(f"unsupported npy layout (fortran={fortran}, dtype={dtype})")
    return shape, dtype, buf.tell()


def npy_view(data: bytes | bytearray | memoryview) -> np.ndarray:
    """An array over the bytes of an npy file (no copy); the header is parsed once per distinct header."""
    if bytes(data[:6]) != b"\x93NUMPY":
        raise ValueError("not an npy file")
    hlen = int.from_bytes(data[8:10], "little") + 10 if data[6] == 1 else int.from_bytes(data[8:12], "little") + 12
    shape, dtype, offset = _npy_layout(bytes(data[:hlen]))
    return np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=offset).reshape(shape)


class IndexedShards(Dataset):
    """Map-style dataset over :class:`SampleRefs`.

    The work of a batch is split in two. In a DataLoader worker, :meth:`__getitems__` decodes the frames (JPEG
    decoding is the costly, compute-bound part) into a uint8 slot of the :class:`FrameRing`. :meth:`finish` reads the
    fbanks (memory copies out of the page cache) and normalises both modalities into the float32 batch; it runs in
    the process that consumes the batches. Only uint8 frames cross from a worker to the main process (150 KB per
    sample instead of 1.1 MB of float32, through shared memory whose page faults cost more than the work itself on
    small machines). Without workers, :meth:`finish` does everything, one sample at a time.
    """

    def __init__(
        self,
        refs: SampleRefs,
        cfg: ReaderConfig,
        pin_memory: bool = False,
        hook: SampleHook | None = None,
        fetch: FetchConfig | None = None,
    ):
        self.refs = refs
        self.cfg = cfg
        self.pin_memory = pin_memory
        self.hook = hook if hook is not None and (hook.video or hook.audio) else None
        if self.hook is not None and self.hook.audio:
            lacking = np.flatnonzero(refs.wave[:, 1] < 0) if refs.wave is not None else np.arange(len(refs))
            if len(lacking):
                i = int(lacking[0])
                raise ValueError(
                    f"sample {refs.keys[i]!r} in {refs.paths[refs.video_shard[i]]} has no {WAVE_FIELD} member: "
                    "corrupting audio while reading needs the set written with --waveform"
                )
        self.epoch = 0
        self._reader = MemberReader(fetch=fetch)
        # shards behind URLs without a local cache copy: each batch's ranges are fetched together, coalesced, and
        # a DataLoader worker fetches a sample's fbank with its frame and hands the fbank bytes on
        self._ranged = any(is_remote(p) for p in refs.paths) and not (fetch is not None and fetch.cache_dir)
        self._out = OutputBuffers(pin_memory)
        self._ring: FrameRing | None = None  # set by IndexedLoader for the lifetime of its DataLoader workers
        if cfg.frame not in ("eval", "random"):
            k = int(cfg.frame)
            short = np.flatnonzero(refs.num_frames <= k)
            if k < 0 or len(short):
                n = int(refs.num_frames[short[0]]) if len(short) else int(refs.num_frames.min(initial=0))
                raise ValueError(f"frame index {k} out of range: the shards hold {n} frames")

    def __len__(self) -> int:
        return len(self.refs)

    def _read(self, shard: int, rng: np.ndarray) -> bytearray:
        return self._reader.read(self.refs.paths[shard], int(rng[0]), int(rng[1]))

    def _frame(self, i: int) -> int:
        frame = self.cfg.frame
        rng = random.Random(f"{self.cfg.seed}:{self.epoch}:{i}:frame") if frame == "random" else None
        return frame_index(frame, int(self.refs.num_frames[i]), rng)

    def _mask_generator(self, i: int) -> torch.Generator | None:
        if not (self.cfg.freqm or self.cfg.timem):
            return None
        return torch.Generator().manual_seed(random.Random(f"{self.cfg.seed}:{self.epoch}:{i}:mask").getrandbits(62))

    def _image(self, i: int) -> torch.Tensor:
        refs = self.refs
        k = self._frame(i)
        try:
            jpeg = self._read(refs.video_shard[i], refs.frames[i, k])
            if self.hook is not None and self.hook.video:  # only the frame the model sees is changed
                jpeg = self.hook.frame(refs.keys[i], k, decode_rgb(jpeg).permute(1, 2, 0).numpy())
            return load_image(jpeg, self.cfg.im_res)
        except (OSError, RuntimeError) as err:  # PIL / torchvision on bytes that are not a decodable image
            path = refs.paths[refs.video_shard[i]]
            raise ValueError(f"sample {refs.keys[i]!r} in {path}: frame {k} does not decode ({err})") from None

    def _waveform(self, i: int) -> tuple[np.ndarray, int]:
        """The hook's waveform of sample ``i`` (from the stored ``wav.flac``) and its rate."""
        refs = self.refs
        try:
            wave, rate = decode_flac(self._read(refs.video_shard[i], refs.wave[i]))
        except (RuntimeError, ValueError) as err:  # soundfile on bytes that are not one-channel FLAC
            path = refs.paths[refs.video_shard[i]]
            raise ValueError(f"sample {refs.keys[i]!r} in {path}: the waveform does not decode ({err})") from None
        return self.hook.waveform(refs.keys[i], wave, rate), rate  # type: ignore[union-attr]

    def _changed_fbank(self, i: int) -> np.ndarray:
        """The fbank of the hook's waveform, rounded to the stored fbank's float16, as a written set holds it."""
        wave, rate = self._waveform(i)
        return compute_fbank(wave, rate).astype(FBANK_DTYPE)

    def _fbanks(self, part: dict[str, Any]) -> torch.Tensor | list[np.ndarray] | None:
        """The batch's fbanks when the hook changes the audio (None: read the stored ones)."""
        if self.hook is None or not self.hook.audio:
            return None
        if "fbank" in part:
            return part["fbank"]
        if self.hook.fbank_device is None:
            return [self._changed_fbank(i) for i in part["index"]]
        waves = part.get("waves") or [self._waveform(i) for i in part["index"]]
        rates = {rate for _, rate in waves}
        if len(rates) != 1:
            raise ValueError(f"the waveforms of one batch have different sample rates {sorted(rates)}")
        fbank = kaldi_fbank_batch([w for w, _ in waves], rates.pop(), device=self.hook.fbank_device)
        return fbank.to(torch.float16).cpu()  # the storage precision of a written set

    def _prefetch(self, indices: Sequence[int], frames: bool, fbanks: bool, metadata: bool = False) -> None:
        """Ranged reads: fetch what the batch will read (its frames, fbanks, metadata, waveforms) in coalesced GETs."""
        if not self._ranged:
            return
        refs, hook = self.refs, self.hook
        wanted = []
        for i in indices:
            path = refs.paths[refs.video_shard[i]]
            if frames:
                offset, size = refs.frames[i, self._frame(i)].tolist()
                wanted.append((path, offset, size))
                if hook is not None and hook.audio:
                    wanted.append((path, *refs.wave[i].tolist()))
            if fbanks and (hook is None or not hook.audio):
                wanted.append(self._fbank_ref(i))
            if metadata and self.cfg.with_metadata and refs.meta[i, 1] >= 0:
                wanted.append((path, *refs.meta[i].tolist()))
        self._reader.prefetch(wanted)

    def _fbank_ref(self, i: int) -> tuple[str, int, int]:
        """(shard path, offset, size) of sample ``i``'s fbank."""
        offset, size = self.refs.fbank[i].tolist()
        return self.refs.paths[self.refs.audio_shard[i]], offset, size

    def _fbank(self, i: int, path: str, offset: int, size: int, shipped: memoryview | None = None) -> np.ndarray:
        # a short read names the shard itself; ``shipped``: the bytes a DataLoader worker fetched
        data = shipped if shipped is not None else self._reader.read_scratch(path, offset, size)
        try:
            return npy_view(data)
        except ValueError as err:
            raise ValueError(
                f"sample {self.refs.keys[i]!r} in {path}: the fbank member is not a usable npy ({err})"
            ) from None

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Any]:
        """In a DataLoader worker: the decoded frames of ``indices``, uint8 [B, 3, R, R] in shared memory (a slot of
        the ring when one is free). In this process nothing is decoded ahead: :meth:`finish` decodes each frame
        straight into the batch."""
        info = get_worker_info()
        if info is None:
            return {"index": list(indices)}
        b, res = len(indices), self.cfg.im_res
        ship = self._ranged and (self.hook is None or not self.hook.audio)
        self._prefetch(indices, frames=True, fbanks=ship)
        slot = self._ring.acquire(info.id) if self._ring is not None else None
        out = self._ring.slot(info.id, slot)[:b] if slot is not None else _shared((b, 3, res, res))
        for j, i in enumerate(indices):
            out[j].copy_(self._image(i))  # one frame at a time: its decode buffer is freed and reused at once
        part: dict[str, Any] = {"index": list(indices)}
        if ship:  # fetched with the frames (one GET when adjacent): the fbank bytes go on in one shared buffer
            part["fbank_bytes"] = _pack_bytes([self._reader.read(*self._fbank_ref(i)) for i in indices])
        if self.hook is not None and self.hook.audio:  # the costly fbanks (or the waveforms) are made here too
            if self.hook.fbank_device is None:
                fbank = _shared((b, TARGET_LENGTH, NUM_MEL_BINS), torch.float16)
                for j, i in enumerate(indices):
                    fbank[j].copy_(torch.from_numpy(self._changed_fbank(i)))
                part["fbank"] = fbank
            else:
                part["waves"] = [self._waveform(i) for i in indices]
        if slot is not None:  # nothing to send but indices: the main process reads the slot
            return {**part, "ring": (info.id, slot)}
        return {**part, "video": out}

    def finish(self, part: dict[str, Any]) -> dict[str, Any]:
        """Decoded frames -> the model-ready batch: fbanks read and normalised, frames normalised, labels, keys."""
        refs, cfg = self.refs, self.cfg
        indices = part["index"]
        b, res = len(indices), cfg.im_res
        ring = part.get("ring")
        frames = self._ring.slot(*ring) if ring is not None else part.get("video")  # type: ignore[union-attr]
        audio = self._out.get("audio", (b, cfg.target_length, NUM_MEL_BINS))
        video = self._out.get("video", (b, 3, res, res))
        metadata = []
        shipped = _unpack_bytes(part["fbank_bytes"]) if "fbank_bytes" in part else None
        self._prefetch(indices, frames=frames is None, fbanks=shipped is None, metadata=True)
        changed = self._fbanks(part)
        # the batch's fbank locations in one numpy gather (indexing the arrays per sample costs more)
        shards, ranges = (
            (refs.audio_shard[indices].tolist(), refs.fbank[indices].tolist()) if changed is None else ((), ())
        )
        for j, i in enumerate(indices):
            if changed is None:
                stored = self._fbank(i, refs.paths[shards[j]], *ranges[j], shipped[j] if shipped else None)
            else:
                stored = changed[j]
            stored = stored.numpy() if isinstance(stored, torch.Tensor) else stored
            fbank = load_fbank(stored, cfg.target_length, cfg.freqm, cfg.timem, self._mask_generator(i))
            fill_fbank(audio[j], fbank)
            fill_image(video[j], frames[j] if frames is not None else self._image(i))
            if cfg.with_metadata:
                if refs.meta[i, 1] < 0:
                    raise ValueError(f"sample {refs.keys[i]!r} in {refs.paths[refs.video_shard[i]]} has no metadata")
                metadata.append(json.loads(self._read(refs.video_shard[i], refs.meta[i])))
        if ring is not None:
            self._ring.release(*ring)  # type: ignore[union-attr]  # copied out: the worker may reuse the slot
        batch = {
            "audio": audio,
            "video": video,
            "label": torch.from_numpy(refs.labels[indices]),
            "key": refs.keys.take(indices),
        }
        if cfg.with_metadata:
            batch["metadata"] = metadata
        return batch

    def batch(self, indices: Sequence[int]) -> dict[str, Any]:
        """The model-ready batch of ``indices``, built in this process."""
        return self.finish(self.__getitems__(indices))

    def __getitem__(self, i: int) -> dict[str, Any]:
        out = {name: value[0] for name, value in self.batch([i]).items()}
        out["label"] = int(out["label"])
        return out


class FrameRing:
    """Shared-memory slots through which DataLoader workers hand decoded frames to the main process.

    Handing over a fresh shared-memory tensor per batch costs a page fault per 4 KiB on both sides, more than
    decoding the frames. The ring is allocated once per pass, before the workers start (they inherit it); each
    worker owns ``slots`` batch-sized slots, takes a free one per batch, and the main process frees it once it has
    copied the frames out. The flags live in a lock-protected shared array (the lock orders the copy before the
    release on every CPU). A worker without a free slot falls back to a fresh shared tensor.
    """

    def __init__(self, workers: int, slots: int, shape: tuple[int, ...]):
        self.frames = _shared((workers, slots, *shape))  # pages are touched (faulted) only when a slot is used
        self.busy = mp.Array("b", workers * slots)  # with a lock
        self.slots = slots

    def acquire(self, worker: int) -> int | None:
        with self.busy.get_lock():
            for s in range(self.slots):
                if not self.busy[worker * self.slots + s]:
                    self.busy[worker * self.slots + s] = 1
                    return s
        return None

    def release(self, worker: int, slot: int) -> None:
        with self.busy.get_lock():
            self.busy[worker * self.slots + slot] = 0

    def slot(self, worker: int, slot: int) -> torch.Tensor:
        return self.frames[worker, slot]


class OutputBuffers:
    """Float32 batch tensors, recycled once nothing references them any more.

    Fresh memory for every batch costs a page fault per 4 KiB on first touch (about 270 per sample, and expensive
    in a virtual machine): more than the decoding itself. Each batch is handed out as a view of a pooled tensor; a
    pooled tensor is reused only when no tensor other than the pool's own shares its storage, i.e. when the consumer
    has dropped every batch, view and slice of it. Pinned memory is not pooled: an asynchronous copy to the GPU may
    still be reading it after the consumer drops it; torch's pinned-memory allocator already recycles it safely.
    """

    def __init__(self, pin_memory: bool = False, size: int = 4):
        self.pin_memory = pin_memory
        self.size = size
        self._pool: dict[str, list[torch.Tensor]] = {}

    def get(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        if self.pin_memory:
            return torch.empty(shape, dtype=torch.float32, pin_memory=True)
        pool = self._pool.setdefault(name, [])
        for t in pool:
            if t.shape[1:] == shape[1:] and t.shape[0] >= shape[0] and _unreferenced(t):
                return t[: shape[0]]
        t = torch.empty(shape, dtype=torch.float32)
        if len(pool) < self.size:
            pool.append(t)
            return t[:]
        return t

    def __getstate__(self) -> dict:
        return {"pin_memory": self.pin_memory, "size": self.size}  # buffers never travel to a worker

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)


def _unreferenced(t: torch.Tensor) -> bool:
    """True when ``t`` is the only tensor on its storage (the count includes the temporary storage object)."""
    use_count = getattr(torch._C, "_storage_Use_Count", None)  # noqa: SLF001
    return use_count is not None and use_count(t.untyped_storage()._cdata) <= 2  # noqa: SLF001


def _shared(shape: tuple[int, ...], dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """An uninitialised tensor in shared memory (uint8 unless ``dtype``).

    Sending a tensor from a worker moves it into shared memory, a copy of the whole batch; torch's own
    ``default_collate`` avoids that the same way, by stacking into a new shared storage.
    """
    size = math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
    storage = torch.UntypedStorage._new_shared(size)  # noqa: SLF001 - as default_collate does
    return torch.empty(0, dtype=dtype).set_(storage, 0, shape)


def _pack_bytes(items: Sequence[bytes | bytearray]) -> tuple[torch.Tensor, list[int]]:
    """Byte strings -> one shared-memory uint8 buffer and their end offsets (one transfer to the main process)."""
    ends = np.cumsum([len(x) for x in items]).tolist()
    buf = _shared((ends[-1] if ends else 0,))
    view = buf.numpy()
    for item, start, end in zip(items, [0, *ends[:-1]], ends, strict=True):
        view[start:end] = np.frombuffer(item, dtype=np.uint8)
    return buf, ends


def _unpack_bytes(packed: tuple[torch.Tensor, list[int]]) -> list[memoryview]:
    buf, ends = packed
    data = memoryview(buf.numpy()).cast("B")
    return [data[start:end] for start, end in zip([0, *ends[:-1]], ends, strict=True)]


def _identity(batch: Any) -> Any:
    return batch


class IndexedLoader(Loader):
    """The index mode's batches over :class:`IndexedShards` (see :class:`.loader.Loader`)."""

    def __init__(self, dataset: IndexedShards, batch_size: int, num_workers: int = 2, drop_last: bool = False):
        super().__init__(len(dataset), batch_size, num_workers, drop_last)
        self.dataset = dataset
        self._order: list[int] | None = None

    def set_order(self, order: Sequence[int] | None) -> None:
        """Read exactly these sample indices (repeats allowed; e.g. a re-sampling plan) instead of the seeded
        permutation; ``None`` restores it. Per-sample randomness stays keyed by (seed, epoch, sample)."""
        if order is not None:
            order = [int(i) for i in order]
            if order and (min(order) < 0 or max(order) >= self.num_samples):
                raise ValueError(f"set_order: sample indices must be in [0, {self.num_samples})")
        self._order = order

    def __len__(self) -> int:
        n = self.num_samples if self._order is None else len(self._order)
        full, rest = divmod(n, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def order(self) -> list[int]:
        """Sample indices in reading order: the order given to :meth:`set_order`, else manifest order or a
        permutation seeded by (seed, epoch)."""
        if self._order is not None:
            return list(self._order)
        order = list(range(self.num_samples))
        cfg = self.dataset.cfg
        if cfg.shuffle:
            random.Random(f"{cfg.seed}:{self.dataset.epoch}:order").shuffle(order)
        return order

    def batches(self) -> list[list[int]]:
        """Sample indices of every batch, in order (``batch_size`` each; the last may be shorter)."""
        order = self.order()
        out = [order[s : s + self.batch_size] for s in range(0, len(order), self.batch_size)]
        if self.drop_last and out and len(out[-1]) < self.batch_size:
            out.pop()
        return out

    def __iter__(self) -> Iterator[dict[str, Any]]:
        batches = self.batches()
        workers = min(self.num_workers, len(batches))
        prefetch = 2
        dataset = self.dataset
        if workers:  # this pass's own copy of the dataset holds its ring (passes may overlap)
            dataset = copy.copy(self.dataset)
            res = dataset.cfg.im_res
            dataset._ring = FrameRing(workers, prefetch + 2, (self.batch_size, 3, res, res))
        loader = self.data_loader(dataset, workers, prefetch, batch_sampler=batches, collate_fn=_identity)
        for part in loader:
            yield dataset.finish(part)


__all__ = ["IndexedLoader", "IndexedShards", "SampleRefs", "npy_view"]
