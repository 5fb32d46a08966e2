"""The raw-video shard job: decode -> corrupt -> featurize -> write, as plain functions.

A job splits its clips (in a fixed, hash-based order) into chunks of ``shard_size``. Chunk ``i`` becomes shard
``shard-{i:06d}.tar`` in EVERY requested shard set, from one decode of each clip: the clean and all corrupted
versions of a clip are made from the same decoded frames and waveform. A chunk's output depends only on its clips,
the seed and the options, never on which worker ran it or when, so local and cluster runs give the same bytes.

Progress is durable per chunk: after a chunk's shards are renamed into place, a small JSON part file
(``_parts/shard-{i:06d}.json``) records its manifest rows. A rerun skips chunks whose parts exist in every set, so
a killed job resumes. When every chunk is done, the manifests and ``set.json`` are written (atomically), then the
catalog is rebuilt. This module is only the job's policy (what a chunk's clips are, how one sample is made); the
parts, fingerprints, resume checks, failure rows and set tables are :mod:`.setjob`'s, and Ray only schedules
:func:`process_chunk` (see :mod:`.ray_runner`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from avtta.corruptions import CorruptionOptions, CorruptionSpec, apply_corruption, corrupts, parse_specs
from avtta.manifests import ShardSetInfo, set_relpath, write_catalog
from avtta.shards import storage
from avtta.shards.loader import decode_rgb_array, encode_jpeg
from avtta.shards.schema import JPEG_QUALITY_CLEAN, JPEG_QUALITY_CORRUPTED, SCHEMA_VERSION, SampleRecord

from . import setjob
from .inputs import ClipInput, list_inputs
from .setjob import ChunkOutput, SetTarget, encode_flac, failure_row, json_safe

log = logging.getLogger(__name__)


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
    ray_retries: int = 3  # times a chunk lost with its Ray worker (process or node died) is run again
    progress: bool = True
    verbose: bool = False  # let the embedded Ray's own output through

    def validate(self) -> None:
        setjob.check_min(frames=self.frames, frame_size=self.frame_size, shard_size=self.shard_size)
        setjob.check_min(workers=self.workers, ray_retries=self.ray_retries)
        if self.missing not in ("fail", "fill"):
            raise ValueError(f"--missing must be 'fail' or 'fill', got {self.missing!r}")
        setjob.check_names(dataset=self.dataset, split=self.split)

    @property
    def options(self) -> CorruptionOptions:
        return CorruptionOptions(
            noise_dir=self.noise_dir,
            reference_frames=self.reference_frames,
            snr_db=self.snr_db,
            crowd_image_dir=self.crowd_image_dir,
        )


@dataclass
class ChunkTask:
    index: int
    clips: list[ClipInput]
    targets: list[tuple[CorruptionSpec, SetTarget]]  # every set of the job
    out: str
    config: ShardJobConfig
    endpoint: str | None = None  # the S3 endpoint of the driver, for workers on other nodes (not a secret)


@dataclass
class ChunkReport:
    index: int
    clips: int
    ok: int = 0
    failed: int = 0
    bytes: int = 0
    skipped: bool = False
    per_set: dict[str, Any] = field(default_factory=dict)


def _describe_chunk(task: ChunkTask) -> str:
    first = task.clips[0].source if task.clips else "no clips"
    return f"chunk {task.index} ({len(task.clips)} clips from {first})"


def process_chunk(task: ChunkTask) -> ChunkReport:
    """Decode each clip of the chunk once and write its samples into every target set's shard."""
    storage.set_endpoint(task.endpoint)
    with setjob.single_threaded():
        return _process_chunk(task)


