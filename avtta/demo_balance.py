"""``avtta demo --balance``: does a balanced or structure-preserving source model adapt better? (issue 14)

On the demo's data and shards (``avtta.demo``, the same folders: ``demo_paths``; generated first when missing, and
reused by ``avtta demo`` on the same ``--data``), three source models are trained with the demo's recipe: ``plain``
(the default demo's own source model, shared with ``avtta demo``), ``resample`` (``--resample sample``:
valuation-based re-sampling after the official 5-epoch warm-up, Wei et al. CVPR'24) and ``structure``
(``--structure-loss 0.1``: the Multi-Sinkhorn-Knopp structure-preserving loss, Swetha et al. ICCV'23). For each: the
clean accuracies (multimodal, audio only, video only) and Source, READ and BriMPR on the demo's corrupted test sets.
Everything goes to one table (``table_balance.md``) and one plot (``balance.png``) under ``<out>/balance``; each
step is cached like the demo's own.

Why weight 0.1 for the structure loss: the official cost ``BCE(exp(s / 0.1), t)`` takes logits up to e^10, so at
weight 1 the loss is an order of magnitude above the cross-entropy (5 to 18 against ~1.1 on the unit-test model) and
would dominate the classification objective; 0.1 puts it at the cross-entropy's scale. The queue holds 256
embeddings (8 batches) instead of the official 5500, which is more than the demo's 1000 training clips (the loss
waits until the queue is full).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from avtta.demo import PROFILES, DemoProfile, _step_adapt, _step_data, _step_train, _write_json, demo_paths
from avtta.shards import storage

log = logging.getLogger(__name__)

__all__ = ["BALANCE_METHODS", "BalanceResult", "balance_variants", "run_balance_demo"]

BALANCE_METHODS = ("source", "read", "brimpr")
STRUCTURE_WEIGHT = 0.1
STRUCTURE_QUEUE = 256
_CLEAN_COLUMNS = (("acc_multimodal", "audio + video"), ("acc_audio", "audio only"), ("acc_video", "video only"))
_PREFIX = {"video": "v", "audio": "a", "av": "av"}


def balance_variants(p: DemoProfile) -> dict[str, dict[str, Any]]:
    """The three source models: name -> extra ``TrainConfig`` options.

    The re-sampling warm-up is the official 5 epochs when the profile trains long enough for re-sampled epochs to
    follow (the default profile's 15), else 1 (the quick profile's 2 epochs); the structure queue is capped at half
    the training set so the loss starts within the first epoch on tiny data.
    """
    warmup = 5 if p.epochs > 5 else 1
    queue = min(STRUCTURE_QUEUE, p.train_clips // 2)
    return {
        "plain": {},
        "resample": {"resample": "sample", "resample_warmup": warmup},
        "structure": {"structure_loss": STRUCTURE_WEIGHT, "structure_queue": queue},
    }


@dataclass
class BalanceResult:
    """What :func:`run_balance_demo` produced."""

    out: Path | str  # a Path, or the URL of an s3:// --out
    table: str  # Markdown: clean accuracies per model, then Source/READ/BriMPR per model x corruption
    rows: list[dict[str, Any]]  # adaptation rows; "model" names the source model
    clean: dict[str, dict[str, float]]  # model -> acc_multimodal, acc_audio, acc_video (percent)
    timings: dict[str, float]
    cached: list[str]


def _options_text(options: dict[str, Any]) -> str:
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in options.items())
    return flags or "(the demo recipe)"


def _tables(variants: dict[str, dict[str, Any]], clean: dict[str, dict[str, float]], rows: list[dict[str, Any]]) -> str:
    from avtta.adapt.report import markdown_table

    lines = ["| source model | training options | " + " | ".join(n for _, n in _CLEAN_COLUMNS) + " |",
             "|---|---|" + "---:|" * len(_CLEAN_COLUMNS)]  # fmt: skip
    for name, options in variants.items():
        accs = " | ".join(f"{clean[name].get(k, float('nan')):.1f}" for k, _ in _CLEAN_COLUMNS)
        lines.append(f"| {name} | {_options_text(options)} | {accs} |")
    labelled = [{**r, "method": f"{r['model']}: {r['method']}"} for r in rows]
    return (
        "Source models on clean test data: accuracy (%) (one modality: the missing-modality forward)\n\n"
        + "\n".join(lines)
        + "\n\nAccuracy (%) on the corrupted test data (v: video, a: audio, av: audio-visual corruption; last "
        "column: mean over corruptions), per source model and method\n\n" + markdown_table(labelled)
    )


def plot_balance(
    variants: list[str], clean: dict[str, dict[str, float]], rows: list[dict[str, Any]], path: str | Path
) -> Path:
    """One figure: clean accuracies per model, then per method the mean accuracy per corruption protocol."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    protocols = [p for p in ("video", "audio", "av") if any(r["protocol"] == p for r in rows)]
    groups = [*protocols, "mean"]
    fig, axes = plt.subplots(1, 1 + len(BALANCE_METHODS), figsize=(4.2 * (1 + len(BALANCE_METHODS)), 3.8), sharey=True)
    width = 0.8 / len(variants)
    colors = plt.get_cmap("tab10").colors
    ax = axes[0]
    for i, name in enumerate(variants):
        values = [clean[name].get(k, np.nan) for k, _ in _CLEAN_COLUMNS]
        bars = ax.bar(np.arange(len(_CLEAN_COLUMNS)) + (i - (len(variants) - 1) / 2) * width, values, width,
                      label=name, color=colors[i])  # fmt: skip
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks(range(len(_CLEAN_COLUMNS)), [n for _, n in _CLEAN_COLUMNS])
    ax.set_title("clean test data (source model)")
    ax.set_ylabel("accuracy (%)")
    ax.legend(title="source model", fontsize=8)
    for ax, method in zip(axes[1:], BALANCE_METHODS, strict=True):
        for i, name in enumerate(variants):
            mine = [r for r in rows if r["model"] == name and r["method"] == method]
            values = [
                float(np.mean([r["accuracy"] for r in mine if r["protocol"] == p] or [np.nan])) for p in protocols
            ]
            values.append(float(np.mean([r["accuracy"] for r in mine])) if mine else np.nan)
            bars = ax.bar(np.arange(len(groups)) + (i - (len(variants) - 1) / 2) * width, values, width, label=name,
                          color=colors[i])  # fmt: skip
            ax.bar_label(bars, fmt="%.0f", fontsize=7)
        ax.set_xticks(range(len(groups)), [f"{g} corr." if g != "mean" else "all" for g in groups])
        ax.set_title(f"{method}: mean over corruptions")
    axes[0].set_ylim(0, 105)
    fig.tight_layout()
    if storage.is_local(path):
        storage.local_path(path).parent.mkdir(parents=True, exist_ok=True)
    with storage.staged_path(path) as tmp:  # a local temporary renamed, or uploaded whole (s3://)
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return Path(path) if storage.is_local(path) else path  # type: ignore[return-value]


