"""The raw-video shard job: decode -> corrupt -> featurize -> write, as plain functions.

A job splits its clips (in a fixed, hash-based order) into chunks of ``shard_size``. Chunk ``i`` becomes shard
``shard-{i:06d}.tar`` in EVERY requested shard set, from one decode of each clip: the clean and all corrupted
versions of a clip are made from the same decoded frames and waveform. A chunk's output depends only on its clips,
the seed and the options, never on which worker ran it or when, so local and cluster runs give the same bytes.

Progress is durable per chunk: after a chunk's shards are renamed into place, a small JSON part file
(``_parts/shard-{i:06d}.json``) records its manifest rows. A rerun skips chunks whose parts exist in every set, so
a killed job resumes. When every chunk is done, the manifests and ``set.json`` are written (atomically), then the
catalog is rebuilt. Ray only schedules :func:`process_chunk` (see ``ray_runner``).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from avtta.corruptions import CorruptionOptions, CorruptionSpec, apply_corruption, parse_specs
from avtta.manifests import (
    SET_FILE,
    ShardSetInfo,
    part_members,
    set_relpath,
    write_catalog,
    write_classes,
    write_json,
    write_set_tables,
)
from avtta.manifests.tables import CLASSES_FILE, read_label_csv
from avtta.shards.schema import (
    JPEG_QUALITY_CLEAN,
    JPEG_QUALITY_CORRUPTED,
    SCHEMA_VERSION,
    Sample,
)
from avtta.shards.writer import ShardWriter
from PIL import Image

from .inputs import ClipInput, list_inputs

log = logging.getLogger(__name__)

PARTS_DIR = "_parts"


@dataclass(frozen=True)
class ShardJobConfig:
    """Everything a shard job needs (what ``avtta shard`` parses into)."""

    videos: str
    out: str
    dataset: str
    split: str = "test"
    labels: str | None = None
    corrupt: tuple[str, ...] = ("none",)
    frames: int = 10
    frame_size: int = 224
    shard_size: int = 256
    seed: int = 0
    missing: str = "fail"  # fail | fill
    waveform: bool = False  # also store the 16 kHz waveform as FLAC
    noise_dir: str | None = None
    reference_frames: bool = False
    snr_db: float | None = None
    crowd_image_dir: str | None = None
    workers: int | None = None  # None: all CPUs; 0: in-process without Ray
    ray_address: str | None = None
    progress: bool = True

    def validate(self) -> None:
        if self.frames < 1:
            raise ValueError(f"--frames must be >= 1, got {self.frames}")
        if self.frame_size < 16:
            raise ValueError(f"--frame-size must be >= 16, got {self.frame_size}")
        if self.shard_size < 1:
            raise ValueError(f"--shard-size must be >= 1, got {self.shard_size}")
        if self.missing not in ("fail", "fill"):
            raise ValueError(f"--missing must be 'fail' or 'fill', got {self.missing!r}")
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"--workers must be >= 0, got {self.workers}")
        for name in ("dataset", "split"):
            value = getattr(self, name)
            if not value or "/" in value or value.startswith("."):
                raise ValueError(f"invalid --{name} {value!r}")

    @property
    def options(self) -> CorruptionOptions:
        return CorruptionOptions(
            noise_dir=self.noise_dir,
            reference_frames=self.reference_frames,
            snr_db=self.snr_db,
            crowd_image_dir=self.crowd_image_dir,
        )


@dataclass(frozen=True)
class SetTarget:
    """One output shard set of a job."""

    spec: CorruptionSpec
    relpath: str
    fingerprint: str


@dataclass
class ChunkTask:
    index: int
    clips: list[ClipInput]
    targets: list[SetTarget]
    out: str
    config: ShardJobConfig


@dataclass
class ChunkReport:
    index: int
    clips: int
    ok: int = 0
    failed: int = 0
    bytes: int = 0
    skipped: bool = False
    per_set: dict[str, Any] = field(default_factory=dict)


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def part_path(out: str | Path, target: SetTarget, index: int) -> Path:
    return Path(out) / target.relpath / PARTS_DIR / f"shard-{index:06d}.json"


def encode_jpeg(frame: np.ndarray, quality: int) -> bytes:
    """RGB uint8 [H, W, 3] -> JPEG bytes (PIL, fixed settings, so deterministic)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame), mode="RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def encode_flac(waveform: np.ndarray, sample_rate: int) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    pcm = np.clip(np.round(np.asarray(waveform, np.float64) * 32768.0), -32768, 32767).astype(np.int16)
    sf.write(buf, pcm, sample_rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def _json_safe(obj: Any) -> Any:
    """Make corruption parameters JSON-serialisable (numpy scalars/arrays -> Python)."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return str(obj)
    return obj


def process_chunk(task: ChunkTask) -> ChunkReport:
    """Decode each clip of the chunk once and write its samples into every target set's shard."""
    # One thread for torch and BLAS: float reductions (fbank, SNRs) then give the same bits in every process,
    # serial or on Ray workers (which default to OMP_NUM_THREADS=1), so outputs are byte-identical everywhere.
    import cv2
    import torch
    from avtta.pipelines.decode import DecodeError, decode_clip
    from avtta.pipelines.features import compute_fbank, quantize_pcm16
    from threadpoolctl import threadpool_limits

    threads, cv_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)  # OpenCV's pool would oversubscribe the cores the workers already use
    try:
        with threadpool_limits(limits=1):
            return _process_chunk(task, decode_clip, DecodeError, compute_fbank, quantize_pcm16)
    finally:
        torch.set_num_threads(threads)
        cv2.setNumThreads(cv_threads)


