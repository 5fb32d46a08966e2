"""``avtta demo``: the embedded default benchmark, end to end, on a CPU, with nothing downloaded.

Steps, each cached (a rerun skips what is complete):

1. generate the synthetic audio-visual data set (``pipelines/demo_data.py``) as real mp4 files;
2. shard it with the raw-video pipeline (``run_shard_job``): clean train, clean test and corrupted test sets;
3. fine-tune a small CAV-MAE (``cav_mae_ft_tiny``) on the clean train shards (``models/train.py``);
4. run the TTA methods online on the clean and corrupted test shards (``adapt/worker.py``), per protocol;
5. write one table (accuracy per method x corruption, mean over corruptions) and a heatmap under ``out``.

Three profiles: ``quick`` (a smoke run on a few dozen tiny clips, used by the tests), ``default`` (10 classes,
1000 + 400 clips, a representative corruption subset at severity 5, one seed) and ``full`` (every corruption,
three seeds; it shares the default profile's data, shards and source model).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from avtta.shards import storage

log = logging.getLogger(__name__)

__all__ = ["PROFILES", "DemoPaths", "DemoProfile", "DemoResult", "demo_paths", "run_demo"]

DATASET = "avsynth"


@dataclass(frozen=True)
class DemoProfile:
    """Everything a demo run does; the profiles in :data:`PROFILES` are the supported choices."""

    name: str
    # data (pipelines/demo_data.py)
    num_classes: int = 10
    train_clips: int = 1000
    test_clips: int = 400
    seconds: float = 2.0
    size: int = 64
    fps: float = 10.0
    # shards: frames stored per clip. Training samples a random stored frame; the test sets need only the one frame
    # the model reads, so they store one (video corruptions cost per stored frame).
    train_frames: int = 4
    test_frames: int = 1
    shard_size: int = 100
    # corruptions at severity 5, per protocol ("all": every registered one). The default subset is the corruptions
    # that hurt the source model on this data, one or two per protocol, so that all 15 methods fit in the time budget
    # (measured on all 36: video noise, blur, pixelate and JPEG leave the hue cue intact; snow, fog and contrast wash
    # it out; wind is the worst audio noise kept after gaussian/traffic; underwater the worst audio-visual pair).
    video: tuple[str, ...] = ("snow", "fog")
    audio: tuple[str, ...] = ("wind",)
    av: tuple[str, ...] = ("underwater",)
    severity: int = 5
    # source model (models/train.py)
    model: str = "cav_mae_ft_tiny"
    epochs: int = 15
    train_batch_size: int = 32
    # adaptation (adapt/worker.py). Batch 10: 40 online steps per 400-clip set, so that online adaptation has time to
    # act (at the references' batch 64 a set is 7 steps, and a working method cannot be told from a no-op).
    methods: tuple[str, ...] = ("all",)
    seeds: tuple[int, ...] = (111,)
    batch_size: int = 10
    valuation: bool = True  # per-sample modality valuation (samples.parquet, valuation.png per protocol)
    seed: int = 0
    # where the data of this profile lives under ``data`` and its results under ``out`` ("" = the folder itself)
    data_subdir: str = ""
    out_subdir: str = ""

    def corruption_specs(self) -> tuple[str, ...]:
        """Shard-job specs of the test sets: clean plus every selected corruption."""
        from avtta.corruptions import list_corruptions

        specs = ["none"]
        for modality in ("video", "audio", "av"):
            names = getattr(self, modality)
            if names == ("all",):
                names = tuple(n for m, n in _registered(list_corruptions()) if m == modality)
            specs += [f"{modality}:{n}@{self.severity}" for n in names]
        return tuple(specs)


def _registered(items: list[str]) -> list[tuple[str, str]]:
    """``list_corruptions()`` entries (``modality:name``) as (modality, name) pairs."""
    return [tuple(item.split(":", 1)) for item in items]  # type: ignore[misc]


PROFILES: dict[str, DemoProfile] = {
    "quick": DemoProfile(
        name="quick",
        num_classes=4,
        train_clips=48,
        test_clips=24,
        seconds=1.0,
        size=48,
        fps=8.0,
        train_frames=2,
        shard_size=24,
        video=("gaussian_noise",),
        audio=("gaussian_noise",),
        av=(),
        epochs=2,
        train_batch_size=16,
        batch_size=16,
        data_subdir="quick",
        out_subdir="quick",
    ),
    "default": DemoProfile(name="default"),
    "full": DemoProfile(
        name="full", video=("all",), audio=("all",), av=("all",), seeds=(111, 222, 333), out_subdir="full"
    ),
}


@dataclass
class DemoResult:
    """What :func:`run_demo` produced."""

    out: Path | str  # a Path, or the URL of an s3:// --out
    table: str  # Markdown: accuracy per method x corruption (mean over corruptions), then the clean table
    rows: list[dict[str, Any]]
    clean: dict[str, float]  # source model on clean test data: acc_multimodal, acc_audio, acc_video (percent)
    timings: dict[str, float]  # seconds per step (a cached step takes ~0)
    cached: list[str]  # steps skipped because their output was complete


@dataclass(frozen=True)
class DemoPaths:
    """Where a profile's data and results live (folders or ``s3://`` URLs); :func:`demo_paths` makes them."""

    data: str  # the profile's data root: ``videos/`` and the shard catalog
    catalog: str  # the shard catalog, ``<data>/shards-v<schema version>`` (``avtta demo`` and ``--balance`` share it)
    out: str  # the profile's results folder
    source: str  # the source model's run folder (``full`` shares the default profile's)


