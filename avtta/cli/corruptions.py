"""``avtta corruptions``: list every corruption as ``modality:name`` lines."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "corruptions",
        help="list the corruptions (modality:name)",
        description="List every corruption as modality:name, in the reference scripts' order. Use them in specs "
        "as MODALITY:NAME@SEVERITY (severity 1-5 or a range such as 1-5; NAME may be 'all').",
    )
    p.add_argument("--modality", choices=["video", "audio", "av"], help="list one modality only")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from avtta.corruptions import list_corruptions

    for line in list_corruptions():
        if args.modality is None or line.startswith(f"{args.modality}:"):
            print(line)
    return 0
