"""The avtta shard format: schema (declared once), deterministic atomic writer, member index, readers.

Two readers give the same samples with identical tensors: :mod:`.indexed` (the default: random access at the byte
ranges of the member index) and :mod:`.reader` (webdataset's sequential tar iterators).

``open_dataset`` resolves a catalog selection through :mod:`avtta.manifests` (imported lazily: the shard modules
themselves depend on nothing else of avtta).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .indexed import IndexedLoader, IndexedShards, SampleRefs
from .reader import FBANK_MEAN, FBANK_STD, BatchLoader, ReaderConfig, ShardStream
from .schema import FBANK_FIELD, SCHEMA_VERSION, Sample, SchemaError, decode_sample, encode_sample, validate_key
from .writer import ShardWriter

__all__ = [
    "FBANK_MEAN",
    "FBANK_STD",
    "SCHEMA_VERSION",
    "BatchLoader",
    "IndexedLoader",
    "IndexedShards",
    "ReaderConfig",
    "Sample",
    "SampleRefs",
    "SchemaError",
    "ShardStream",
    "ShardWriter",
    "decode_sample",
    "encode_sample",
    "open_dataset",
    "parse_selection",
    "validate_key",
]


def parse_selection(corruption: str, modality: str | None = None, severity: int | None = None) -> tuple[str, str, int]:
    """``"video:fog@5"`` / ``"clean"`` / (name, modality, severity) -> (modality, name, severity)."""
    text = str(corruption)
    if text in ("clean", "none"):
        return "clean", "clean", 0
    if ":" in text:
        modality, text = text.split(":", 1)
    if "@" in text:
        text, sev = text.rsplit("@", 1)
        try:
            severity = int(sev)
        except ValueError:
            raise ValueError(f"bad severity in corruption {corruption!r}") from None
    if modality is None or severity is None:
        raise ValueError(
            f"corruption {corruption!r}: give it as 'modality:name@severity' or pass modality= and severity="
        )
    return modality, text, int(severity)


def open_dataset(
    catalog: str | Path | Any,
    dataset: str,
    split: str = "test",
    corruption: str | tuple[str, str] = "clean",
    severity: int | None = None,
    modality: str | None = None,
    batch_size: int = 64,
    seed: int = 0,
    shuffle: bool = True,
    num_workers: int = 2,
    frame: str | int = "eval",
    freqm: int = 0,
    timem: int = 0,
    shuffle_buffer: int = 1000,
    drop_last: bool = False,
    with_metadata: bool = False,
    pin_memory: bool | None = None,
    access: str = "index",
) -> BatchLoader | IndexedLoader:
    """Model-ready batches of a shard set selected from a catalog.

    Args:
        catalog: the output root of ``avtta shard`` / ``avtta import`` (or its ``catalog.parquet``, or a Catalog).
        dataset, split: which data.
        corruption: ``"clean"``, ``"video:fog@5"``, a name with ``modality``/``severity``, or a pair
            ``("video:fog@5", "audio:rain@5")`` = frames from the first set, audio from the second (both corrupted).
        batch_size, seed, shuffle, num_workers, drop_last: loading; batches are exactly ``batch_size`` except the last.
        frame: ``"eval"`` (frame 5, as READ/BriMPR), ``"random"`` (training) or an index.
        freqm, timem: SpecAugment mask widths (training).
        access: ``"index"`` (default): random access through the set's member index, a full seeded permutation
            per epoch; DataLoader workers decode the frames, this process reads the fbanks and normalises.
            ``"stream"``: webdataset's sequential tar iterators with a seeded buffer shuffle (``shuffle_buffer``),
            for storage where only sequential reads are cheap. Both give the same samples with identical tensors,
            in different orders.

    Returns:
        An :class:`IndexedLoader` (``access="index"``) or a :class:`BatchLoader` (``"stream"``), yielding
        ``{"audio": [B,1024,128], "video": [B,3,224,224], "label": [B], "key": [...]}``.
    """
    from avtta.manifests import Catalog

    if access not in ("index", "stream"):
        raise ValueError(f"access must be 'index' or 'stream', got {access!r}")
    cat = catalog if isinstance(catalog, Catalog) else Catalog(catalog)
    cfg = ReaderConfig(
        frame=frame,
        freqm=freqm,
        timem=timem,
        shuffle=shuffle,
        shuffle_buffer=shuffle_buffer,
        seed=seed,
        with_metadata=with_metadata,
    )
    if isinstance(corruption, (tuple, list)):
        if len(corruption) != 2:
            raise ValueError(f"a joined selection takes two corruptions (video, audio), got {corruption!r}")
        vinfo = cat.get(dataset, split, *parse_selection(corruption[0]))
        ainfo = cat.get(dataset, split, *parse_selection(corruption[1]))
        # shard i of both sets must hold the same chunk of clips (one job): check it on the manifests
        vshard = dict(zip(*cat.samples(vinfo).select(["key", "shard"]).to_pydict().values(), strict=True))
        ashard = dict(zip(*cat.samples(ainfo).select(["key", "shard"]).to_pydict().values(), strict=True))
        common = vshard.keys() & ashard.keys()
        moved = sorted(k for k in common if vshard[k] != ashard[k])
        if moved or not common:
            raise ValueError(
                f"{vinfo.path} and {ainfo.path} cannot be joined: they were not made by one job "
                + (
                    f"(clip {moved[0]!r} is in {vshard[moved[0]]} and {ashard[moved[0]]})"
                    if moved
                    else "(no common clip)"
                )
            )
        dropped = len(vshard.keys() ^ ashard.keys())
        if dropped:
            logging.getLogger(__name__).warning(
                "joining %s with %s: %d clips are in one set only (failed in the other) and are left out",
                vinfo.path,
                ainfo.path,
                dropped,
            )
        if access == "index":
            refs = SampleRefs.build(
                _sample_rows(cat, vinfo), _member_rows(cat, vinfo), _member_rows(cat, ainfo, FBANK_FIELD)
            )
            return _indexed(refs, cfg, batch_size, num_workers, drop_last, pin_memory)
        by_name = {p.name: p for p in cat.shard_paths(ainfo)}
        pairs = [(p, by_name[p.name]) for p in cat.shard_paths(vinfo) if p.name in by_name]
        stream = ShardStream([v for v, _ in pairs], cfg, audio_paths=[a for _, a in pairs], num_frames=vinfo.num_frames)
        return BatchLoader(stream, len(common), batch_size, num_workers, drop_last, pin_memory)
    info = cat.get(dataset, split, *parse_selection(corruption, modality, severity if severity is not None else None))
    if access == "index":
        refs = SampleRefs.build(_sample_rows(cat, info), _member_rows(cat, info))
        return _indexed(refs, cfg, batch_size, num_workers, drop_last, pin_memory)
    stream = ShardStream(cat.shard_paths(info), cfg, num_frames=info.num_frames)
    return BatchLoader(stream, info.samples, batch_size, num_workers, drop_last, pin_memory)


def _sample_rows(cat: Any, info: Any) -> list[tuple[str, str, int]]:
    """(shard path, key, label) of a set's samples in manifest (= writing) order."""
    cols = cat.samples(info).select(["shard", "key", "label"]).to_pydict()
    folder = cat.root / info.path
    return [(str(folder / s), k, lab) for s, k, lab in zip(cols["shard"], cols["key"], cols["label"], strict=True)]


def _member_rows(cat: Any, info: Any, field: str | None = None) -> list[tuple[str, str, str, int, int]]:
    """(shard path, key, field, offset, size) of a set's tar members (only ``field`` when given)."""
    import pyarrow.compute as pc

    table = cat.members(info)
    if field is not None:
        table = table.filter(pc.equal(table["field"], field))
    cols = table.to_pydict()
    folder = cat.root / info.path
    paths = {s: str(folder / s) for s in set(cols["shard"])}
    return list(
        zip([paths[s] for s in cols["shard"]], cols["key"], cols["field"], cols["offset"], cols["size"], strict=True)
    )


def _indexed(refs: SampleRefs, cfg: ReaderConfig, batch_size: int, workers: int, drop_last: bool, pin: bool | None):
    import torch

    pin = torch.cuda.is_available() if pin is None else pin
    return IndexedLoader(IndexedShards(refs, cfg, pin_memory=pin), batch_size, workers, drop_last)