def _process_chunk(task: ChunkTask) -> ChunkReport:
    from avtta.pipelines.decode import DecodeError, decode_clip

    cfg = task.config
    report = ChunkReport(index=task.index, clips=len(task.clips))
    pending = [
        (spec, t)
        for spec, t in task.targets
        if not storage.exists(setjob.part_path(storage.join(task.out, t.relpath), task.index))
    ]
    if not pending:
        report.skipped = True
        return report
    with ChunkOutput(task.out, task.index, [t for _, t in pending]) as chunk:
        for clip in task.clips:
            try:
                if clip.error:
                    raise setjob.SampleFailure(clip.error)
                with storage.local_copy(clip.path) as local:  # FFmpeg decodes local files: one GET per video
                    dec = decode_clip(local, num_frames=cfg.frames, frame_size=cfg.frame_size, missing=cfg.missing)
            except storage.StorageError:
                raise  # the store is unreachable or refuses us: the job fails (and resumes), no failure row
            except Exception as err:  # noqa: BLE001 - one bad video never kills a job: it becomes a failure row
                row = failure_row(clip.source, clip.video_id, err, expected=(DecodeError,))
                for _, t in pending:
                    chunk.fail(t.relpath, row)
                report.failed += 1
                continue
            made = _ClipSamples(clip, dec, cfg)
            clip_ok = True
            for spec, t in pending:
                try:
                    record, sample = made.sample(spec)
                    chunk.add(t.relpath, record, sample)
                except Exception as err:  # noqa: BLE001 - a failing corruption is a failure row of that set
                    clip_ok = False
                    chunk.fail(t.relpath, failure_row(clip.source, clip.video_id, err, context=str(spec)))
            report.ok += int(clip_ok)
            report.failed += int(not clip_ok)
        report.bytes += chunk.commit()
    return report


class _ClipSamples:
    """One decoded clip -> its sample in each set; the clean JPEGs and fbank are made once and shared.

    A corruption acts on the clip *as the clean set stores it* (schema 2), so that a reader corrupting the clean set
    on the fly (``open_dataset(..., source="clean")``) makes the same samples: frames are the decoded pixels of the
    clean JPEGs (quality 75), as the reference corrupts the extracted JPEG frames; the waveform is the 16 kHz PCM16
    waveform the ``--waveform`` FLAC holds (the decoder's output is already on that grid).
    """

    def __init__(self, clip: ClipInput, dec: Any, cfg: ShardJobConfig):
        self.clip, self.dec, self.cfg = clip, dec, cfg
        self._clean_jpegs: list[bytes] | None = None
        self._stored_frames: np.ndarray | None = None
        self._clean_fbank: np.ndarray | None = None

    def clean_jpegs(self) -> list[bytes]:
        if self._clean_jpegs is None:
            self._clean_jpegs = [encode_jpeg(f, JPEG_QUALITY_CLEAN) for f in self.dec.frames]
        return self._clean_jpegs

    def stored_frames(self) -> np.ndarray:
        """uint8 [N, H, W, 3]: the frames a reader of the clean set decodes (what corruptions act on)."""
        if self._stored_frames is None:
            self._stored_frames = np.stack([decode_rgb_array(j) for j in self.clean_jpegs()])
        return self._stored_frames

    def sample(self, spec: CorruptionSpec) -> tuple[SampleRecord, Any]:
        from avtta.pipelines.features import compute_fbank, quantize_pcm16

        clip, dec, cfg = self.clip, self.dec, self.cfg
        visual, _ = corrupts(spec)
        frames, wave, params = apply_corruption(
            spec,
            self.stored_frames() if visual else dec.frames,
            dec.waveform,
            seed=cfg.seed,
            key=clip.key,
            sample_rate=dec.sample_rate,
            options=cfg.options,
        )
        if spec.modality in ("clean", "audio"):
            jpegs = self.clean_jpegs()
        else:
            jpegs = [encode_jpeg(f, JPEG_QUALITY_CORRUPTED) for f in frames]
        if spec.modality in ("clean", "video"):
            if self._clean_fbank is None:
                self._clean_fbank = compute_fbank(dec.waveform, dec.sample_rate)
            fbank, wave = self._clean_fbank, dec.waveform
        else:
            wave = quantize_pcm16(np.asarray(wave, np.float32))
            fbank = compute_fbank(wave, dec.sample_rate)
        record = SampleRecord(
            key=clip.key,
            video_id=clip.video_id,
            source=clip.source,
            labels=tuple(clip.labels),
            label_names=tuple(clip.label_names),
            corruption=str(spec),
            severity=spec.severity,
            params=json_safe(params),
            seed=cfg.seed,
            fps=float(dec.fps),
            duration=float(dec.duration),
            sample_rate=int(dec.sample_rate),
            num_frames=len(jpegs),
            missing=tuple(dec.missing),
            extra={"decode": json_safe(dec.info)},
        )
        flac = encode_flac(wave, dec.sample_rate) if cfg.waveform else None
        return record, record.sample(fbank, jpegs, flac)


