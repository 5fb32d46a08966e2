"""``avtta demo``: the embedded default benchmark (synthetic data -> shards -> source model -> TTA methods)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the embedded benchmark end to end on synthetic audio-visual data (CPU, nothing downloaded)",
        description="Generate a synthetic audio-visual data set (mp4, H.264 + AAC), shard it clean and corrupted, "
        "fine-tune a small CAV-MAE, run all TTA methods on the corrupted test sets and write the table "
        "(table.md) and heatmap (heatmap.png) under --out. Every step is cached: a rerun skips finished steps.",
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smoke run on tiny data (well under 3 minutes)")
    size.add_argument("--full", action="store_true", help="every corruption at severity 5, three seeds")
    p.add_argument(
        "--balance",
        action="store_true",
        help="compare source models trained plain, with --resample sample and with --structure-loss 0.1: clean "
        "accuracies, then Source/READ/BriMPR on the corrupted sets (table_balance.md, balance.png in <out>/balance; "
        "with --quick on the quick profile's data)",
    )
    p.add_argument("--out", default="runs/demo", help="results folder (default runs/demo)")
    p.add_argument("--data", default="data/demo", help="videos and shards folder (default data/demo)")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes for generation and sharding (default: all CPUs; 0: in-process, no Ray)",
    )
    p.add_argument("--no-progress", action="store_true", dest="no_progress", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from avtta.demo import run_demo

    if args.balance:
        return _run_balance(args)

    result = run_demo(
        out=args.out,
        data=args.data,
        quick=args.quick,
        full=args.full,
        workers=args.workers,
        progress=not args.no_progress,
    )
    print(result.table)
    steps = ", ".join(f"{k} {v:.0f} s" for k, v in result.timings.items())
    cached = f" (cached: {', '.join(result.cached)})" if result.cached else ""
    print(f"\n{result.out}: table.md, heatmap.png, results.parquet, demo.json; {steps}{cached}")
    return 0


def _run_balance(args: argparse.Namespace) -> int:
    from avtta.demo_balance import run_balance_demo

    if args.full:
        raise SystemExit("avtta demo: --balance runs on the default profile's data (or --quick's), not --full")
    result = run_balance_demo(
        out=args.out, data=args.data, quick=args.quick, workers=args.workers, progress=not args.no_progress
    )
    print(result.table)
    steps = ", ".join(f"{k} {v:.0f} s" for k, v in result.timings.items())
    cached = f" (cached: {', '.join(result.cached)})" if result.cached else ""
    print(f"\n{result.out}: table_balance.md, balance.png, results.parquet, balance.json; {steps}{cached}")
    return 0