def _process_chunk(task: ChunkTask, decode_clip, DecodeError, compute_fbank, quantize_pcm16) -> ChunkReport:  # noqa: N803
    cfg = task.config
    report = ChunkReport(index=task.index, clips=len(task.clips))
    pending = [t for t in task.targets if not part_path(task.out, t, task.index).exists()]
    if not pending:
        report.skipped = True
        return report
    rows: dict[str, list[dict]] = {t.relpath: [] for t in pending}
    fails: dict[str, list[dict]] = {t.relpath: [] for t in pending}
    writers: dict[str, ShardWriter] = {}
    try:
        for clip in task.clips:
            base = {"path": clip.source, "video_id": clip.video_id}
            if clip.error:
                for t in pending:
                    fails[t.relpath].append({**base, "reason": clip.error})
                report.failed += 1
                continue
            try:
                dec = decode_clip(clip.path, num_frames=cfg.frames, frame_size=cfg.frame_size, missing=cfg.missing)
            except DecodeError as err:
                reason = str(err)
            except Exception as err:  # noqa: BLE001 - one bad video never kills a job: it becomes a failure row
                reason = f"unexpected {type(err).__name__}: {err}"
            else:
                reason = ""
            if reason:
                for t in pending:
                    fails[t.relpath].append({**base, "reason": reason})
                report.failed += 1
                continue
            clean_jpegs: list[bytes] | None = None
            clean_fbank: np.ndarray | None = None
            clip_ok = True
            for t in pending:
                spec = t.spec
                try:
                    frames, wave, params = apply_corruption(
                        spec,
                        dec.frames,
                        dec.waveform,
                        seed=cfg.seed,
                        key=clip.key,
                        sample_rate=dec.sample_rate,
                        options=cfg.options,
                    )
                    if spec.modality in ("clean", "audio"):
                        if clean_jpegs is None:
                            clean_jpegs = [encode_jpeg(f, JPEG_QUALITY_CLEAN) for f in dec.frames]
                        jpegs = clean_jpegs
                    else:
                        jpegs = [encode_jpeg(f, JPEG_QUALITY_CORRUPTED) for f in frames]
                    if spec.modality in ("clean", "video"):
                        if clean_fbank is None:
                            clean_fbank = compute_fbank(dec.waveform, dec.sample_rate)
                        fbank, wave = clean_fbank, dec.waveform
                    else:
                        wave = quantize_pcm16(np.asarray(wave, np.float32))
                        fbank = compute_fbank(wave, dec.sample_rate)
                    params = _json_safe(params)
                    meta = {
                        "schema_version": SCHEMA_VERSION,
                        "key": clip.key,
                        "video_id": clip.video_id,
                        "source": clip.source,
                        "labels": list(clip.labels),
                        "label_names": list(clip.label_names),
                        "corruption": str(spec),
                        "severity": spec.severity,
                        "params": params,
                        "seed": cfg.seed,
                        "fps": round(float(dec.fps), 6),
                        "duration": round(float(dec.duration), 6),
                        "sample_rate": int(dec.sample_rate),
                        "num_frames": len(jpegs),
                        "missing": list(dec.missing),
                        "decode": _json_safe(dec.info),
                    }
                    sample = Sample(
                        key=clip.key,
                        fbank=fbank,
                        frames=jpegs,
                        label=clip.label,
                        metadata=meta,
                        waveform_flac=encode_flac(wave, dec.sample_rate) if cfg.waveform else None,
                    )
                    if t.relpath not in writers:
                        writers[t.relpath] = ShardWriter(Path(task.out) / t.relpath / shard_name(task.index))
                    writers[t.relpath].write(sample)
                except Exception as err:  # noqa: BLE001 - a failing corruption is a failure row of that set
                    clip_ok = False
                    fails[t.relpath].append({**base, "reason": f"{spec}: {type(err).__name__}: {err}"})
                    continue
                rows[t.relpath].append(
                    {
                        "key": clip.key,
                        "video_id": clip.video_id,
                        "source": clip.source,
                        "label": clip.label,
                        "labels": list(clip.labels),
                        "shard": shard_name(task.index),
                        "corruption": str(spec),
                        "severity": spec.severity,
                        "params": json.dumps(params, sort_keys=True),
                        "fps": float(dec.fps),
                        "duration": float(dec.duration),
                        "missing": ",".join(dec.missing),
                    }
                )
            report.ok += int(clip_ok)
            report.failed += int(not clip_ok)
        # Close shards (atomic rename), then record the chunk's part files: a part exists only if its shard does.
        for t in pending:
            shard, members = None, []
            if t.relpath in writers:
                writer = writers.pop(t.relpath)
                size, digest = writer.close()
                shard = {
                    "file": shard_name(task.index),
                    "samples": len(rows[t.relpath]),
                    "bytes": size,
                    "sha256": digest,
                }
                members = part_members(writer.members)
                report.bytes += size
            part = {
                "fingerprint": t.fingerprint,
                "shard": shard,
                "samples": rows[t.relpath],
                "failures": fails[t.relpath],
                "members": members,
            }
            write_json(part, part_path(task.out, t, task.index))
    finally:
        for w in writers.values():
            w.abort()
    return report


