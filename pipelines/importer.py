"""Import data sets in the reference layouts (Kinetics50-C / VGGSound-C, AVRobustBench, plain folders) as shards.

The references ship their data as JPEG frame folders (``<video_path>/frame_K/<video_id>.jpg``), 16 kHz WAV files and
JSON lists ``{"data": [{"wav", "labels", "video_id", "video_path"}]}`` (spec/preprocessing.md section 3). This
module turns such a tree into avtta shard sets, one per list, keeping the publisher's corruption names and
severities, so the methods run on exactly the published data:

* the fbank is computed from the WAV as the reference data loader does (:func:`~avtta.pipelines.features.compute_fbank`
  at the file's own sample rate, spec 2.1), stored unnormalised like every avtta shard;
* the frames are stored as the original JPEG bytes, untouched; the shard reader applies the reference image
  transform (``Resize(224, bicubic) + CenterCrop``) to them, so the model sees what the reference loader gives it;
* every entry is validated (missing or unreadable WAV, missing / damaged / non-RGB frame, unknown or null label,
  duplicate id): a bad entry becomes a failure row naming the reason and the file, never the reference's silent
  constant tensors (spec item 24, FIX).

Layouts:

* **READ / BriMPR JSON root** (``--json ROOT``): ``clean/severity_0.json`` (split from ``--split``),
  ``clean/train.json`` (split ``train``), ``video/<c>/severity_<s>.json``, ``audio/<c>/severity_<s>.json``.
  ``both/<v>/<a>_severity_<s>.json`` lists add nothing new: their samples are the join of the ``video:<v>`` frames
  and the ``audio:<a>`` audio, which ``avtta adapt --protocol both`` reads from those two sets; they are skipped
  (``include_both=True`` imports them as ``av`` sets named ``<v>+<a>``).
* **A single JSON list** (``--json FILE``, e.g. AVRobustBench's): one set, clean unless ``corruption`` says
  otherwise (or the file sits at a recognised place in a READ/BriMPR root).
* **Plain folders** (``--audio DIR --frames-dir FRAMES --list CSV``): ``DIR/<video_id>.wav``,
  ``FRAMES/frame_K/<video_id>.jpg`` and a CSV with columns ``video_id`` and ``labels`` (or ``label``).

Every input (the lists, their WAVs and frames, the plain layout's folders, the label CSV) and the output may be a URL
(``s3://bucket/prefix``, through :mod:`avtta.shards.storage`); an entry's WAV and frames are fetched in one concurrent
batch. Paths inside JSON lists are often absolute paths of the machine that made them: ``path_map`` rewrites prefixes
(``OLD=NEW``, e.g. ``/data/ks50c=s3://bucket/ks50c``); relative paths are relative to the list file. Work is split into
chunks (one shard per chunk and set) that run on Ray through :func:`avtta.pipelines.ray_runner.run_tasks`, with durable
per-chunk parts, so a killed import resumes. This module is only the import's policy (which entries a set has, how one
entry becomes a sample); parts, fingerprints, resume checks, failure rows and set tables are :mod:`.setjob`'s.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import logging
import os
import posixpath
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from avtta.corruptions import CorruptionSpec, format_spec
from avtta.manifests import ShardSetInfo, set_relpath, write_catalog
from avtta.shards import storage
from avtta.shards.schema import SCHEMA_VERSION, Sample, SampleRecord, sanitize_key

from avtta import manifests

from . import setjob
from .features import compute_fbank
from .setjob import ChunkOutput, SampleFailure, SetTarget, encode_flac, failure_row

__all__ = [
    "ImportConfig",
    "ImportEntry",
    "ImportFailure",
    "ImportSet",
    "ImportSummary",
    "ImportedSample",
    "LabelIndex",
    "discover_json_sets",
    "import_sample",
    "plain_set",
    "read_json_list",
    "run_import",
]

log = logging.getLogger(__name__)

DEFAULT_FRAMES = tuple(range(10))
SOURCE_NAME = "avtta import"


class ImportFailure(SampleFailure):
    """One entry cannot be imported; ``reason`` says why (it becomes the failure row's reason)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# ---------------------------------------------------------------------------------------------------------------
# entries, labels


@dataclass(frozen=True)
class ImportEntry:
    """One line of a reference list: where its WAV and frame folders are, and its raw label string.

    ``origin`` names the list and position (``list.json#12``) for failure rows; ``error`` is non-empty when the
    entry itself is malformed (missing fields).
    """

    video_id: str
    wav: str
    video_path: str
    labels: str | None
    origin: str
    error: str = ""

    def frame_path(self, k: int) -> str:
        """The reference's ``video_path + '/frame_' + k + '/' + video_id + '.jpg'`` (a path or a URL)."""
        return _child(self.video_path, f"frame_{k}", f"{self.video_id}.jpg")


def _child(base: str | Path, *names: str) -> str:
    """``base/names...``: a normalised local path (as ``Path`` joins it) or a URL below ``base``."""
    if storage.is_local(base):
        return str(Path(base).joinpath(*names))
    scheme, _, rest = str(base).partition("://")
    return f"{scheme}://{posixpath.normpath(posixpath.join(rest, *names))}"


def _norm(url: str | Path) -> str:
    """A local path as ``Path`` writes it (``file://`` dropped), a URL as it is."""
    return str(storage.local_path(url)) if storage.is_local(url) else os.fspath(url)


def _relative(url: str, root: str) -> str:
    """The path of ``url`` below ``root`` (both local paths, or both URLs)."""
    if storage.is_local(url):
        return os.path.relpath(url, root)
    return posixpath.relpath(url.split("://", 1)[1], root.split("://", 1)[1].rstrip("/"))


def _parent(url: str) -> str:
    return str(Path(url).parent) if storage.is_local(url) else posixpath.dirname(url.rstrip("/"))


def _name(url: str) -> str:
    return Path(url).name if storage.is_local(url) else posixpath.basename(url.rstrip("/"))


class LabelIndex(manifests.LabelIndex):
    """The class table, resolving a list entry's ``labels`` string; bad labels raise ImportFailure (a failure row)."""

    def resolve(self, text: str | None) -> tuple[tuple[int, ...], tuple[str, ...]]:
        """Comma-separated labels -> (sorted class indices, names); raises ImportFailure for null/unknown labels."""
        if text is None:
            raise ImportFailure("no label (null in the list)")
        names = self.split(text)
        try:
            return self.resolve_names(names), names
        except manifests.UnknownLabel as err:
            raise ImportFailure(str(err)) from None


def _rebase(text: str, path_map: Sequence[tuple[str, str]], base: str) -> str:
    """A path of a list, after the first matching ``OLD=NEW`` rewrite; relative paths are relative to ``base`` (the
    list's folder, or its URL's prefix). Local paths and URLs come out normalised alike."""
    for old, new in path_map:
        if text.startswith(old):
            text = new + text[len(old) :]
            break
    if not storage.is_local(text):
        return _child(text)  # normalised as a local path is (no "//", "./" or trailing "/")
    p = storage.local_path(text)
    return str(p) if p.is_absolute() else _child(base, str(p))


def parse_path_map(items: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """``["OLD=NEW", ...]`` -> ((OLD, NEW), ...)."""
    out = []
    for item in items:
        if "=" not in item:
            raise ValueError(f"--path-map takes OLD=NEW, got {item!r}")
        old, new = item.split("=", 1)
        if not old:
            raise ValueError(f"--path-map {item!r}: empty OLD prefix")
        out.append((old, new))
    return tuple(out)


def read_json_list(path: str | Path, *, path_map: Sequence[tuple[str, str]] = ()) -> list[ImportEntry]:
    """Read a reference JSON list ``{"data": [{"wav", "labels", "video_id", "video_path"}, ...]}`` (a path or URL).

    Malformed entries are kept with ``error`` set (they become failure rows); a file that is not such a list at
    all raises ``ValueError``.
    """
    path = os.fspath(path)
    try:
        doc = json.loads(storage.read_text(path))
    except storage.StorageError:
        raise
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable JSON list ({err})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise ValueError(f'{path}: expected a JSON object {{"data": [...]}} as the reference lists are')
    base = _parent(path)
    out = []
    for i, item in enumerate(doc["data"]):
        origin = f"{_name(path)}#{i}"
        if not isinstance(item, dict):
            out.append(ImportEntry("", "", "", None, origin, f"entry {i} is not an object"))
            continue
        lacking = [k for k in ("video_id", "wav", "video_path") if not isinstance(item.get(k), str) or not item[k]]
        if lacking:
            out.append(
                ImportEntry(str(item.get("video_id") or ""), "", "", None, origin, f"entry lacks {', '.join(lacking)}")
            )
            continue
        labels = item.get("labels")
        out.append(
            ImportEntry(
                video_id=item["video_id"],
                wav=_rebase(item["wav"], path_map, base),
                video_path=_rebase(item["video_path"], path_map, base),
                labels=None if labels is None else str(labels),
                origin=origin,
            )
        )
    return out


# ---------------------------------------------------------------------------------------------------------------
# sets


@dataclass(frozen=True)
class ImportSet:
    """One shard set to import: its identity in the catalog and its entries."""

    split: str
    modality: str  # clean | video | audio | av
    name: str  # corruption name as published ("clean" for clean sets)
    severity: int
    entries: tuple[ImportEntry, ...]
    origin: str  # the list file (or folders) it comes from

    @property
    def spec(self) -> str:
        return format_spec(self.modality, self.name, self.severity)

    @property
    def relpath_parts(self) -> tuple[str, str, str, int]:
        return self.split, self.modality, self.name, self.severity


_SEVERITY_RE = re.compile(r"^severity_(\d+)$")
_BOTH_RE = re.compile(r"^(.+)_severity_(\d+)$")


def _spec_from_layout(rel: Path, split: str) -> tuple[str, str, str, int] | None:
    """(split, modality, name, severity) of a list at ``rel`` inside a READ/BriMPR JSON root, or None."""
    parts = rel.with_suffix("").parts
    if len(parts) == 2 and parts[0] == "clean":
        if _SEVERITY_RE.match(parts[1]):
            return split, "clean", "clean", 0
        return parts[1], "clean", "clean", 0  # clean/train.json -> split "train"
    if len(parts) == 3 and parts[0] in ("video", "audio") and (m := _SEVERITY_RE.match(parts[2])):
        return split, parts[0], parts[1], int(m.group(1))
    if len(parts) == 3 and parts[0] == "both" and (m := _BOTH_RE.match(parts[2])):
        # Kinetics50 layout: both/<video corruption>/<audio corruption>_severity_<s>.json
        return split, "av", f"{parts[1]}+{m.group(1)}", int(m.group(2))
    return None


def parse_corruption(text: str) -> tuple[str, str, int]:
    """``clean`` / ``video:fog@5`` / ``audio:rain@3`` / ``av:NAME@S`` -> (modality, name, severity).

    Published names are kept as they are (``CorruptionSpec.parse(strict=False)``); only the modality is checked.
    """
    spec = CorruptionSpec.parse(text, strict=False)
    if spec.modality not in ("clean", "video", "audio", "av"):
        raise ValueError(f"corruption {text!r}: expected clean or MODALITY:NAME@SEVERITY with MODALITY video/audio/av")
    return spec.modality, spec.name, spec.severity


def _unique_sets(sets: list[ImportSet]) -> list[ImportSet]:
    """``sets``, or a ValueError naming the two lists that define the same set."""
    seen: dict[tuple, str] = {}
    for s in sets:
        if s.relpath_parts in seen:
            raise ValueError(f"{s.origin} and {seen[s.relpath_parts]} both define the set {s.split}/{s.spec}")
        seen[s.relpath_parts] = s.origin
    return sets


def discover_json_sets(
    path: str | Path,
    *,
    split: str = "test",
    corruption: str | None = None,
    path_map: Sequence[tuple[str, str]] = (),
    include_both: bool = False,
) -> list[ImportSet]:
    """The sets of a READ/BriMPR JSON root, or the one set of a single JSON list.

    Args:
        path: a JSON root folder or one ``.json`` list (a local path or a URL: ``s3://bucket/k50c``).
        split: split of the test lists (``clean/train.json`` always gives split ``train``).
        corruption: for a single list: its set (default: inferred from its place in a root, else clean).
        path_map: prefix rewrites for the paths inside the lists.
        include_both: also import ``both/`` lists (as ``av`` sets named ``<video>+<audio>``).
    """
    path = _norm(path)
    if not storage.exists(path):
        raise FileNotFoundError(f"--json {path} does not exist")
    sets: list[ImportSet] = []
    if not storage.isdir(path):
        if corruption is not None:
            modality, name, sev = parse_corruption(corruption)
            ident = (split, modality, name, sev)
        else:
            parts = Path(path).parts  # of a URL too: its last components are the folders of a reference root
            ident = (
                _spec_from_layout(Path(*parts[-3:]), split)
                or _spec_from_layout(Path(*parts[-2:]), split)
                or (split, "clean", "clean", 0)
            )
        sets.append(ImportSet(*ident, tuple(read_json_list(path, path_map=path_map)), path))
        return sets
    if corruption is not None:
        raise ValueError("--corruption applies to a single JSON list or plain folders, not to a JSON root")
    skipped = []
    for file in sorted(storage.find(path), key=lambda f: Path(_relative(f, path)).parts):
        rel = Path(_relative(file, path))
        if rel.suffix != ".json":
            continue
        ident = _spec_from_layout(rel, split)
        if ident is None:
            skipped.append(str(rel))
            continue
        if ident[1] == "av" and not include_both:
            log.info("skipping %s: 'both' samples are the join of the video and audio sets", file)
            continue
        sets.append(ImportSet(*ident, tuple(read_json_list(file, path_map=path_map)), file))
    if skipped:
        log.warning("ignored %d JSON files outside the reference layout: %s", len(skipped), ", ".join(skipped[:5]))
    if not sets:
        raise ValueError(
            f"--json {path}: no lists in the reference layout (clean/severity_0.json, video/<c>/severity_<s>.json, "
            "audio/<c>/severity_<s>.json)"
        )
    return _unique_sets(sets)


def plain_set(
    audio_dir: str | Path,
    frames_dir: str | Path,
    list_csv: str | Path,
    *,
    split: str = "test",
    corruption: str = "clean",
) -> ImportSet:
    """A set from plain folders: ``AUDIO/<id>.wav``, ``FRAMES/frame_K/<id>.jpg`` and a CSV ``video_id,labels``.

    Each may be a local path or a URL (``s3://bucket/k50/audio``); a remote "folder" is a prefix with objects.
    """
    audio_dir, frames_dir, list_csv = (_norm(p) for p in (audio_dir, frames_dir, list_csv))
    for p, what in ((audio_dir, "--audio"), (frames_dir, "--frames-dir")):
        if not storage.isdir(p):
            raise FileNotFoundError(f"{what} {p} is not a folder")
    if not storage.exists(list_csv):
        raise FileNotFoundError(f"--list {list_csv} does not exist")
    with storage.open_read(list_csv, "r", newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        cols = reader.fieldnames or []
        label_col = "labels" if "labels" in cols else "label" if "label" in cols else None
        if "video_id" not in cols or label_col is None:
            raise ValueError(f"{list_csv}: a plain-layout list needs the columns video_id,labels (or label)")
        entries = []
        for i, row in enumerate(reader):
            vid = (row["video_id"] or "").strip()
            origin = f"{_name(list_csv)}#{i}"
            if not vid:
                entries.append(ImportEntry("", "", "", None, origin, "empty video_id"))
                continue
            entries.append(
                ImportEntry(vid, _child(audio_dir, f"{vid}.wav"), frames_dir, row[label_col] or None, origin)
            )
    modality, name, sev = parse_corruption(corruption)
    return ImportSet(split, modality, name, sev, tuple(entries), list_csv)


# ---------------------------------------------------------------------------------------------------------------
# one sample


@dataclass(frozen=True)
class ImportedSample:
    """What :func:`import_sample` makes: the shard sample and its record (``record.row(shard)`` is its manifest row)."""

    sample: Sample
    record: SampleRecord


def _read_wav(path: str, data: bytes | OSError) -> tuple[np.ndarray, int, dict[str, Any]]:
    """Decode the WAV ``data`` read from ``path`` (or the error reading it gave)."""
    import soundfile as sf

    if isinstance(data, OSError):  # storage.read_many's "no such file" (a storage fault raised there)
        raise ImportFailure(f"missing wav: {path}")
    buffer = io.BytesIO(data)
    try:
        info = sf.info(buffer)
        buffer.seek(0)
        samples, sr = sf.read(buffer, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        # libsndfile names what it opened: the file, not the buffer's address (failure rows are deterministic)
        raise ImportFailure(f"unreadable wav: {path}: {str(err).replace(repr(buffer), repr(path))}") from None
    if samples.shape[0] == 0:
        raise ImportFailure(f"empty wav (0 samples): {path}")
    if not np.all(np.isfinite(samples)):
        raise ImportFailure(f"wav has NaN or infinite samples: {path}")
    meta = {"channels": int(samples.shape[1]), "subtype": info.subtype, "format": info.format}
    # The loader feeds channel 0 to the fbank (channel=-1 -> 0); mono in every reference list.
    return np.ascontiguousarray(samples[:, 0]), int(sr), meta


def _read_frame(path: str, data: bytes | OSError) -> tuple[bytes, tuple[int, int]]:
    """Check the JPEG ``data`` read from ``path`` (or the error reading it gave); return it and its size."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(data, OSError):  # storage.read_many's "no such file" (a storage fault raised there)
        raise ImportFailure(f"missing frame: {path}")
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt, mode, size = img.format, img.mode, img.size
            img.load()  # decodes fully: a truncated JPEG raises here
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImportFailure(f"unreadable frame: {path}: {err}") from None
    if fmt != "JPEG":
        raise ImportFailure(f"frame is not a JPEG ({fmt}): {path}")
    if mode != "RGB":
        # The reference loader's Normalize breaks on it and the sample silently becomes a constant (item 24).
        raise ImportFailure(f"frame is not an RGB JPEG (mode {mode}): {path}")
    return data, size


def import_sample(
    entry: ImportEntry,
    labels: LabelIndex,
    *,
    corruption: str = "clean",
    frame_ids: Sequence[int] = DEFAULT_FRAMES,
    waveform: bool = False,
    key: str | None = None,
) -> ImportedSample:
    """Turn one reference-layout entry into the shard sample the native pipeline would write.

    Args:
        entry: the list entry (paths already resolved).
        labels: the data set's class table.
        corruption: the set's spec (``clean`` or ``MODALITY:NAME@S``), recorded in the metadata.
        frame_ids: which ``frame_K`` folders to store, in order (the reader's eval frame is the 6th stored frame).
        waveform: also store the audio as FLAC (channel 0 at the WAV's rate).
        key: shard key (default: the sanitised video id).

    Raises:
        ImportFailure: the entry is malformed, a file is missing or unreadable, or the label is null/unknown.
    """
    if entry.error:
        raise ImportFailure(entry.error)
    ids, names = labels.resolve(entry.labels)
    modality, name, severity = parse_corruption(corruption)
    try:
        key = key or sanitize_key(entry.video_id)
    except ValueError as err:
        raise ImportFailure(str(err)) from None
    frame_paths = [entry.frame_path(k) for k in frame_ids]
    # the WAV and every frame in one call: concurrent GETs from an object store, plain reads locally
    blobs = storage.read_many([entry.wav, *frame_paths])
    wav, sr, wav_meta = _read_wav(entry.wav, blobs[0])
    jpegs, sizes = [], []
    for path, blob in zip(frame_paths, blobs[1:], strict=True):
        data, size = _read_frame(path, blob)
        jpegs.append(data)
        sizes.append(list(size))
    try:
        fbank = compute_fbank(wav, sample_rate=sr)
    except (ValueError, TypeError) as err:
        raise ImportFailure(f"fbank failed for {entry.wav}: {err}") from None
    duration = wav.shape[0] / sr
    provenance = {
        "list": entry.origin,
        "wav": entry.wav,
        "video_path": entry.video_path,
        "frame_ids": list(frame_ids),
        "frame_sizes": sizes,
        "wav_sample_rate": sr,
        "wav_samples": int(wav.shape[0]),
        **{f"wav_{k}": v for k, v in wav_meta.items()},
    }
    if wav.shape[0] < int(sr * 0.025):
        provenance["note"] = "wav shorter than one fbank window: zero-padded to one window (reference: 0.01 fallback)"
    record = SampleRecord(
        key=key,
        video_id=entry.video_id,
        source=entry.origin,
        labels=tuple(ids),
        label_names=tuple(names),
        corruption=format_spec(modality, name, severity),
        severity=severity,
        params={},
        seed=0,
        fps=0.0,
        duration=float(duration),
        sample_rate=sr,
        num_frames=len(jpegs),
        extra={"import": provenance},
    )
    sample = record.sample(fbank, jpegs, encode_flac(wav, sr) if waveform else None)
    return ImportedSample(sample, record)


# ---------------------------------------------------------------------------------------------------------------
# the job


@dataclass(frozen=True)
class ImportConfig:
    """Everything an import needs (what ``avtta import`` parses into).

    Give either ``json`` (READ/BriMPR roots or single lists, any number) or the plain layout
    (``audio_dir`` + ``frames_dir`` + ``list_csv``).
    """

    out: str
    dataset: str
    labels: str | None = None  # label CSV index,mid[,display_name]; plain layout: derived from the list if None
    json: tuple[str, ...] = ()
    audio_dir: str | None = None
    frames_dir: str | None = None
    list_csv: str | None = None
    split: str = "test"
    corruption: str | None = None  # a single list / plain layout: its set (default clean)
    path_map: tuple[str, ...] = ()
    include_both: bool = False
    frames: tuple[int, ...] = DEFAULT_FRAMES
    shard_size: int = 256
    waveform: bool = False
    workers: int | None = None  # None: all CPUs on Ray; 0: in-process
    ray_address: str | None = None
    ray_retries: int = 3  # times a chunk lost with its Ray worker (process or node died) is run again
    progress: bool = True
    verbose: bool = False  # let the embedded Ray's own output through

    def validate(self) -> None:
        plain = (self.audio_dir, self.frames_dir, self.list_csv)
        if self.json and any(plain):
            raise ValueError("give either --json or the plain layout (--audio, --frames-dir, --list), not both")
        if not self.json and not all(plain):
            raise ValueError("give --json LIST_OR_ROOT, or all of --audio DIR --frames-dir DIR --list CSV")
        if self.json and not self.labels:
            raise ValueError("--labels LABEL_CSV is required with --json (the lists hold mids, not indices)")
        if not self.frames or any(k < 0 for k in self.frames) or len(set(self.frames)) != len(self.frames):
            raise ValueError(f"--frames must list distinct frame indices >= 0, got {self.frames}")
        setjob.check_min(shard_size=self.shard_size, workers=self.workers, ray_retries=self.ray_retries)
        setjob.check_names(dataset=self.dataset, split=self.split)


@dataclass
class ImportTask:
    """One chunk of one set: its entries go into one shard."""

    index: int
    relpath: str
    corruption: str
    entries: list[tuple[str, ImportEntry, str]]  # (key, entry, error from planning such as a duplicate id)
    labels: LabelIndex
    frame_ids: tuple[int, ...]
    waveform: bool
    out: str
    target: SetTarget
    endpoint: str | None = None  # the S3 endpoint of the driver, for workers on other nodes (not a secret)


@dataclass
class ImportReport:
    index: int
    relpath: str
    ok: int = 0
    failed: int = 0


def _describe_task(task: ImportTask) -> str:
    first = task.entries[0][0] if task.entries else "no entries"
    return f"chunk {task.index} of {task.relpath} ({len(task.entries)} entries from {first})"


def process_import_task(task: ImportTask) -> ImportReport:
    """Import one chunk: each entry -> a sample in the chunk's shard or a failure row; then the part file."""
    report = ImportReport(task.index, task.relpath)
    storage.set_endpoint(task.endpoint)
    with setjob.single_threaded(), ChunkOutput(task.out, task.index, [task.target]) as chunk:
        for key, entry, error in task.entries:
            try:
                if error:
                    raise ImportFailure(error)
                imported = import_sample(
                    entry,
                    task.labels,
                    corruption=task.corruption,
                    frame_ids=task.frame_ids,
                    waveform=task.waveform,
                    key=key,
                )
                chunk.add(task.relpath, imported.record, imported.sample)
            except storage.StorageError:
                raise  # the store is unreachable or refuses us: the import fails (and resumes), no failure row
            except Exception as err:  # noqa: BLE001 - one bad entry never kills an import: it becomes a failure row
                chunk.fail(task.relpath, failure_row(entry.origin, entry.video_id, err))
                report.failed += 1
                continue
            report.ok += 1
        chunk.commit()
    return report


@dataclass
class ImportSummary:
    entries: int
    ok: int
    failed: int
    seconds: float
    sets: list[ShardSetInfo] = field(default_factory=list)
    resumed_chunks: int = 0

    def format(self) -> str:
        return (
            f"{self.entries} entries in {len(self.sets)} sets: {self.ok} imported, {self.failed} failed; "
            f"{sum(s.shards for s in self.sets)} shards, {sum(s.bytes for s in self.sets) / 1e6:.1f} MB; "
            f"{self.seconds:.1f} s" + (f"; {self.resumed_chunks} chunks resumed" if self.resumed_chunks else "")
        )


def _collect_sets(cfg: ImportConfig) -> list[ImportSet]:
    if cfg.json:
        path_map = parse_path_map(cfg.path_map)
        sets: list[ImportSet] = []
        for item in cfg.json:
            sets += discover_json_sets(
                item, split=cfg.split, corruption=cfg.corruption, path_map=path_map, include_both=cfg.include_both
            )
        return _unique_sets(sets)
    return [
        plain_set(cfg.audio_dir, cfg.frames_dir, cfg.list_csv, split=cfg.split, corruption=cfg.corruption or "clean")
    ]


def _classes(cfg: ImportConfig, sets: list[ImportSet]) -> LabelIndex:
    if cfg.labels:
        return LabelIndex.from_csv(cfg.labels)
    names = sorted({t.strip() for s in sets for e in s.entries for t in (e.labels or "").split(",") if t.strip()})
    if not names:
        raise ValueError(f"{cfg.list_csv}: no labels found; give --labels LABEL_CSV")
    log.warning(
        "no --labels CSV: %d classes indexed in sorted name order (check they match your checkpoint)", len(names)
    )
    return LabelIndex(tuple((n, n) for n in names))


def _key_order(key: str) -> tuple[str, str]:
    return hashlib.sha1(key.encode()).hexdigest(), key


def plan_import(cfg: ImportConfig) -> tuple[list[ImportTask], list[ImportSet], LabelIndex, dict[str, SetTarget]]:
    """List the sets, resolve keys and split every set into chunk tasks.

    Chunks are assigned per split by key (a hash order shared by all sets of the split), so chunk ``i`` of every set
    of a split holds the same clips, as in the native pipeline: joined reading (video set x audio set) lines up.
    """
    cfg.validate()
    sets = _collect_sets(cfg)
    labels = _classes(cfg, sets)
    frame_ids = tuple(cfg.frames)
    by_split: dict[str, set[str]] = {}
    keyed: dict[int, list[tuple[str, ImportEntry, str]]] = {}
    for si, s in enumerate(sets):
        seen: dict[str, str] = {}
        items = []
        for e in s.entries:
            error = e.error
            try:
                key = sanitize_key(e.video_id) if e.video_id else ""
            except ValueError:
                key = ""
            if not key:
                key = "_bad_" + hashlib.sha1(e.origin.encode()).hexdigest()[:12]
                error = error or f"invalid video id {e.video_id!r}"
            elif key in seen:
                error = error or f"duplicate video id {e.video_id!r} (first at {seen[key]})"
                key = f"{key}_dup_{hashlib.sha1(e.origin.encode()).hexdigest()[:8]}"
            else:
                seen[key] = e.origin
            items.append((key, e, error))
            by_split.setdefault(s.split, set()).add(key)
        keyed[si] = items
    chunk_of: dict[tuple[str, str], int] = {}
    for split, keys in by_split.items():
        for pos, key in enumerate(sorted(keys, key=_key_order)):
            chunk_of[(split, key)] = pos // cfg.shard_size
    tasks: list[ImportTask] = []
    targets: dict[str, SetTarget] = {}
    for si, s in enumerate(sets):
        rel = set_relpath(cfg.dataset, *s.relpath_parts)
        payload = {
            "schema": SCHEMA_VERSION,
            "set": s.spec,
            "entries": [[k, e.video_id, e.wav, e.video_path, e.labels, err] for k, e, err in keyed[si]],
            "classes": labels.classes,
            "frames": frame_ids,
            "shard_size": cfg.shard_size,
            "waveform": cfg.waveform,
        }
        target = SetTarget(rel, setjob.fingerprint(payload), {"source": SOURCE_NAME})
        targets[rel] = target
        chunks: dict[int, list] = {}
        for item in sorted(keyed[si], key=lambda it: _key_order(it[0])):
            chunks.setdefault(chunk_of[(s.split, item[0])], []).append(item)
        for index in sorted(chunks):
            tasks.append(
                ImportTask(
                    index,
                    rel,
                    s.spec,
                    chunks[index],
                    labels,
                    frame_ids,
                    cfg.waveform,
                    cfg.out,
                    target,
                    storage.endpoint_url(),
                )
            )
    return tasks, sets, labels, targets


def run_import(cfg: ImportConfig) -> ImportSummary:
    """Import every set of ``cfg`` into shards + manifests under ``cfg.out`` and rebuild its catalog."""
    t0 = time.perf_counter()
    tasks, sets, labels, targets = plan_import(cfg)
    out = cfg.out
    setjob.start_sets(out, cfg.dataset, labels.classes, targets.values())
    done = {
        (rel, i)
        for rel in targets
        for i in setjob.done_chunks(out, [rel], [t.index for t in tasks if t.relpath == rel])
    }
    todo = [t for t in tasks if (t.relpath, t.index) not in done]
    log.info(
        "%d sets, %d entries, %d chunks (%d to do)", len(sets), sum(len(s.entries) for s in sets), len(tasks), len(todo)
    )
    setjob.run_chunks(
        process_import_task,
        todo,
        cfg,
        desc="samples imported",
        unit_of=lambda t: len(t.entries),
        describe=_describe_task,
    )
    infos = []
    ok = failed = 0
    for s in sets:
        target = targets[set_relpath(cfg.dataset, *s.relpath_parts)]
        info, _, failures = setjob.complete_set(
            out,
            target,
            (t.index for t in tasks if t.relpath == target.relpath),
            dataset=cfg.dataset,
            split=s.split,
            modality=s.modality,
            corruption=s.name,
            severity=s.severity,
            num_classes=len(labels.classes),
            num_frames=len(cfg.frames),
            frame_size=functools.partial(_frame_size, out, target.relpath),
            waveform=cfg.waveform,
            seed=0,
            source=SOURCE_NAME,
            options={"list": s.origin, "frames": list(cfg.frames), "path_map": list(cfg.path_map)},
        )
        missing_files = sum(r["reason"].startswith(("missing wav", "missing frame")) for r in failures)
        if missing_files and missing_files >= len(s.entries) // 2 and not cfg.path_map:
            log.warning(
                "%s: %d entries point to missing files; lists made on another machine need --path-map OLD=NEW",
                s.spec,
                missing_files,
            )
        infos.append(info)
        ok += info.samples
        failed += info.failures
        if failures:
            log.warning(
                "%s/%s: %d of %d entries failed (reasons in %s)",
                s.split,
                s.spec,
                len(failures),
                len(s.entries),
                storage.join(out, target.relpath, "failures.parquet"),
            )
    write_catalog(out)
    return ImportSummary(
        entries=sum(len(s.entries) for s in sets),
        ok=ok,
        failed=failed,
        seconds=time.perf_counter() - t0,
        sets=infos,
        resumed_chunks=len(tasks) - len(todo),
    )


def _frame_size(out: str, rel: str, shards: list[dict]) -> int:
    """Side of the stored (square) frames, read from the first sample; 0 when not square or no sample."""
    if not shards:
        return 0
    from webdataset.tariterators import tarfile_samples

    with storage.local_copy(storage.join(out, rel, shards[0]["file"])) as local:
        for raw in tarfile_samples([{"url": str(local)}]):
            meta = json.loads(raw["json"])
            sizes = meta.get("import", {}).get("frame_sizes") or [[0, 0]]
            w, h = sizes[0]
            return int(w) if w == h else 0
    return 0
