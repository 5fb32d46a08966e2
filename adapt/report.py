"""Results of an adaptation run: Parquet + CSV rows, a Markdown table (method x condition, mean), a PNG heatmap."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from avtta.shards import storage

RESULTS_FILE = "results.parquet"


def summarize(rows: list[dict[str, Any]], metric: str = "accuracy") -> tuple[list[str], list[str], dict]:
    """Mean and std over seeds of ``metric`` per (method, condition); method and condition orders as first seen."""
    methods, conds = [], []
    values: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in rows:
        cond = r["corruption"] if r["severity"] in (0, None) else f"{r['corruption']}@{r['severity']}"
        if len({x["severity"] for x in rows}) == 1:
            cond = r["corruption"]
        if r["method"] not in methods:
            methods.append(r["method"])
        if cond not in conds:
            conds.append(cond)
        values[(r["method"], cond)].append(float(r[metric]))
    stats = {}
    for k, v in values.items():
        mean = sum(v) / len(v)
        std = math.sqrt(sum((x - mean) ** 2 for x in v) / len(v))  # population std, as the references
        stats[k] = (mean, std, len(v))
    return methods, conds, stats


def markdown_table(rows: list[dict[str, Any]], metric: str = "accuracy") -> str:
    methods, conds, stats = summarize(rows, metric)
    header = ["method", *conds, "mean"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for m in methods:
        cells = []
        vals = []
        for c in conds:
            if (m, c) in stats:
                mean, std, n = stats[(m, c)]
                vals.append(mean)
                cells.append(f"{mean:.1f}" + (f" ± {std:.1f}" if n > 1 else ""))
            else:
                cells.append("")
        lines.append("| " + " | ".join([m, *cells, f"{sum(vals) / len(vals):.1f}" if vals else ""]) + " |")
    return "\n".join(lines)


def heatmap(rows: list[dict[str, Any]], path: str | Path, metric: str = "accuracy", title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    methods, conds, stats = summarize(rows, metric)
    data = np.full((len(methods), len(conds) + 1), np.nan)
    for i, m in enumerate(methods):
        for j, c in enumerate(conds):
            if (m, c) in stats:
                data[i, j] = stats[(m, c)][0]
        data[i, -1] = np.nanmean(data[i, :-1])
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * (len(conds) + 1), 1.0 + 0.5 * len(methods)))
    im = ax.imshow(data, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(conds) + 1), [*conds, "mean"], rotation=45, ha="right")
    ax.set_yticks(range(len(methods)), methods)
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            if not np.isnan(data[i, j]):
                ax.text(
                    j,
                    i,
                    f"{data[i, j]:.1f}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if data[i, j] < np.nanmean(data) else "black",
                )
    fig.colorbar(im, ax=ax, label=f"{metric} (%)")
    ax.set_title(title or f"{metric} (%) per method and condition")
    with storage.staged_path(path) as tmp:  # a local temporary renamed, or uploaded whole (s3://)
        fig.savefig(tmp, format=Path(str(path)).suffix.lstrip(".") or "png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def write_report(rows: list[dict[str, Any]], out: str | Path, quiet: bool = False) -> str:
    """Write results.parquet / results.csv / table.md / heatmap.png under ``out`` (a folder or a URL); print and
    return the table."""
    out = str(out)
    table = pa.Table.from_pylist(rows)
    with storage.staged_path(storage.join(out, RESULTS_FILE)) as tmp:
        pq.write_table(table, tmp)
    with storage.staged_path(storage.join(out, "results.csv")) as tmp:
        pacsv.write_csv(table, tmp)
    text = "Accuracy (%), mean over seeds (± std)\n\n" + markdown_table(rows)
    if rows and "accuracy_batch_avg" in rows[0]:
        text += "\n\nReference metric (per-batch-averaged accuracy, spec item 1)\n\n" + markdown_table(
            rows, "accuracy_batch_avg"
        )
    storage.atomic_write(storage.join(out, "table.md"), text + "\n")
    heatmap(rows, storage.join(out, "heatmap.png"))
    if not quiet:
        print(text)
        print(f"\nwritten: {storage.join(out, RESULTS_FILE)}, results.csv, table.md, heatmap.png")
    return text


def render_run(run_dir: str | Path) -> str:
    """Re-render the tables and heatmap of a finished run (``avtta report RUN``)."""
    path = storage.join(str(run_dir), RESULTS_FILE)
    if not storage.exists(path):
        raise FileNotFoundError(f"{path} does not exist: is {run_dir} an `avtta adapt` run folder?")
    rows = pq.read_table(pa.BufferReader(storage.read_bytes(path))).to_pylist()
    return write_report(rows, run_dir)


def load_config(run_dir: str | Path) -> dict[str, Any]:
    return json.loads(storage.read_text(storage.join(str(run_dir), "config.json")))
