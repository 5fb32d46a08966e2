"""``avtta report RUN``: re-render the tables and heatmap of an `avtta adapt` run."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="re-render the table and heatmap of an `avtta adapt` run folder")
    p.add_argument("run", help="run folder (holds results.parquet)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from avtta.adapt.report import render_run

    render_run(args.run)
    return 0