# -----------------------------------------------------------------------------------------------------------------
# job planning and assembly


def _fingerprint(common: dict, spec: CorruptionSpec) -> str:
    payload = json.dumps({**common, "spec": str(spec)}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def plan_job(cfg: ShardJobConfig) -> tuple[list[ChunkTask], list[SetTarget], list[tuple[str, str]]]:
    """List inputs, resolve corruption specs and split the work into chunk tasks."""
    cfg.validate()
    specs = parse_specs(list(cfg.corrupt) or ["none"])
    clips, classes = list_inputs(cfg.videos, cfg.labels)
    options = asdict(cfg.options)
    for name in ("noise_dir", "crowd_image_dir"):
        if options.get(name):
            options[name] = str(Path(options[name]).resolve())
    common = {
        "schema": SCHEMA_VERSION,
        "clips": [[c.key, c.source, list(c.labels), c.error] for c in clips],
        "frames": cfg.frames,
        "frame_size": cfg.frame_size,
        "shard_size": cfg.shard_size,
        "seed": cfg.seed,
        "missing": cfg.missing,
        "waveform": cfg.waveform,
        "options": options,
    }
    targets = []
    for spec in specs:
        rel = set_relpath(cfg.dataset, cfg.split, spec.modality, spec.name, spec.severity)
        targets.append(SetTarget(spec, rel, _fingerprint(common, spec)))
    tasks = [
        ChunkTask(i, clips[start : start + cfg.shard_size], targets, cfg.out, cfg)
        for i, start in enumerate(range(0, len(clips), cfg.shard_size))
    ]
    return tasks, targets, classes


def check_resume(cfg: ShardJobConfig, targets: list[SetTarget]) -> None:
    """Refuse to mix the output of a different job into an existing set folder."""
    for t in targets:
        job_file = Path(cfg.out) / t.relpath / PARTS_DIR / "job.json"
        if job_file.exists():
            found = json.loads(job_file.read_text()).get("fingerprint")
            if found != t.fingerprint:
                raise ValueError(
                    f"{Path(cfg.out) / t.relpath} holds the output of a different job (inputs or options changed); "
                    "remove that folder or choose another --out"
                )
        else:
            write_json({"fingerprint": t.fingerprint, "spec": str(t.spec)}, job_file)


def assemble(
    cfg: ShardJobConfig, tasks: list[ChunkTask], targets: list[SetTarget], num_classes: int
) -> list[ShardSetInfo]:
    """Write each set's manifests and set.json from its chunk parts (all chunks must be done)."""
    infos = []
    for t in targets:
        set_dir = Path(cfg.out) / t.relpath
        parts = (json.loads(part_path(cfg.out, t, task.index).read_text()) for task in tasks)
        samples, shards, failures = write_set_tables(set_dir, parts)
        info = ShardSetInfo(
            dataset=cfg.dataset,
            split=cfg.split,
            modality=t.spec.modality,
            corruption=t.spec.name,
            severity=t.spec.severity,
            path=t.relpath,
            samples=len(samples),
            shards=len(shards),
            bytes=sum(s["bytes"] for s in shards),
            failures=len(failures),
            num_classes=num_classes,
            num_frames=cfg.frames,
            frame_size=cfg.frame_size,
            waveform=cfg.waveform,
            seed=cfg.seed,
            source="avtta shard",
            job=t.fingerprint,
            options={k: v for k, v in asdict(cfg.options).items() if v not in (None, False)},
        )
        write_json(info.to_json(), set_dir / SET_FILE)
        infos.append(info)
    return infos


def remove_stale_temporaries(out: str | Path, targets: list[SetTarget]) -> None:
    """Delete temporary files a killed run left behind (they were never visible under a final name)."""
    for t in targets:
        for folder in (Path(out) / t.relpath, Path(out) / t.relpath / PARTS_DIR):
            if folder.is_dir():
                for p in folder.glob(".*.tmp-*"):
                    p.unlink(missing_ok=True)


def write_classes_checked(out: str | Path, dataset: str, classes: list[tuple[str, str]]) -> None:
    """Write OUT/<dataset>/classes.csv, or check that an existing one has the same classes."""
    path = Path(out) / dataset / CLASSES_FILE
    if path.exists():
        if read_label_csv(path) != list(classes):
            raise ValueError(f"{path} lists other classes than this job's labels; use another --dataset or --out")
        return
    write_classes(path, classes)


@dataclass
class JobSummary:
    clips: int
    ok: int
    failed: int
    shards: int
    bytes: int
    seconds: float
    sets: list[ShardSetInfo]
    resumed_chunks: int = 0

    @property
    def clips_per_second(self) -> float:
        return self.clips / self.seconds if self.seconds > 0 else float("nan")

    def format(self) -> str:
        return (
            f"{self.clips} clips: {self.ok} ok, {self.failed} failed; {len(self.sets)} shard sets, "
            f"{self.shards} shards, {self.bytes / 1e6:.1f} MB; {self.seconds:.1f} s "
            f"({self.clips_per_second:.2f} clips/s)"
            + (f"; {self.resumed_chunks} chunks resumed" if self.resumed_chunks else "")
        )


def run_shard_job(cfg: ShardJobConfig) -> JobSummary:
    """Run a whole shard job (resuming a killed one) and rebuild the catalog. See :class:`ShardJobConfig`."""
    from .ray_runner import run_tasks

    t0 = time.perf_counter()
    tasks, targets, classes = plan_job(cfg)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    write_classes_checked(cfg.out, cfg.dataset, classes)
    check_resume(cfg, targets)
    remove_stale_temporaries(cfg.out, targets)
    todo = [t for t in tasks if not all(part_path(cfg.out, s, t.index).exists() for s in targets)]
    log.info(
        "%d clips in %d chunks x %d shard sets (%d chunks to do)",
        sum(len(t.clips) for t in tasks),
        len(tasks),
        len(targets),
        len(todo),
    )
    reports = run_tasks(todo, workers=cfg.workers, address=cfg.ray_address, progress=cfg.progress)
    infos = assemble(cfg, tasks, targets, len(classes))
    write_catalog(cfg.out)
    # the summary counts clips over the whole job (a clip is ok if it made it into every set)
    failed_keys = set()
    for t in targets:
        for task in tasks:
            part = json.loads(part_path(cfg.out, t, task.index).read_text())
            failed_keys.update(f["path"] for f in part["failures"])
    n = sum(len(t.clips) for t in tasks)
    return JobSummary(
        clips=n,
        ok=n - len(failed_keys),
        failed=len(failed_keys),
        shards=sum(i.shards for i in infos),
        bytes=sum(i.bytes for i in infos),
        seconds=time.perf_counter() - t0,
        sets=infos,
        resumed_chunks=len(tasks) - len(todo) + sum(r.skipped for r in reports),
    )


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1