def run_balance_demo(
    out: str | Path = "runs/demo",
    data: str | Path = "data/demo",
    quick: bool = False,
    workers: int | None = None,
    progress: bool = True,
) -> BalanceResult:
    """Train the three source models and adapt each; see the module docstring.

    Args:
        out: the demo's results root; this comparison writes ``balance/`` under the profile's folder.
        data: the demo's data root (shared with ``avtta demo``: the same videos and shard catalog).
        quick: on the quick profile's tiny data (the tests).
        workers: processes for generation and sharding (default: all CPUs; 0: in this process, without Ray).
        progress: show progress bars.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = replace(PROFILES["quick" if quick else "default"], methods=BALANCE_METHODS)
    # local paths or URLs (s3://), through avtta.shards.storage; the demo's own layout: its videos, shard catalog and
    # source model are reused when `avtta demo` made them on the same --data / --out (and vice versa)
    paths = demo_paths(p, data, out)
    out_dir, catalog = storage.join(paths.out, "balance"), paths.catalog
    t_all = time.perf_counter()
    _, timings, cached = _step_data(p, paths, workers, progress)

    variants = balance_variants(p)
    clean: dict[str, dict[str, float]] = {}
    rows: list[dict[str, Any]] = []
    for name, options in variants.items():
        t0 = time.perf_counter()
        # plain = the demo's own source model (same folder, same config: trained once for both commands)
        run = paths.source if not options else storage.join(out_dir, "models", name)
        checkpoint, clean[name], was_cached = _step_train(p, catalog, run, progress, **options)
        timings[f"train {name}"] = time.perf_counter() - t0
        cached += [f"train {name}"] if was_cached else []
        log.info("balance: source model %s: %s (%.1f s%s)", name, {k: round(v, 1) for k, v in clean[name].items()},
                 timings[f"train {name}"], ", cached" if was_cached else "")  # fmt: skip

        t0 = time.perf_counter()
        all_cached = True
        for protocol in ("video", "audio", "av"):
            names = getattr(p, protocol)
            if not names:
                continue
            got, was_cached = _step_adapt(
                p, catalog, checkpoint, storage.join(out_dir, name), protocol, names, progress
            )
            all_cached &= was_cached
            rows += [{**r, "model": name, "corruption": f"{_PREFIX[protocol]}:{r['corruption']}"} for r in got]
        timings[f"adapt {name}"] = time.perf_counter() - t0
        cached += [f"adapt {name}"] if all_cached else []
        log.info("balance: %s adapted (%.1f s%s)", name, timings[f"adapt {name}"], ", cached" if all_cached else "")

    table = _tables(variants, clean, rows)
    if storage.is_local(out_dir):
        storage.local_path(out_dir).mkdir(parents=True, exist_ok=True)
    storage.atomic_write(storage.join(out_dir, "table_balance.md"), table + "\n")
    plot_balance(list(variants), clean, rows, storage.join(out_dir, "balance.png"))
    with storage.staged_path(storage.join(out_dir, "results.parquet")) as tmp:
        pq.write_table(pa.Table.from_pylist(rows), tmp)
    timings["total"] = time.perf_counter() - t_all
    summary = {
        "profile": p.name, "catalog": str(catalog), "variants": variants, "methods": list(BALANCE_METHODS),
        "clean_accuracy": clean, "timings_s": {k: round(v, 1) for k, v in timings.items()}, "cached_steps": cached,
    }  # fmt: skip
    _write_json(summary, storage.join(out_dir, "balance.json"))
    return BalanceResult(Path(out_dir) if storage.is_local(out_dir) else out_dir, table, rows, clean, timings, cached)
