"""Reports over the per-sample table ``samples.parquet``: modality valuation per (method, set) and ``valuation.png``.

The table has one row per scored sample (``SAMPLE_SCHEMA``): key, set, method, seed, label, prediction, correct,
phi_a, phi_v and ``iterations`` (``audio_assist``'s updates per sample; null for the other methods). "Audio
carries the prediction" when ``phi_a > phi_v``, video when ``phi_v > phi_a``; ties (both or neither modality
decide it alone) are counted apart.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from avtta.shards import storage

__all__ = [
    "batch_rows",
    "CLEAN_SET",
    "SAMPLE_SCHEMA",
    "SUMMARY_SCHEMA",
    "SAMPLES_FILE",
    "VALUATION_PNG",
    "iterations_histogram",
    "plot_valuation",
    "samples_table",
    "summarize_valuation",
    "valuation_markdown",
    "write_valuation_report",
]

SAMPLES_FILE = "samples.parquet"
VALUATION_PNG = "valuation.png"
CLEAN_SET = "clean"  # the reference row of the figure

SAMPLE_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("set", pa.string()),
        ("method", pa.string()),
        ("seed", pa.int64()),
        ("label", pa.int64()),
        ("prediction", pa.int64()),
        ("correct", pa.bool_()),
        ("phi_a", pa.float32()),
        ("phi_v", pa.float32()),
        ("iterations", pa.int32()),  # null where the method has no per-sample cycle
    ]
)
SUMMARY_SCHEMA = pa.schema(
    [("method", pa.string()), ("set", pa.string()), ("samples", pa.int64())]
    + [
        (name, pa.float64())
        for name in (
            "accuracy", "mean_phi_a", "mean_phi_v", "balance", "share_audio", "share_video", "share_tie",
            "mean_iterations",
        )
    ]
)  # fmt: skip
_REQUIRED = ("set", "method", "correct", "phi_a", "phi_v")


def samples_table(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Per-sample rows (dicts with the ``SAMPLE_SCHEMA`` columns; ``iterations`` may be missing) -> a typed table.

    Raises:
        ValueError: a row lacks a column or has one the schema does not know.
    """
    names = SAMPLE_SCHEMA.names
    columns: dict[str, list[Any]] = {name: [] for name in names}
    for i, row in enumerate(rows):
        unknown = sorted(set(row) - set(names))
        missing = [name for name in names if name not in row and name != "iterations"]
        if unknown or missing:
            raise ValueError(
                f"sample row {i}: unknown column(s) {unknown}, missing {missing} (adapt/valuation_report.py)"
            )
        for name in names:
            columns[name].append(row.get(name))
    return pa.Table.from_pydict(columns, schema=SAMPLE_SCHEMA)