def demo_paths(p: DemoProfile, data: str | Path, out: str | Path) -> DemoPaths:
    """The one layout of every demo command (``avtta demo`` and ``avtta demo --balance``) under ``data`` and ``out``.

    One shard folder per schema version: a format change re-shards into a new folder instead of meeting the old sets'
    fingerprints (the shard job refuses to mix jobs in one folder); the old folder can be deleted.
    """
    from avtta.shards.schema import SCHEMA_VERSION

    data_root = storage.join(data, p.data_subdir) if p.data_subdir else str(data)
    out_dir = storage.join(out, p.out_subdir) if p.out_subdir else str(out)
    # full shares the default profile's source model (same data, same recipe)
    source = storage.join(str(out) if p.name == "full" else out_dir, "source")
    return DemoPaths(data_root, storage.join(data_root, f"shards-v{SCHEMA_VERSION}"), out_dir, source)


def _pick_workers(workers: int | None, p: DemoProfile) -> int:
    """``workers`` checked; by default all CPUs, but 0 (in this process) for the quick profile: a Ray start-up would
    be most of a smoke run."""
    if workers is not None:
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        return workers
    if p.name == "quick":
        return 0
    from avtta.shards.io import cpu_count

    return cpu_count()


def _read_json(path: str | Path) -> Any:
    """The JSON document at ``path`` (a local path or a URL), or None when it is missing or unreadable."""
    try:
        if not storage.exists(path):
            return None
        return json.loads(storage.read_text(path))
    except (OSError, json.JSONDecodeError):  # StorageError is an OSError
        return None


