"""Catalog-level selection: a shard set (or a joined pair of sets) of a catalog -> model-ready batches.

This is where a selection meets the catalog: :func:`open_dataset` parses it (:func:`parse_selection`, one spec syntax
with ``avtta.corruptions``), finds the sets, checks that two sets can be joined (:func:`check_joinable`) and hands
shard paths plus index rows to one of the readers of :mod:`avtta.shards`, which know nothing of the catalog.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from avtta.corruptions import CLEAN, CorruptionOptions, CorruptionSpec, format_spec
from avtta.shards import storage
from avtta.shards.fetch import FetchConfig
from avtta.shards.indexed import IndexedLoader, IndexedShards, SampleRefs
from avtta.shards.loader import ReaderConfig, join_keys, resolve_pin_memory
from avtta.shards.reader import SHUFFLE_BUFFER, BatchLoader, ShardStream
from avtta.shards.schema import FBANK_FIELD

from .onthefly import OnTheFly, options_of
from .tables import Catalog, ShardSetInfo

log = logging.getLogger(__name__)

__all__ = ["check_joinable", "on_the_fly_hook", "open_dataset", "parse_selection"]

ACCESS_MODES = ("index", "stream")
SOURCES = (None, "clean")


def parse_selection(corruption: str, modality: str | None = None, severity: int | None = None) -> tuple[str, str, int]:
    """``"video:fog@5"`` / ``"clean"`` / a name with ``modality`` and ``severity`` -> (modality, name, severity).

    Names outside the corruption registry are accepted (imported sets, joined pairs such as ``av:fog+rain@5``).
    """
    text = str(corruption)
    if text not in ("clean", "none") and "@" not in text:  # a name (or modality:name) completed by the arguments
        given, _, name = text.rpartition(":")
        if not (given or modality) or severity is None:
            raise ValueError(
                f"corruption {corruption!r}: give it as 'modality:name@severity' or pass modality= and severity="
            )
        text = format_spec(given or modality, name, severity)
    spec = CorruptionSpec.parse(text, strict=False)
    return spec.modality, spec.name, spec.severity


def check_joinable(cat: Catalog, video: ShardSetInfo, audio: ShardSetInfo) -> tuple[dict[str, str], dict[str, str]]:
    """Check that two sets come from one job: every clip both hold sits in the same shard of each.

    Returns:
        the key -> shard file maps of the video and the audio set.
    """
    vshard = _key_shard(cat, video)
    ashard = _key_shard(cat, audio)
    moved = sorted(k for k in vshard.keys() & ashard.keys() if vshard[k] != ashard[k])
    if moved:
        raise ValueError(
            f"{video.path} and {audio.path} cannot be joined: they were not made by one job "
            f"(clip {moved[0]!r} is in {vshard[moved[0]]} and {ashard[moved[0]]})"
        )
    return vshard, ashard


def open_dataset(
    catalog: str | Path | Catalog,
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
    shuffle_buffer: int | None = None,
    drop_last: bool = False,
    with_metadata: bool = False,
    pin_memory: bool | None = None,
    access: str = "index",
    source: str | None = None,
    corruption_options: CorruptionOptions | None = None,
    fbank_device: str | None = None,
    cache_dir: str | Path | None = None,
) -> BatchLoader | IndexedLoader:
    """Model-ready batches of a shard set selected from a catalog.

    Args:
        catalog: the output root of ``avtta shard`` / ``avtta import`` (or its ``catalog.parquet``, or a Catalog).
        dataset, split: which data.
        corruption: ``"clean"``, ``"video:fog@5"``, a name with ``modality``/``severity``, or a pair
            ``("video:fog@5", "audio:rain@5")`` = frames from the first set, audio from the second (both corrupted),
            joined by key: clips that failed in one set only are left out (and counted in a warning).
        batch_size, seed, shuffle, num_workers, drop_last: loading; batches are exactly ``batch_size`` except the last.
        frame: ``"eval"`` (frame 5, as READ/BriMPR), ``"random"`` (training) or an index.
        freqm, timem: SpecAugment mask widths (training).
        shuffle_buffer: stream mode only (default 1000): samples held by its buffer shuffle. The index mode draws a
            full permutation and refuses the setting.
        access: ``"index"`` (default): random access through the set's member index, a full seeded permutation
            per epoch; DataLoader workers decode the frames, this process reads the fbanks and normalises.
            ``"stream"``: webdataset's sequential tar iterators with a seeded buffer shuffle, for storage where only
            sequential reads are cheap. Both give the same samples with identical tensors, in different orders.
        source: None (default): read the written set(s) of the selection. ``"clean"``: corrupt while reading:
            the clean set's stored frame (only the one the model sees) and ``wav.flac`` waveform go through the
            selection's seeded kernels, the JPEG 85 round trip and the fbank in the DataLoader workers; every model
            input equals the written set's (frames exactly, fbank to float16 storage precision). Index mode only.
            Audio corruptions need the clean set written with ``--waveform``.
        corruption_options: ``source="clean"`` only: noise recordings and switches (default: those the clean set's
            job recorded, which made its written corrupted sets).
        fbank_device: ``source="clean"`` only: compute the fbanks of corrupted audio batched on this device
            (``"cuda"``) in this process instead of in the workers on the CPU.
        cache_dir: a catalog behind a URL (``s3://...``) only: keep every shard read in this local folder, named by
            its sha256 from ``shards.parquet``, for the next method, seed or run (without it, the index mode reads
            each sample by ranged GETs and the stream mode each tar by sequential GETs, every time).

    Returns:
        An :class:`~avtta.shards.IndexedLoader` (``access="index"``) or a :class:`~avtta.shards.BatchLoader`
        (``"stream"``), yielding ``{"audio": [B,1024,128], "video": [B,3,224,224], "label": [B], "key": [...]}``.
    """
    if access not in ACCESS_MODES:
        raise ValueError(f"access must be 'index' or 'stream', got {access!r}")
    if access == "index" and shuffle_buffer is not None:
        raise ValueError(
            f"shuffle_buffer={shuffle_buffer!r} applies to access='stream' only: the index mode shuffles by a full "
            "permutation"
        )
    if source not in SOURCES:
        raise ValueError(f"source must be None (the written sets) or 'clean' (corrupt while reading), got {source!r}")
    if source is None and (corruption_options is not None or fbank_device is not None):
        raise ValueError("corruption_options and fbank_device apply to source='clean' (corrupting while reading) only")
    if source is not None and access != "index":
        raise ValueError(
            f"source={source!r} (corrupting while reading) reads by index: use access='index', not {access!r}"
        )
    cat = catalog if isinstance(catalog, Catalog) else Catalog(catalog)
    cfg = ReaderConfig(
        frame=frame, freqm=freqm, timem=timem, shuffle=shuffle, seed=seed, with_metadata=with_metadata
    )  # fmt: skip
    buffer = SHUFFLE_BUFFER if shuffle_buffer is None else shuffle_buffer
    if source == "clean":
        info = cat.get(dataset, split)
        hook = on_the_fly_hook(info, corruption, modality, severity, corruption_options, fbank_device)
        refs = SampleRefs.build(_sample_rows(cat, info), _member_rows(cat, info))
        fetch = _fetch_config(cat, cache_dir, info)
        return _indexed(refs, cfg, batch_size, num_workers, drop_last, pin_memory, hook, fetch)
    if isinstance(corruption, (tuple, list)):
        if len(corruption) != 2:
            raise ValueError(f"a joined selection takes two corruptions (video, audio), got {corruption!r}")
        vinfo = cat.get(dataset, split, *parse_selection(corruption[0]))
        ainfo = cat.get(dataset, split, *parse_selection(corruption[1]))
        vshard, ashard = check_joinable(cat, vinfo, ainfo)
        fetch = _fetch_config(cat, cache_dir, vinfo, ainfo)
        if access == "index":
            refs = SampleRefs.build(
                _sample_rows(cat, vinfo),
                _member_rows(cat, vinfo),
                _member_rows(cat, ainfo, FBANK_FIELD),
                names=(vinfo.path, ainfo.path),
            )
            return _indexed(refs, cfg, batch_size, num_workers, drop_last, pin_memory, fetch=fetch)
        joined = join_keys(list(vshard), list(ashard), vinfo.path, ainfo.path)
        # the shard pairs that hold the joined clips, in the video set's shard order (one job: the same file names)
        pair_of = {vshard[k]: ashard[k] for k in joined.keys}
        vfiles = [f for f in _shard_files(cat, vinfo) if f in pair_of]
        vpaths = [_url(cat, vinfo, f) for f in vfiles]
        apaths = [_url(cat, ainfo, pair_of[f]) for f in vfiles]
        stream = ShardStream(
            vpaths, cfg, audio_paths=apaths, num_frames=vinfo.num_frames, shuffle_buffer=buffer, fetch=fetch
        )
        return BatchLoader(stream, len(joined.keys), batch_size, num_workers, drop_last, pin_memory)
    info = cat.get(dataset, split, *parse_selection(corruption, modality, severity))
    fetch = _fetch_config(cat, cache_dir, info)
    if access == "index":
        refs = SampleRefs.build(_sample_rows(cat, info), _member_rows(cat, info))
        return _indexed(refs, cfg, batch_size, num_workers, drop_last, pin_memory, fetch=fetch)
    paths = [_url(cat, info, f) for f in _shard_files(cat, info)]
    stream = ShardStream(paths, cfg, num_frames=info.num_frames, shuffle_buffer=buffer, fetch=fetch)
    return BatchLoader(stream, info.samples, batch_size, num_workers, drop_last, pin_memory)


def on_the_fly_hook(
    clean: ShardSetInfo,
    corruption: str | tuple[str, str],
    modality: str | None = None,
    severity: int | None = None,
    options: CorruptionOptions | None = None,
    fbank_device: str | None = None,
) -> OnTheFly:
    """The hook that corrupts the clean set ``clean`` as the selection's written set(s) hold it.

    A single selection corrupts with its spec (both parts of an ``av`` pair); a pair ``(video, audio)`` takes the
    frames of the first and the audio of the second, as a joined read of the two written sets does. Names must be
    registered corruptions (``strict`` parsing): an imported set has no kernel to replay.
    """
    if isinstance(corruption, (tuple, list)):
        if len(corruption) != 2:
            raise ValueError(f"a joined selection takes two corruptions (video, audio), got {corruption!r}")
        video, audio = (_registered(parse_selection(c), c) for c in corruption)
    else:
        video = audio = _registered(parse_selection(corruption, modality, severity), corruption)
    hook = OnTheFly(video, audio, clean.seed, options if options is not None else options_of(clean.options))
    hook.fbank_device = fbank_device
    if hook.audio and not clean.waveform:
        raise ValueError(
            f"{clean.path} was written without --waveform: {audio} cannot be applied while reading "
            "(rewrite the clean set with --waveform, or read the written set)"
        )
    return hook


def _registered(parsed: tuple[str, str, int], given: object) -> CorruptionSpec:
    modality, name, severity = parsed
    if modality == "clean":
        return CLEAN
    try:
        return CorruptionSpec(modality, name, severity)
    except ValueError as err:
        raise ValueError(f"corruption {given!r} cannot be applied while reading: {err}") from None


def _url(cat: Catalog, info: ShardSetInfo, name: str) -> str:
    """The path or URL of file ``name`` of a set (a plain path for a local catalog, as before URLs)."""
    return storage.join(str(cat.root), info.path, name)


def _shard_files(cat: Catalog, info: ShardSetInfo) -> list[str]:
    return cat.shards(info).column("file").to_pylist()


def _fetch_config(cat: Catalog, cache_dir: str | Path | None, *sets: ShardSetInfo) -> FetchConfig | None:
    """How the readers fetch a remote catalog's shards: the sha256 of each (the cache key) and the cache folder."""
    if storage.is_local(str(cat.root)):
        if cache_dir is not None:
            log.info("cache_dir=%s: the catalog %s is local, its shards are read in place", cache_dir, cat.root)
        return None
    digests = {}
    for info in sets:
        cols = cat.shards(info).select(["file", "bytes", "sha256"]).to_pydict()
        for name, size, sha in zip(cols["file"], cols["bytes"], cols["sha256"], strict=True):
            digests[_url(cat, info, name)] = (int(size), sha or "")
    return FetchConfig(cache_dir=None if cache_dir is None else str(cache_dir), digests=digests)


def _key_shard(cat: Catalog, info: ShardSetInfo) -> dict[str, str]:
    """key -> shard file of a set's samples, in manifest (= writing) order."""
    cols = cat.samples(info).select(["key", "shard"]).to_pydict()
    return dict(zip(cols["key"], cols["shard"], strict=True))


def _sample_rows(cat: Catalog, info: ShardSetInfo) -> pa.Table:
    """``shard`` (path or URL), ``key``, ``label`` of a set's samples in manifest (= writing) order."""
    return _located(cat.samples(info, ["shard", "key", "label"]), cat, info)


def _member_rows(cat: Catalog, info: ShardSetInfo, field: str | None = None) -> pa.Table:
    """``shard`` (path), ``key``, ``field``, ``offset``, ``size`` of a set's tar members (only ``field`` when given)."""
    table = cat.members(info)
    if field is not None:
        table = table.filter(pc.equal(table["field"], field))
    return _located(table, cat, info)


def _located(table: pa.Table, cat: Catalog, info: ShardSetInfo) -> pa.Table:
    """``table`` with its ``shard`` column (file names) made paths or URLs of the set's files, dictionary encoded:
    one string per shard, not one per row (a set's member index has 13 rows a sample)."""
    shard = pc.dictionary_encode(table["shard"].combine_chunks())
    paths = pa.array([_url(cat, info, s) for s in shard.dictionary.to_pylist()], pa.string())
    column = pa.DictionaryArray.from_arrays(shard.indices, paths)
    return table.set_column(table.schema.get_field_index("shard"), "shard", column)


def _indexed(
    refs: SampleRefs,
    cfg: ReaderConfig,
    batch_size: int,
    workers: int,
    drop_last: bool,
    pin: bool | None,
    hook: OnTheFly | None = None,
    fetch: FetchConfig | None = None,
) -> IndexedLoader:
    # the index's Arrow tables are gone: hand their memory back to the system rather than keep it cached for the run
    pa.default_memory_pool().release_unused()
    dataset = IndexedShards(refs, cfg, pin_memory=resolve_pin_memory(pin), hook=hook, fetch=fetch)
    return IndexedLoader(dataset, batch_size, workers, drop_last)