def batch_rows(
    keys: Sequence[str],
    set_name: str,
    method: str,
    seed: int,
    labels: Sequence[int] | Any,
    logits: Any,
    values: Any = None,
    iterations: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """The ``samples.parquet`` rows of one scored batch.

    Args:
        keys: sample keys (``batch["key"]``).
        set_name: the condition name (e.g. "clean", "fog").
        method: method name.
        seed: run seed.
        labels: ``[B]`` true labels (tensor or list).
        logits: ``[B, C]`` scored logits (``method.step``'s return value).
        values: ``adapt.valuation.ModalityValues`` of the batch, or None (phi columns null).
        iterations: per-sample iterations (``AudioAssist.last_iterations``), or None.
    """
    labels = [int(y) for y in (labels.tolist() if hasattr(labels, "tolist") else labels)]
    predictions = [int(p) for p in logits.argmax(dim=1).tolist()]
    if not (len(keys) == len(labels) == len(predictions)):
        raise ValueError(
            f"batch_rows: {len(keys)} keys, {len(labels)} labels, {len(predictions)} predictions "
            "(adapt/valuation_report.py)"
        )
    phi_a = values.phi_a.tolist() if values is not None else [None] * len(keys)
    phi_v = values.phi_v.tolist() if values is not None else [None] * len(keys)
    iters = list(iterations) if iterations is not None else [None] * len(keys)
    if len(phi_a) != len(keys) or len(iters) != len(keys):
        raise ValueError(
            f"batch_rows: valuation or iterations do not match {len(keys)} keys (adapt/valuation_report.py)"
        )
    return [
        {
            "key": str(k),
            "set": set_name,
            "method": method,
            "seed": int(seed),
            "label": y,
            "prediction": p,
            "correct": y == p,
            "phi_a": a,
            "phi_v": v,
            "iterations": n,
        }
        for k, y, p, a, v, n in zip(keys, labels, predictions, phi_a, phi_v, iters, strict=True)
    ]


def _as_table(samples: pa.Table | str | Path) -> pa.Table:
    table = samples if isinstance(samples, pa.Table) else pq.read_table(samples)
    missing = [name for name in _REQUIRED if name not in table.column_names]
    if missing:
        raise ValueError(
            f"samples table lacks column(s) {missing}; has {table.column_names} (adapt/valuation_report.py)"
        )
    return table


def _order(values: Sequence[str], first: str) -> list[str]:
    seen = list(dict.fromkeys(values))
    return ([first] if first in seen else []) + [v for v in seen if v != first]


def summarize_valuation(samples: pa.Table | str | Path) -> pa.Table:
    """Per (method, set): samples, accuracy (%), mean phi_a / phi_v, balance = mean(phi_a - phi_v), the shares (%)
    of samples carried by audio, by video and ties, and the mean iterations (null without a cycle).

    Rows: methods in order of appearance ("source" first), sets in order of appearance ("clean" first).
    """
    table = _as_table(samples)
    phi_a = pc.cast(table["phi_a"], pa.float64())
    phi_v = pc.cast(table["phi_v"], pa.float64())
    iterations = table["iterations"] if "iterations" in table.column_names else pa.nulls(len(table), pa.int32())
    work = pa.table(
        {
            "method": table["method"],
            "set": table["set"],
            "correct": pc.cast(table["correct"], pa.float64()),
            "phi_a": phi_a,
            "phi_v": phi_v,
            "balance": pc.subtract(phi_a, phi_v),
            "audio": pc.cast(pc.greater(phi_a, phi_v), pa.float64()),
            "video": pc.cast(pc.greater(phi_v, phi_a), pa.float64()),
            "tie": pc.cast(pc.equal(phi_a, phi_v), pa.float64()),
            "iterations": pc.cast(iterations, pa.float64()),
        }
    )
    grouped = work.group_by(["method", "set"], use_threads=False).aggregate(
        [
            ("correct", "count"),
            ("correct", "mean"),
            ("phi_a", "mean"),
            ("phi_v", "mean"),
            ("balance", "mean"),
            ("audio", "mean"),
            ("video", "mean"),
            ("tie", "mean"),
            ("iterations", "mean"),
        ]
    )
    rows = {(r["method"], r["set"]): r for r in grouped.to_pylist()}
    methods = _order(table["method"].to_pylist(), "source")
    sets = _order(table["set"].to_pylist(), CLEAN_SET)
    out = []
    for method in methods:
        for name in sets:
            r = rows.get((method, name))
            if r is None:
                continue
            out.append(
                {
                    "method": method,
                    "set": name,
                    "samples": r["correct_count"],
                    "accuracy": 100.0 * r["correct_mean"],
                    "mean_phi_a": r["phi_a_mean"],
                    "mean_phi_v": r["phi_v_mean"],
                    "balance": r["balance_mean"],
                    "share_audio": 100.0 * r["audio_mean"],
                    "share_video": 100.0 * r["video_mean"],
                    "share_tie": 100.0 * r["tie_mean"],
                    "mean_iterations": r["iterations_mean"],
                }
            )
    return pa.Table.from_pylist(out, schema=SUMMARY_SCHEMA)


def iterations_histogram(samples: pa.Table | str | Path) -> pa.Table:
    """Counts of samples per (method, set, iterations), for the rows that have iterations."""
    table = _as_table(samples)
    if "iterations" not in table.column_names:
        return pa.table({"method": [], "set": [], "iterations": [], "count": []})
    table = table.filter(pc.is_valid(table["iterations"]))
    counts = table.group_by(["method", "set", "iterations"], use_threads=False).aggregate([("key", "count")])
    counts = counts.rename_columns(["method", "set", "iterations", "count"])
    return counts.sort_by([("method", "ascending"), ("set", "ascending"), ("iterations", "ascending")])


def valuation_markdown(summary: pa.Table) -> str:
    """The summary as a markdown table."""
    head = "| method | set | n | acc % | mean phi_a | mean phi_v | audio carries % | video carries % | ties % | iters |"
    lines = [head, "|" + "---|" * 10]
    for r in summary.to_pylist():
        iters = "" if r["mean_iterations"] is None else f"{r['mean_iterations']:.2f}"
        lines.append(
            f"| {r['method']} | {r['set']} | {r['samples']} | {r['accuracy']:.1f} | {r['mean_phi_a']:.3f} | "
            f"{r['mean_phi_v']:.3f} | {r['share_audio']:.1f} | {r['share_video']:.1f} | {r['share_tie']:.1f} | "
            f"{iters} |"
        )
    return "\n".join(lines)


def plot_valuation(summary: pa.Table, path: str | Path, title: str = "") -> Path:
    """Write ``valuation.png``: the audio/video balance mean(phi_a - phi_v) per set (rows, clean on top) and method
    (columns), and beside it each method's shift of that balance against ``source`` on the same set.

    Red = audio carries the predictions, blue = video; the colour scale is symmetric about 0.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = summary.to_pylist()
    if not rows:
        raise ValueError("plot_valuation: the summary is empty (adapt/valuation_report.py)")
    methods = list(dict.fromkeys(r["method"] for r in rows))
    sets = list(dict.fromkeys(r["set"] for r in rows))
    sets = _order(sets, CLEAN_SET)
    balance = np.full((len(sets), len(methods)), np.nan)
    for r in rows:
        balance[sets.index(r["set"]), methods.index(r["method"])] = r["balance"]
    panels = [("balance  mean(phi_a - phi_v)", balance, methods)]
    if "source" in methods and len(methods) > 1:
        others = [m for m in methods if m != "source"]
        base = balance[:, methods.index("source")][:, None]
        shift = balance[:, [methods.index(m) for m in others]] - base
        panels.append(("shift vs source (same set)", shift, others))

    width = sum(0.9 * len(cols) + 1.0 for _, _, cols in panels) + 0.3 * max(len(name) for name in sets) / 2
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(max(6.0, width), 1.8 + 0.42 * len(sets)),
        squeeze=False,
        layout="constrained",
        gridspec_kw={"width_ratios": [len(cols) for _, _, cols in panels]},
    )
    for k, (ax, (label, data, cols)) in enumerate(zip(axes[0], panels, strict=True)):
        finite = data[np.isfinite(data)]
        limit = max(0.05, float(np.abs(finite).max()) if finite.size else 0.05)
        im = ax.imshow(data, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
        ax.set_xticks(range(len(cols)), cols, rotation=40, ha="right")
        ax.set_yticks(range(len(sets)), sets if k == 0 else [""] * len(sets))  # one set of row labels, at the left
        ax.set_title(label, fontsize=10)
        if sets[0] == CLEAN_SET and len(sets) > 1:
            ax.axhline(0.5, color="black", linewidth=1.5)  # the clean reference row above the line
        for i in range(data.shape[0]):
            for j in range(data.shape[1]):
                if np.isfinite(data[i, j]):
                    strong = abs(data[i, j]) > 0.6 * limit
                    ax.text(j, i, f"{data[i, j]:+.2f}", ha="center", va="center", fontsize=7,
                            color="white" if strong else "black")  # fmt: skip
                else:
                    ax.text(j, i, "n/a", ha="center", va="center", fontsize=7, color="0.5")
        bar = fig.colorbar(im, ax=ax, fraction=0.05, pad=0.02)
        bar.set_label("video carries (-) | audio (+)", fontsize=8)
    fig.suptitle(title or "Which modality carries the predictions (sample-level Shapley values)", fontsize=11)
    with storage.staged_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def write_valuation_report(samples: pa.Table | str | Path, out: str | Path) -> dict[str, Path | str]:
    """Write ``valuation.parquet`` (the summary), ``valuation.md``, ``iterations.parquet`` (when any) and
    ``valuation.png`` under ``out`` (a folder or a URL); returns their paths (URLs) by name."""
    out = str(out)
    summary = summarize_valuation(samples)
    paths = {"summary": storage.join(out, "valuation.parquet"), "markdown": storage.join(out, "valuation.md")}
    with storage.staged_path(paths["summary"]) as tmp:
        pq.write_table(summary, tmp)
    storage.atomic_write(paths["markdown"], valuation_markdown(summary) + "\n")
    hist = iterations_histogram(samples)
    if len(hist):
        paths["iterations"] = storage.join(out, "iterations.parquet")
        with storage.staged_path(paths["iterations"]) as tmp:
            pq.write_table(hist, tmp)
    paths["figure"] = plot_valuation(summary, storage.join(out, VALUATION_PNG))
    return {name: Path(p) if storage.is_local(p) else p for name, p in paths.items()}