# -----------------------------------------------------------------------------------------------------------------
# job planning and assembly


def plan_job(
    cfg: ShardJobConfig,
) -> tuple[list[ChunkTask], list[tuple[CorruptionSpec, SetTarget]], list[tuple[str, str]]]:
    """List inputs, resolve corruption specs and split the work into chunk tasks."""
    cfg.validate()
    specs = parse_specs(list(cfg.corrupt) or ["none"])
    for value, flag in ((cfg.noise_dir, "--noise-dir"), (cfg.crowd_image_dir, "--crowd-image-dir")):
        if value and not storage.isdir(value):  # a folder, or an object-store prefix holding objects
            raise FileNotFoundError(f"{flag} {value} is not a folder")
    clips, classes = list_inputs(cfg.videos, cfg.labels)
    options = asdict(cfg.options)
    for name in ("noise_dir", "crowd_image_dir"):
        if options.get(name) and storage.is_local(options[name]):
            options[name] = str(storage.local_path(options[name]).resolve())
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
        fp = setjob.fingerprint({**common, "spec": str(spec)})
        targets.append((spec, SetTarget(rel, fp, {"spec": str(spec)})))
    tasks = [
        ChunkTask(i, clips[start : start + cfg.shard_size], targets, cfg.out, cfg, storage.endpoint_url())
        for i, start in enumerate(range(0, len(clips), cfg.shard_size))
    ]
    return tasks, targets, classes


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
    t0 = time.perf_counter()
    tasks, targets, classes = plan_job(cfg)
    sets = [t for _, t in targets]
    setjob.start_sets(cfg.out, cfg.dataset, classes, sets)
    done = setjob.done_chunks(cfg.out, [s.relpath for s in sets], [t.index for t in tasks])
    todo = [t for t in tasks if t.index not in done]
    log.info(
        "%d clips in %d chunks x %d shard sets (%d chunks to do)",
        sum(len(t.clips) for t in tasks),
        len(tasks),
        len(targets),
        len(todo),
    )
    reports = setjob.run_chunks(
        process_chunk, todo, cfg, desc="clips", unit_of=lambda t: len(t.clips), describe=_describe_chunk
    )
    options = {k: v for k, v in asdict(cfg.options).items() if v not in (None, False)}
    infos, failed_paths = [], set()
    for spec, target in targets:
        info, _, failures = setjob.complete_set(
            cfg.out,
            target,
            (task.index for task in tasks),
            dataset=cfg.dataset,
            split=cfg.split,
            modality=spec.modality,
            corruption=spec.name,
            severity=spec.severity,
            num_classes=len(classes),
            num_frames=cfg.frames,
            frame_size=cfg.frame_size,
            waveform=cfg.waveform,
            seed=cfg.seed,
            source="avtta shard",
            options=options,
        )
        infos.append(info)
        failed_paths.update(f["path"] for f in failures)  # a clip is ok if it made it into every set
    write_catalog(cfg.out)
    n = sum(len(t.clips) for t in tasks)
    return JobSummary(
        clips=n,
        ok=n - len(failed_paths),
        failed=len(failed_paths),
        shards=sum(i.shards for i in infos),
        bytes=sum(i.bytes for i in infos),
        seconds=time.perf_counter() - t0,
        sets=infos,
        resumed_chunks=len(tasks) - len(todo) + sum(r.skipped for r in reports),
    )
