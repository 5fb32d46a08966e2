"""The streaming adaptation worker: methods x conditions x seeds over shard sets selected from a catalog.

A *condition* is what the model is tested on: a clean set, one corrupted set (protocols ``video``, ``audio``,
``av``) or a video-corrupted and an audio-corrupted set joined by key (protocol ``both``, the 15 x 6 pairs of
BriMPR's ``run_both.py``). A *job* is one (method, condition, seed): reset the method (fresh source model state),
reseed it, stream the condition's shards batch by batch (DataLoader workers prefetch while the model steps) and
update online, one step per batch. ``continual=True`` never resets: each seed runs every condition in order on one
continually adapted model.

Jobs run in this process, or, with ``ray_address``, on Ray actors (one GPU each when the cluster has GPUs) that each
hold a model, fed by the shard reader (``avtta.manifests.open_dataset``); the rows are gathered into one results table.
The worker names no method: it serves what each method class declares (``adapt/methods/base.py``): the source data
(computed once from ``--source-split`` clips and cached under ``<catalog>/_cache``), the per-dataset ``presets``, the
per-protocol overrides and the model facts, below the user's ``--method-config``.

Independent jobs give identical numbers wherever they run, because ``reset()`` restores the model and optimiser
exactly and every random draw comes from generators seeded by (seed, ...).

Accuracy is reported per sample and, for comparison with published tables, as the references compute it: each
batch's accuracy rounded to 2 decimals, averaged over batches (the last, smaller batch weighs like a full one),
rounded again (spec item 1, KEEP as an extra column).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from avtta.corruptions import AUDIO_ORDER, AV_ORDER, VIDEO_ORDER, CorruptionSpec, format_spec
from avtta.shards import storage
from avtta.shards.io import file_digest
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

PROTOCOLS = ("clean", "video", "audio", "both", "av")


@dataclass(frozen=True)
class Condition:
    """One test condition: a shard-set selection (``str``) or a (video set, audio set) pair."""

    name: str  # e.g. "fog", "fog+rain", "clean"
    modality: str  # clean | video | audio | both | av
    severity: int
    selection: tuple[str, ...]  # one or two ``format_spec`` strings ("modality:name@severity" or "clean")

    @property
    def reader_selection(self) -> str | tuple[str, str]:
        return self.selection[0] if len(self.selection) == 1 else (self.selection[0], self.selection[1])


@dataclass(frozen=True)
class AdaptConfig:
    """What ``avtta adapt`` parses into."""

    catalog: str
    dataset: str
    checkpoint: str
    protocol: str = "video"
    corruptions: tuple[str, ...] = ("all",)
    severity: tuple[int, ...] = (5,)
    methods: tuple[str, ...] = ("all",)
    split: str = "test"
    source_split: str = "train"
    seeds: tuple[int, ...] = (111, 222, 333)
    batch_size: int = 64
    device: str = "auto"
    continual: bool = False
    out: str = "runs/adapt"
    model: str | None = None  # model name when the checkpoint does not say (released .pth)
    num_workers: int = 2
    access: str = "index"  # shard reading: "index" (random access, default) or "stream" (sequential webdataset)
    on_the_fly: bool = False  # corrupt the clean set while reading (conditions from the registry, not written sets)
    frame: str | int = "eval"  # which stored frame is the model input: "eval" = frame 5 (READ/BriMPR), or an index
    precision: str = "fp32"
    method_config: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-method overrides
    ray_address: str | None = None
    cache_dir: str | None = None  # a catalog behind a URL: keep its shards in this local folder (sha256-keyed)
    ray_retries: int = 3  # times a job lost with its Ray worker (process or node died) is run again, from reset
    progress: bool = True
    quiet: bool = False  # do not print the table (callers that print their own, e.g. the demo)
    valuation: bool = False  # per-sample modality valuation (phi_a, phi_v) with one extra pair of forwards per batch
    verbose: bool = False  # let an embedded Ray's own output through (avtta -v)

    def validate(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"--protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.access not in ("index", "stream"):
            raise ValueError(f"--access must be 'index' or 'stream', got {self.access!r}")
        if self.on_the_fly and self.access != "index":
            raise ValueError("--on-the-fly reads the clean set by index: it cannot be combined with --access stream")
        if not self.seeds:
            raise ValueError("--seeds needs at least one seed")
        if self.ray_retries < 0:
            raise ValueError(f"--ray-retries must be >= 0, got {self.ray_retries}")
        if not storage.exists(self.checkpoint):
            raise FileNotFoundError(f"--checkpoint {self.checkpoint} does not exist")


@dataclass(frozen=True)
class Job:
    method: str
    conditions: tuple[Condition, ...]  # one, or the continual sequence
    seed: int


def _ordered(names: Iterable[str], order: tuple[str, ...]) -> list[str]:
    names = set(names)
    return [n for n in order if n in names] + sorted(names - set(order))


def _have(cfg: AdaptConfig, catalog: Any, modality: str, severity: int) -> set[str]:
    """The corruption names a condition may take: the written sets, or (on the fly) every registered one."""
    if cfg.on_the_fly:
        return set({"video": VIDEO_ORDER, "audio": AUDIO_ORDER, "av": AV_ORDER}[modality])
    return {s.corruption for s in catalog.select(cfg.dataset, cfg.split, modality, severity=severity)}


def resolve_conditions(cfg: AdaptConfig, catalog: Any) -> list[Condition]:
    """Expand the protocol / corruption / severity selection against what the catalog holds.

    With ``on_the_fly`` the requested corruptions are resolved against the registry and made from the clean set
    while reading (``open_dataset(..., source="clean")``), so only the clean set (with ``--waveform`` for audio
    corruptions) need exist.
    """
    if cfg.protocol == "clean" or cfg.on_the_fly:
        clean = catalog.get(cfg.dataset, cfg.split)  # raises naming what exists
        if cfg.protocol != "clean" and cfg.protocol != "video" and not clean.waveform:
            raise ValueError(
                f"--on-the-fly --protocol {cfg.protocol}: the clean set {clean.path} was written without --waveform, "
                "so its audio cannot be corrupted while reading"
            )
    if cfg.protocol == "clean":
        return [Condition("clean", "clean", 0, ("clean",))]
    conditions = []
    for sev in cfg.severity:
        if cfg.protocol in ("video", "audio", "av"):
            have = _have(cfg, catalog, cfg.protocol, sev)
            order = {"video": VIDEO_ORDER, "audio": AUDIO_ORDER, "av": AV_ORDER}[cfg.protocol]
            names = _pick(cfg.corruptions, have, order, f"{cfg.protocol} sets at severity {sev}", cfg)
            conditions += [Condition(n, cfg.protocol, sev, (format_spec(cfg.protocol, n, sev),)) for n in names]
        else:  # both: video corruption x audio corruption (names given as video+audio, or all x all)
            vhave = _have(cfg, catalog, "video", sev)
            ahave = _have(cfg, catalog, "audio", sev)
            if tuple(cfg.corruptions) == ("all",):
                pairs = [(v, a) for v in _ordered(vhave, VIDEO_ORDER) for a in _ordered(ahave, AUDIO_ORDER)]
            else:
                pairs = []
                for item in cfg.corruptions:
                    if "+" not in item:
                        raise ValueError(f"--protocol both takes VIDEO+AUDIO pairs (e.g. fog+rain), got {item!r}")
                    v, a = item.split("+", 1)
                    for name, have, kind in ((v, vhave, "video"), (a, ahave, "audio")):
                        if name not in have:
                            raise ValueError(
                                f"no {kind} set {name!r} at severity {sev} in the catalog; have {sorted(have)}"
                            )
                    pairs.append((v, a))
            conditions += [
                Condition(f"{v}+{a}", "both", sev, (format_spec("video", v, sev), format_spec("audio", a, sev)))
                for v, a in pairs
            ]
    if not conditions:
        raise ValueError(f"nothing to run: no {cfg.protocol} shard sets of {cfg.dataset}/{cfg.split} in {cfg.catalog}")
    return conditions


def _pick(wanted: Iterable[str], have: set[str], order: tuple[str, ...], what: str, cfg: AdaptConfig) -> list[str]:
    wanted = list(wanted)
    if wanted == ["all"]:
        return _ordered(have, order)
    missing = [w for w in wanted if w not in have]
    if missing:
        raise ValueError(f"no {what} named {missing} in {cfg.catalog}; available: {_ordered(have, order)}")
    return wanted


def resolve_methods(methods: Iterable[str]) -> list[str]:
    from avtta.adapt import get_method_class, list_methods

    methods = list(methods)
    if methods == ["all"]:
        return list_methods()
    return [get_method_class(m).name for m in methods]


def plan_jobs(cfg: AdaptConfig, conditions: list[Condition], methods: list[str]) -> list[Job]:
    if cfg.continual:
        return [Job(m, tuple(conditions), s) for m in methods for s in cfg.seeds]
    return [Job(m, (c,), s) for m in methods for c in conditions for s in cfg.seeds]


def checkpoint_digest(path: str | Path) -> str:
    """16 hex digits of the sha256 of a checkpoint file, or of a folder's files' bytes in name order (cache keys)."""
    if not storage.is_local(path):  # a checkpoint object (s3://): its bytes, read once
        h = hashlib.sha256()
        with storage.open_read(path) as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()[:16]
    p = Path(path)
    if not p.is_dir():
        return file_digest(p)[1][:16]
    h = hashlib.sha256()
    for f in sorted(p.rglob("*")):
        if f.is_file():
            with open(f, "rb") as fh:
                for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()[:16]


def pick_device(device: str) -> torch.device:
    from avtta.device import resolve_device

    return resolve_device(device)


class AdaptationWorker:
    """Holds a catalog, a device and one adapted model per method; runs jobs one after another.

    The same class runs in-process and as a Ray actor (``endpoint``: the driver's S3 endpoint, for actors on other
    nodes; credentials come from each node's standard places). A checkpoint behind a URL is copied to a local
    temporary folder once per worker, with the ``.json`` beside it when there is one.
    """

    def __init__(self, cfg: AdaptConfig, endpoint: str | None = None):
        from avtta.manifests import Catalog

        storage.set_endpoint(endpoint)
        self._tmp = None
        if not storage.is_local(cfg.checkpoint):
            cfg = replace(cfg, checkpoint=self._local_checkpoint(cfg.checkpoint))
        self.cfg = cfg
        self.catalog = Catalog(cfg.catalog)
        self.device = pick_device(cfg.device)
        self.class_names = [mid for mid, _ in self.catalog.classes(cfg.dataset)]
        self.num_classes = len(self.class_names)
        self._methods: dict[str, Any] = {}
        self._ckpt = checkpoint_digest(cfg.checkpoint)

    def _local_checkpoint(self, url: str) -> str:
        import posixpath
        import tempfile

        self._tmp = tempfile.TemporaryDirectory(prefix="avtta-ckpt-")  # removed with the worker
        name = posixpath.basename(url.rstrip("/"))
        for src in (url, posixpath.splitext(url)[0] + ".json"):
            if src == url or storage.exists(src):
                with storage.open_read(src) as fh, open(Path(self._tmp.name) / posixpath.basename(src), "wb") as out:
                    for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                        out.write(block)
        return str(Path(self._tmp.name) / name)

    # -- building ------------------------------------------------------------------------------------------------
    def build_model(self) -> torch.nn.Module:
        from avtta.models import create_model, read_checkpoint_config

        name = self.cfg.model
        if name is None:
            try:
                name = read_checkpoint_config(self.cfg.checkpoint)["model"]
            except (FileNotFoundError, ValueError, KeyError):
                name = "cav_mae_ft_base"
        model = create_model(name, num_classes=self.num_classes, checkpoint=self.cfg.checkpoint)
        return model.to(self.device).eval()

    def _source(self, num_clips: int, seed: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        from avtta.manifests import open_dataset

        loader = open_dataset(
            self.catalog,
            self.cfg.dataset,
            self.cfg.source_split,
            "clean",
            batch_size=64,
            seed=seed,
            shuffle=True,
            num_workers=self.cfg.num_workers,
            access=self.cfg.access,
            frame=self.cfg.frame,
            cache_dir=self.cfg.cache_dir,
        )
        seen = 0
        for batch in loader:
            if seen >= num_clips:
                break
            take = min(len(batch["key"]), num_clips - seen)
            yield batch["audio"][:take].to(self.device), batch["video"][:take].to(self.device)
            seen += take

    def method(self, name: str, samples: int | None = None) -> Any:
        """The method ``name`` over its own model (built once per worker, reset between jobs).

        Serves the method's declarations: its config is model facts < dataset preset < protocol override < the
        stream's length (``samples`` of the test set, in batches) < the run's precision < ``--method-config``; its
        source data is loaded from (or computed into) the catalog's cache; its ``run_inputs`` get a
        :class:`RunContext` (class names, device, a loader of further checkpoints).
        """
        if name in self._methods:
            return self._methods[name]
        from avtta.adapt import RunContext, create_method, get_method_class, make_config, source_data_cached

        cls = get_method_class(name)
        model = self.build_model()
        batches = -(-samples // self.cfg.batch_size) if samples else None
        overrides = {
            **cls.run_config(model, dataset=self.cfg.dataset, protocol=self.cfg.protocol, stream_batches=batches),
            "precision": self.cfg.precision,
            **self.cfg.method_config.get(name, {}),
        }
        need = cls.source_data
        config = make_config(name, **overrides)
        if need is not None and need.needed(config):
            info = self.catalog.get(self.cfg.dataset, self.cfg.source_split)
            frame = str(self.cfg.frame)
            # the clips used are the first n of the reader's seeded order: the access mode is part of the key
            order = {"index": "ix", "stream": "st"}[self.cfg.access]
            meta = {"checkpoint": self._ckpt, "source_set": f"{info.path}:{info.job}", "frame": frame, "order": order}
            n = need.size(config)
            name_parts = (need.cache_key, self._ckpt, info.job or "x", n, f"f{frame}", order)
            path = storage.join(self.cfg.catalog, "_cache", "-".join(map(str, name_parts)) + ".safetensors")
            overrides[need.argument] = source_data_cached(need, model, self._source(n), path, n, metadata=meta)
        context = RunContext(tuple(self.class_names), self.device, self._load_frozen_model)
        inputs = cls.run_inputs(config, context)
        method = create_method(name, model, inputs=inputs, **overrides)
        self._methods[name] = method
        return method

    def _load_frozen_model(self, checkpoint: str, arch: str | None, num_classes: int | None) -> torch.nn.Module:
        """A further model a method asks for (``audio_assist``'s labeler): loaded on this device, frozen."""
        from avtta.models import create_model, read_checkpoint_config

        if arch is None or num_classes is None:
            try:
                saved = read_checkpoint_config(checkpoint)
            except (FileNotFoundError, ValueError) as err:
                raise ValueError(
                    f"labeler checkpoint {checkpoint}: give its model name and class list ({err})"
                ) from None
            arch = arch or saved.get("model")
            num_classes = num_classes or saved.get("arch", {}).get("num_classes")
        if arch is None or num_classes is None:
            raise ValueError(f"labeler checkpoint {checkpoint}: its config names no model or class count")
        model = create_model(arch, num_classes=int(num_classes), checkpoint=checkpoint)
        return model.to(self.device).eval().requires_grad_(False)

    def _on_the_fly(self) -> dict[str, Any]:
        """The reader arguments of ``--on-the-fly``: the clean set, and the fbanks batched on the GPU when there is
        one (the workers then only corrupt)."""
        if not self.cfg.on_the_fly:
            return {}
        return {"source": "clean", "fbank_device": str(self.device) if self.device.type == "cuda" else None}

    # -- running -------------------------------------------------------------------------------------------------
    def run(self, job: Job, bar: tqdm | None = None) -> JobResult:
        """One job: reset the method, stream each condition batch by batch, one online step per batch.

        Returns the results rows (one per condition) and the per-sample rows (``samples.parquet``: prediction,
        correctness, with ``valuation`` the modality values phi_a / phi_v of the model as it scored the batch, and
        the iterations of methods that record them).
        """
        from avtta.manifests import open_dataset

        from .valuation import values_from_logits
        from .valuation_report import batch_rows, samples_table

        first = job.conditions[0]
        method = self.method(job.method, condition_samples(self.cfg, self.catalog, first))
        method.reset(seed=job.seed)  # source state, generator seeded by the run seed (BriMPR: fresh prompts from it)
        rows: list[dict[str, Any]] = []
        # per-sample rows become a columnar table per condition (~70 B a row instead of ~330 B as dicts): a long
        # sweep holds every job's rows until samples.parquet is written
        tables: list[pa.Table] = []
        # the valuation looks at the model as it scored: before the step, or after it for post-update scoring
        after = bool(method.scores_after_update)
        for cond in job.conditions:
            loader = open_dataset(
                self.catalog,
                self.cfg.dataset,
                self.cfg.split,
                cond.reader_selection,
                batch_size=self.cfg.batch_size,
                seed=job.seed,
                shuffle=True,
                num_workers=self.cfg.num_workers,
                access=self.cfg.access,
                frame=self.cfg.frame,
                pin_memory=self.device.type == "cuda",
                cache_dir=self.cfg.cache_dir,
                **self._on_the_fly(),
            )
            correct = total = 0
            samples: list[dict[str, Any]] = []
            batch_accs = []
            iterations: list[int] = []
            t0 = time.perf_counter()
            for batch in loader:
                audio = batch["audio"].to(self.device, non_blocking=True)
                video = batch["video"].to(self.device, non_blocking=True)
                label = batch["label"].to(self.device, non_blocking=True)
                if self.cfg.valuation and not after:
                    unimodal = _unimodal_logits(method, audio, video)
                logits = method.step(audio, video, keys=batch["key"])
                values = None
                if self.cfg.valuation:
                    unimodal = _unimodal_logits(method, audio, video) if after else unimodal
                    values = values_from_logits(logits, *unimodal, label)
                its = getattr(method, "last_iterations", None)
                iterations += list(its or [])
                samples += batch_rows(batch["key"], cond.name, job.method, job.seed, label, logits, values, its)
                hit = int((logits.argmax(dim=1) == label).sum())
                correct += hit
                total += len(label)
                batch_accs.append(round(100.0 * hit / len(label), 2))
                if bar is not None:
                    bar.update(len(label))
                    bar.set_postfix_str(f"{job.method} {cond.name} s{job.seed} acc {100.0 * correct / total:.1f}")
            seconds = time.perf_counter() - t0
            tables.append(samples_table(samples))
            rows.append(
                {
                    "method": job.method,
                    "protocol": cond.modality,
                    "corruption": cond.name,
                    "severity": cond.severity,
                    "seed": job.seed,
                    "accuracy": 100.0 * correct / total if total else float("nan"),
                    "accuracy_batch_avg": round(sum(batch_accs) / len(batch_accs), 2) if batch_accs else float("nan"),
                    "samples": total,
                    "batches": len(batch_accs),
                    "seconds": seconds,
                    "samples_per_s": total / seconds if seconds > 0 else float("nan"),
                    "continual": self.cfg.continual,
                    # per-sample adaptation cycles (audio_assist); NaN for methods with one step per batch
                    "iterations_mean": sum(iterations) / len(iterations) if iterations else float("nan"),
                }
            )
        return JobResult(rows, pa.concat_tables(tables))


@dataclass
class JobResult:
    """What one job returns: results rows (one per condition) and its per-sample rows (``samples.parquet`` columns)."""

    rows: list[dict[str, Any]]
    samples: pa.Table


def _unimodal_logits(method: Any, audio: torch.Tensor, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Audio-only and video-only logits of the method's model (no grad; the method's state is untouched)."""
    from .valuation import modality_logits

    return modality_logits(method.model, audio, video, method.autocast())


def run_adaptation(cfg: AdaptConfig) -> list[dict[str, Any]]:
    """Run every (method, condition, seed) job; write results, tables and the heatmap under ``cfg.out``."""
    from avtta.manifests import Catalog

    from .report import write_report

    cfg.validate()
    catalog = Catalog(cfg.catalog)
    conditions = resolve_conditions(cfg, catalog)
    methods = resolve_methods(cfg.methods)
    jobs = plan_jobs(cfg, conditions, methods)
    out = str(cfg.out)  # a folder or a URL: every output goes through the storage layer
    resolved = asdict(cfg)
    resolved.update(conditions=[c.name for c in conditions], methods=methods, device=str(pick_device(cfg.device)))
    storage.atomic_write(storage.join(out, "config.json"), json.dumps(resolved, indent=2, default=str) + "\n")
    per_job = {c.name: condition_samples(cfg, catalog, c) for c in conditions}
    log.info(
        "%d jobs: %d methods x %d conditions x %d seeds%s",
        len(jobs),
        len(methods),
        len(conditions),
        len(cfg.seeds),
        " (continual)" if cfg.continual else "",
    )
    results = _run_jobs(cfg, jobs, per_job)
    rows = [r for res in results for r in res.rows]
    _write_samples([res.samples for res in results], out, valuation=cfg.valuation)
    write_report(rows, out, quiet=cfg.quiet)
    return rows


def _run_jobs(cfg: AdaptConfig, jobs: list[Job], per_job: dict[str, int]) -> list[JobResult]:
    """Run the jobs in this process (one bar over clips), or fanned out over Ray actors (``--ray-address``): one
    actor per GPU when the cluster has GPUs, else one per CPU; results in job order."""
    if not cfg.ray_address:
        worker = AdaptationWorker(cfg)
        total = sum(per_job[c.name] for j in jobs for c in j.conditions)
        with tqdm(total=total, unit="clip", desc="adapt", disable=not cfg.progress, dynamic_ncols=True) as bar:
            return [worker.run(job, bar) for job in jobs]
    from avtta.pipelines.ray_runner import run_tasks

    # the actors see the same files: local catalog and checkpoint paths must be shared (absolute); URLs are read by
    # every actor itself, through the driver's S3 endpoint
    rcfg = replace(cfg, catalog=_absolute(cfg.catalog), checkpoint=_absolute(cfg.checkpoint), progress=False)
    return run_tasks(
        jobs,
        make_worker=functools.partial(AdaptationWorker, rcfg, endpoint=storage.endpoint_url()),
        address=cfg.ray_address,
        progress=cfg.progress,
        desc="clips adapt (ray)",
        unit_of=lambda job: sum(per_job[c.name] for c in job.conditions),
        actor_options=_actor_options,
        verbose=cfg.verbose,
        retries=cfg.ray_retries,  # a job is safe to rerun: run() resets the method to the source weights first
        describe=_describe_job,
    )


def _absolute(path: str) -> str:
    return str(Path(path).resolve()) if storage.is_local(path) else path


def _describe_job(job: Job) -> str:
    return f"adaptation job {job.method} on {', '.join(c.name for c in job.conditions)}, seed {job.seed}"


def _actor_options(resources: dict[str, float]) -> dict[str, Any]:
    """One GPU per adaptation actor when the cluster has GPUs, else one CPU."""
    return {"num_gpus": 1} if resources.get("GPU", 0) >= 1 else {}


def _write_samples(tables: list[pa.Table], out: str, *, valuation: bool) -> None:
    """``samples.parquet`` (one row per scored sample) and, with valuation, the valuation report beside it."""
    from .valuation_report import SAMPLES_FILE, samples_table, write_valuation_report

    table = pa.concat_tables(tables) if tables else samples_table([])
    storage.atomic_write(storage.join(out, SAMPLES_FILE), lambda fh: pq.write_table(table, fh, compression="zstd"))
    if valuation and table.num_rows:
        write_valuation_report(table, out)


def condition_samples(cfg: AdaptConfig, catalog: Any, cond: Condition) -> int:
    """Samples a condition streams: its (video) set's, or the clean set's when corrupting on the fly."""
    if cfg.on_the_fly:
        return catalog.get(cfg.dataset, cfg.split).samples
    return catalog.get(cfg.dataset, cfg.split, *_spec_key(cond.selection[0])).samples


def _spec_key(selection: str) -> tuple[str, str, int]:
    spec = CorruptionSpec.parse(selection, strict=False)  # imported sets may carry names outside the registry
    return spec.modality, spec.name, spec.severity
