"""``avtta catalog OUT``: print the shard sets of an output root."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("catalog", help="list the shard sets of an output root")
    p.add_argument("out", help="output root of `avtta shard` / `avtta import`")
    p.add_argument("--failures", action="store_true", help="also list every failure row with its reason")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from avtta.manifests import Catalog, format_table

    cat = Catalog(args.out)
    print(format_table(cat.table_rows()))
    if args.failures:
        for info in cat.sets:
            for row in cat.failures(info).to_pylist():
                print(f"{info.dataset}/{info.split}/{info.spec}\t{row['path']}\t{row['reason']}")
    return 0