def _write_json(obj: Any, path: str | Path) -> None:
    if storage.is_local(path):
        storage.local_path(path).parent.mkdir(parents=True, exist_ok=True)
    storage.atomic_write(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def _step_generate(p: DemoProfile, data: str | Path, workers: int) -> tuple[Any, bool]:
    """The demo videos under ``<data>/videos``. For a URL (``s3://``) they are generated in a local temporary
    folder and uploaded, ``dataset.json`` last (its presence marks a complete upload, as it marks a complete local
    data set); the returned data set then names the URLs, and the shard job reads them from there."""
    import tempfile

    from avtta.pipelines import demo_data as dd

    videos = storage.join(data, "videos")
    options = dict(
        num_classes=p.num_classes, train=p.train_clips, test=p.test_clips, seconds=float(p.seconds), size=p.size,
        fps=float(p.fps), seed=p.seed,
    )  # fmt: skip
    if storage.is_local(videos):
        cached = storage.exists(storage.join(videos, dd.DATASET_FILE))
        return dd.generate_demo_dataset(videos, workers=workers, **options), cached
    cfg = dd.DemoConfig(**options)
    found = _read_json(storage.join(videos, dd.DATASET_FILE))
    if found is not None and found.get("config") != asdict(cfg):
        raise ValueError(
            f"{videos} holds a demo data set made with other options ({found.get('config')}); choose another --data"
        )
    if found is None:
        with tempfile.TemporaryDirectory(prefix="avtta-demo-") as tmp:
            dd.generate_demo_dataset(tmp, workers=workers, **options)
            files = sorted(f.relative_to(tmp).as_posix() for f in Path(tmp).rglob("*") if f.is_file())
            for rel in sorted(files, key=lambda r: r == dd.DATASET_FILE):
                storage.upload(Path(tmp) / rel, storage.join(videos, rel))
    urls = [storage.join(videos, part) for part in ("train", "test", dd.LABELS_FILE, dd.CLIPS_FILE)]
    ds = dd.DemoDataset(videos, *urls, tuple(dd.class_table(p.num_classes)), cfg)  # type: ignore[arg-type]
    return ds, found is not None


def _step_shard(p: DemoProfile, ds: Any, catalog: str | Path, workers: int, progress: bool) -> bool:
    """Shard the clean train split and the clean + corrupted test split; True when nothing was left to do."""
    from avtta.pipelines.shard_job import ShardJobConfig, run_shard_job

    done = True
    for split, folder, frames, corrupt in (
        ("train", ds.train, p.train_frames, ("none",)),
        ("test", ds.test, p.test_frames, p.corruption_specs()),
    ):
        summary = run_shard_job(
            ShardJobConfig(
                videos=str(folder), labels=str(ds.labels), out=str(catalog), dataset=DATASET, split=split,
                corrupt=corrupt, frames=frames, shard_size=p.shard_size, seed=p.seed, workers=workers,
                progress=progress,
            )
        )  # fmt: skip
        log.info("shards %s: %s", split, summary.format())
        if summary.failed:
            raise ValueError(f"{summary.failed} demo clips failed to shard; see failures.parquet under {catalog}")
        done &= summary.resumed_chunks >= -(-summary.clips // p.shard_size)
    return done


def _step_data(
    p: DemoProfile, paths: DemoPaths, workers: int | None, progress: bool
) -> tuple[Any, dict[str, float], list[str]]:
    """Steps 1 and 2 of every demo command: the videos and their shards in ``paths.catalog``, each made when missing.

    Returns the data set, the seconds per step (``generate``, ``shard``) and the steps that were already complete.
    """
    workers = _pick_workers(workers, p)
    timings: dict[str, float] = {}
    cached: list[str] = []
    t0 = time.perf_counter()
    ds, was_cached = _step_generate(p, paths.data, workers)
    timings["generate"] = time.perf_counter() - t0
    cached += ["generate"] if was_cached else []
    log.info("demo 1/4: data set in %s (%.1f s%s)", ds.root, timings["generate"], ", cached" if was_cached else "")

    t0 = time.perf_counter()
    was_cached = _step_shard(p, ds, paths.catalog, workers, progress)
    timings["shard"] = time.perf_counter() - t0
    cached += ["shard"] if was_cached else []
    log.info("demo 2/4: shards in %s (%.1f s%s)", paths.catalog, timings["shard"], ", cached" if was_cached else "")
    return ds, timings, cached


def _step_train(
    p: DemoProfile, catalog: str | Path, run: str | Path, progress: bool, **options: Any
) -> tuple[str, dict[str, float], bool]:
    """Train the source model (resuming a killed run); return its checkpoint and last validation accuracies.

    ``options``: further ``TrainConfig`` fields (the balanced variants of ``avtta demo --balance``).
    """
    from avtta.models.train import TrainConfig, saved_config, train

    cfg = TrainConfig(
        catalog=str(catalog), dataset=DATASET, model=p.model, out=str(run), epochs=p.epochs,
        batch_size=p.train_batch_size, seed=p.seed, val_split="test", progress=progress, **options,
    )  # fmt: skip
    state = _read_json(storage.join(run, "state.json"))
    # with the defaults of fields added since (a model trained before the balance options still matches)
    config_file = storage.join(run, "train_config.json")
    saved = saved_config(config_file) if _read_json(config_file) is not None else None
    # paths and run-time knobs may be spelled differently between runs; everything else must match
    volatile = ("catalog", "out", "progress", "num_workers", "device")
    same = saved is not None and all(saved.get(k) == v for k, v in cfg.to_json().items() if k not in volatile)
    cached = bool(same and state and state.get("progress", {}).get("epochs_done") == p.epochs)
    if cached:
        history = state["progress"]["history"]
    else:
        if saved is not None and not same:
            raise ValueError(
                f"{run} holds a source model trained with other options; remove the folder or choose another --out"
            )
        history = train(cfg, resume=storage.exists(storage.join(run, "state.safetensors"))).history
    last = history[-1] if history else {}
    clean = {k: float(v) for k, v in last.items() if k.startswith("acc_")}
    return storage.join(run, "model.safetensors"), clean, cached


def _step_adapt(
    p: DemoProfile,
    catalog: str | Path,
    checkpoint: str | Path,
    out: str | Path,
    protocol: str,
    names: tuple[str, ...],
    progress: bool,
) -> tuple[list[dict[str, Any]], bool]:
    """Run every method on one protocol's sets (cached by config and checkpoint digest)."""

    import pyarrow as pa
    import pyarrow.parquet as pq

    from avtta.adapt.report import RESULTS_FILE
    from avtta.adapt.worker import AdaptConfig, checkpoint_digest, run_adaptation

    run = storage.join(out, "adapt", protocol)
    cfg = AdaptConfig(
        catalog=str(catalog), dataset=DATASET, checkpoint=str(checkpoint), protocol=protocol,
        corruptions=names if protocol != "clean" else ("all",), severity=(p.severity,), methods=p.methods,
        seeds=p.seeds, batch_size=p.batch_size, out=str(run), progress=progress, quiet=True, valuation=p.valuation,
    )  # fmt: skip
    config = {k: v for k, v in asdict(cfg).items() if k != "quiet"}
    key = {"config": config, "checkpoint": checkpoint_digest(checkpoint)}
    marker, results = storage.join(run, "demo_step.json"), storage.join(run, RESULTS_FILE)
    if _read_json(marker) == json.loads(json.dumps(key, default=str)) and storage.exists(results):
        return pq.read_table(pa.BufferReader(storage.read_bytes(results))).to_pylist(), True
    rows = run_adaptation(cfg)
    _write_json(key, marker)
    return rows, False


_PREFIX = {"video": "v", "audio": "a", "av": "av"}
# validation heads of models/train.py: one-modality accuracy uses the model's missing-modality forward
_CLEAN_NAMES = {
    "acc_multimodal": "audio + video",
    "acc_audio": "audio only (missing video)",
    "acc_video": "video only (missing audio)",
}


def _write_valuation(out_dir: str | Path) -> None:
    """One valuation report over every protocol's samples (sets named ``v:snow``, ``a:wind``..., and ``clean``)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from avtta.adapt.valuation_report import SAMPLES_FILE, write_valuation_report

    tables = []
    for protocol in ("clean", "video", "audio", "av"):
        path = storage.join(out_dir, "adapt", protocol, SAMPLES_FILE)
        if storage.exists(path):
            table = pq.read_table(pa.BufferReader(storage.read_bytes(path)))
            if protocol != "clean":
                names = pc.binary_join_element_wise(_PREFIX[protocol], table["set"], ":")
                table = table.set_column(table.schema.get_field_index("set"), "set", names)
            tables.append(table)
    if tables:
        write_valuation_report(pa.concat_tables(tables), out_dir)


def _label(row: dict[str, Any]) -> dict[str, Any]:
    """A row whose condition name says its modality (``v:gaussian_noise`` vs ``a:gaussian_noise``)."""
    return {**row, "corruption": f"{_PREFIX[row['protocol']]}:{row['corruption']}"}


def run_demo(
    out: str | Path = "runs/demo",
    data: str | Path = "data/demo",
    quick: bool = False,
    full: bool = False,
    workers: int | None = None,
    progress: bool = True,
) -> DemoResult:
    """Run the demo benchmark end to end; see the module docstring.

    Args:
        out: results root, a folder or an ``s3://`` URL (``table.md``, ``heatmap.png``, ``results.parquet``,
            ``demo.json``; the source model in ``source/`` and the per-protocol runs in ``adapt/``). ``quick`` and
            ``full`` write to sub-folders.
        data: data root, a folder or an ``s3://`` URL (videos in ``videos/``, the shard catalog in
            ``shards-v<schema version>/``; ``quick``: in ``quick/``).
        quick: the smoke profile (tiny data, 2 corruptions, all methods; well under 3 minutes).
        full: every corruption at severity 5, three seeds.
        workers: processes for generation and sharding (default: all CPUs; 0: in this process, without Ray).
        progress: show progress bars.
    """
    from avtta.adapt.report import markdown_table, write_report

    if quick and full:
        raise ValueError("choose one of quick and full, not both")
    p = PROFILES["quick" if quick else "full" if full else "default"]
    # local paths or URLs (s3://): every read and write below goes through avtta.shards.storage
    paths = demo_paths(p, data, out)
    out_dir, catalog = paths.out, paths.catalog
    t_all = time.perf_counter()
    ds, timings, cached = _step_data(p, paths, workers, progress)

    t0 = time.perf_counter()
    checkpoint, clean, was_cached = _step_train(p, catalog, paths.source, progress)
    timings["train"] = time.perf_counter() - t0
    cached += ["train"] if was_cached else []
    log.info(
        "demo 3/4: source model %s, clean accuracy %s (%.1f s%s)",
        checkpoint,
        {k: round(v, 1) for k, v in clean.items()},
        timings["train"],
        ", cached" if was_cached else "",
    )

    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    clean_rows: list[dict[str, Any]] = []
    all_cached = True
    for protocol in ("clean", "video", "audio", "av"):
        names = getattr(p, protocol) if protocol != "clean" else ()
        if protocol != "clean" and not names:
            continue
        got, was_cached = _step_adapt(p, catalog, checkpoint, out_dir, protocol, names, progress)
        all_cached &= was_cached
        if protocol == "clean":
            clean_rows = got
        else:
            rows += [_label(r) for r in got]
    timings["adapt"] = time.perf_counter() - t0
    cached += ["adapt"] if all_cached else []
    log.info(
        "demo 4/4: %d adaptation runs (%.1f s%s)",
        len(rows) + len(clean_rows),
        timings["adapt"],
        ", cached" if all_cached else "",
    )

    write_report(rows, out_dir, quiet=True)
    if p.valuation:
        _write_valuation(out_dir)
    seeds = f"{len(p.seeds)} seed{'s' if len(p.seeds) > 1 else ''}"
    table = (
        f"Accuracy (%) on corrupted test data (severity {p.severity}; v: video, a: audio, av: audio-visual "
        f"corruption; mean over {seeds}; last column: mean over corruptions)\n\n"
        + markdown_table(rows)
        + "\n\nAccuracy (%) on clean test data\n\n"
        + markdown_table(clean_rows)
        + "\n\nSource model on clean test data: "
        + ", ".join(f"{_CLEAN_NAMES.get(k, k)} {v:.1f} %" for k, v in clean.items())
    )
    storage.atomic_write(storage.join(out_dir, "table.md"), table + "\n")
    timings["total"] = time.perf_counter() - t_all
    summary = {
        "profile": asdict(p),
        "data": str(ds.root),
        "catalog": str(catalog),
        "checkpoint": str(checkpoint),
        "clean_accuracy_source": clean,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "cached_steps": cached,
    }
    _write_json(summary, storage.join(out_dir, "demo.json"))
    return DemoResult(
        Path(out_dir) if storage.is_local(out_dir) else out_dir, table, rows + clean_rows, clean, timings, cached
    )
