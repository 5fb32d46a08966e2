"""Run every benchmark (``make bench``): quick sizes by default, the README's figures with ``--full``.

Quick mode checks that each script runs end to end and gives rough figures in a few minutes; ``--full`` runs the sizes
the tables in benchmarks/README.md were measured at. The official-code comparison of bench_methods.py needs ``--official
REPO=DIR``, once per official repository (checkouts outside this repository; see benchmarks/README.md); the reference
chain of bench_refchain.py needs ``--official brimpr=DIR --official cavmae=DIR``. The GPU check
runs for real when CUDA is present, else as its CPU dry run. Every script runs even when an earlier one fails; the exit
status says whether any failed. Run inside a loopback-only network namespace (bench_pipeline.py and bench_scaling.py
start Ray, bench_s3.py a SeaweedFS server on loopback; ``make bench`` does it).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


# --official keys that are bench_refchain.py's reference chain (CAV-MAE's extraction scripts, BriMPR's corruption
# scripts) rather than bench_methods.py's official methods; BriMPR serves both.
REFCHAIN_REPOS = ("brimpr", "cavmae")


def plan(full: bool, official: list[str], cuda: bool) -> list[tuple[str, list[str]]]:
    methods = [arg for checkout in official if not checkout.startswith("cavmae=") for arg in ("--official", checkout)]
    chain = {k: v for k, _, v in (c.partition("=") for c in official) if k in REFCHAIN_REPOS}
    refchain = [arg for k in REFCHAIN_REPOS if k in chain for arg in (f"--{k}", chain[k])]
    if len(chain) < len(REFCHAIN_REPOS):
        refchain = []  # the reference chain needs both checkouts; without them avtta's side runs alone
    if full:
        return [
            ("bench_pipeline.py", ["--clips", "240"]),
            ("bench_scaling.py", ["--copies", "48", "--repeats", "2", "--cluster"]),
            ("bench_refchain.py", ["--clips", "24", "--repeats", "2", *refchain]),
            ("bench_corruptions.py", []),
            ("bench_methods.py", methods),
            ("bench_memory.py", ["--full"]),
            ("bench_onthefly.py", []),
            ("bench_s3.py", []),
            ("gpu_check.py", [] if cuda else ["--cpu-dry-run"]),
        ]
    return [
        ("bench_pipeline.py", ["--clips", "16", "--reader-clips", "48", "--reader-samples", "480", "--passes", "1"]),
        ("bench_scaling.py", ["--copies", "8", "--small", "4", "--shard-size", "2", "--repeats", "1"]),
        ("bench_refchain.py", ["--clips", "2", "--repeats", "1", *refchain]),
        ("bench_corruptions.py", ["--repeats", "1"]),
        ("bench_methods.py", methods),
        ("bench_memory.py", ["--adapt-sizes", "240,2400", "--shard-sizes", "16,64", "--lengths", "10,60"]),
        ("bench_onthefly.py", ["--clips", "4", "--samples", "40", "--passes", "1", "--seconds", "2"]),
        ("bench_s3.py", ["--clips", "64", "--shard-size", "16", "--passes", "1"]),
        ("gpu_check.py", [] if cuda else ["--cpu-dry-run"]),
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--full", action="store_true", help="the sizes of the README's tables (slow: an hour or more)")
    ap.add_argument(
        "--official", action="append", default=[], metavar="REPO=DIR",
        help="an official checkout for bench_methods.py's official side, or brimpr= / cavmae= for bench_refchain.py's "
        "reference chain (repeatable; see the scripts' --help)",
    )  # fmt: skip
    ap.add_argument("--only", help="comma list of scripts to run (e.g. bench_memory.py,gpu_check.py)")
    args = ap.parse_args()
    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    only = set(args.only.split(",")) if args.only else None
    failed = []
    for script, extra in plan(args.full, args.official, cuda):
        if only and script not in only:
            continue
        print(f"\n===== {script} {' '.join(extra)}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.run([sys.executable, str(HERE / script), *extra], check=False).returncode
        print(f"===== {script}: exit {rc} after {time.perf_counter() - t0:.0f} s", flush=True)
        if rc:
            failed.append(script)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
