"""Peak memory of ``avtta adapt`` and of the shard job: flat in the number of samples and in the clip length?

* ``avtta adapt`` on a synthetic catalog of N samples (a few real demo-like clips written once, every sample an
  alias of one of them: ``synth_catalog.alias_set``), tiny model, for two sizes N (default 2,400 and 24,000);
* ``avtta shard`` (in-process, ``--workers 0``) on one clip of 10 s and one of 60 s, and on a list of N entries
  for two sizes (each entry one of a few real clips under its own id).

Each measurement runs the real command line (``avtta.cli.main``) in a fresh subprocess, which reports its own peak
RSS (``VmHWM``) and the largest of its children's (DataLoader workers, ``getrusage``); the parent
prints a table and, with ``--json``, writes the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _vm_hwm_mib() -> float:
    """Peak RSS of this process image (``VmHWM``): unlike ``getrusage(RUSAGE_SELF).ru_maxrss``, it starts afresh at
    exec, so it does not include the RSS of the parent that forked us (Linux carries ru_maxrss across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # no /proc: may include the parent's


def child(argv: list[str]) -> None:
    """Run one ``avtta`` command line in this process; print peak RSS (MiB) of it and of its children as JSON."""
    from avtta.cli import main

    t0 = time.perf_counter()
    rc = main(argv)
    seconds = time.perf_counter() - t0
    own = _vm_hwm_mib()
    # the largest child's ru_maxrss; Linux keeps a process's peak across exec, so a forked worker's figure includes
    # what this process held when it forked (an upper bound for the worker's own use)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
    print(
        "MEMORY "
        + json.dumps(
            {"rc": rc, "peak_rss_mib": round(own, 1), "children_peak_mib": round(kids, 1), "seconds": round(seconds, 1)}
        ),
        flush=True,
    )


def measure(argv: list[str]) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", *argv], capture_output=True, text=True, env={**os.environ}, check=False
    )
    for line in out.stdout.splitlines():
        if line.startswith("MEMORY "):
            return json.loads(line[7:])
    raise RuntimeError(f"{' '.join(argv)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")


def adapt_rows(root: Path, sizes: list[int], methods: str, workers: int) -> list[dict]:
    sys.path.insert(0, str(HERE))
    import synth_catalog

    real = root / "real"
    if not (real / "catalog.parquet").exists():
        synth_catalog.write_demo_set(real, "test", 64, shard_size=32, workers=1)
    ckpt = synth_catalog.tiny_checkpoint(root / "tiny.safetensors", 10)
    rows = []
    for n in sizes:
        cat = root / f"alias-{n}"
        if not (cat / "catalog.parquet").exists():
            synth_catalog.alias_set(real, cat, "test", n)
            synth_catalog.alias_set(real, cat, "test", 64, dst_split="train")
        argv = ["adapt", "--catalog", str(cat), "--dataset", "bench", "--protocol", "clean", "--methods", methods,
                "--checkpoint", str(ckpt), "--seeds", "1", "--device", "cpu", "--workers", str(workers),
                "--out", str(root / f"run-{n}"), "--no-progress"]  # fmt: skip
        rows.append({"what": f"avtta adapt ({methods})", "samples": n, **measure(argv)})
        print(rows[-1], flush=True)
    return rows


def shard_rows(root: Path, lengths: list[float], sizes: list[int], size: tuple[int, int]) -> list[dict]:
    from avtta.pipelines.synth import write_test_video

    rows = []
    for seconds in lengths:
        folder = root / f"clip-{seconds:g}s" / "c"
        folder.mkdir(parents=True, exist_ok=True)
        clip = folder / "clip.mp4"
        if not clip.exists():
            write_test_video(clip, seconds=seconds, fps=25, size=size, audio_rate=44100, channels=2, seed=1)
        argv = ["shard", "--videos", str(folder.parent), "--out", str(root / f"shards-{seconds:g}s"), "--dataset",
                "bench", "--workers", "0", "--no-progress"]  # fmt: skip
        rows.append({"what": "avtta shard, one clip", "seconds_of_video": seconds, **measure(argv)})
        print(rows[-1], flush=True)
    base = root / "list-clips" / "c"
    base.mkdir(parents=True, exist_ok=True)
    clips = []
    for i in range(4):
        p = base / f"clip{i}.mp4"
        if not p.exists():
            write_test_video(p, seconds=2.0, fps=25, size=size, audio_rate=44100, channels=2, seed=i)
        clips.append(p)
    labels = root / "labels.csv"
    labels.write_text("index,mid,display_name\n0,c,c\n")
    for n in sizes:
        lst = root / f"list-{n}.csv"
        lst.write_text("path,label,video_id\n" + "".join(f"{clips[i % 4]},c,v{i:06d}\n" for i in range(n)))
        argv = ["shard", "--videos", str(lst), "--labels", str(labels), "--out", str(root / f"shards-list-{n}"),
                "--dataset", "bench", "--workers", "0", "--shard-size", "64", "--no-progress"]  # fmt: skip
        rows.append({"what": "avtta shard, list of 2-s clips", "samples": n, **measure(argv)})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--full", action="store_true", help="the issue's sizes (adapt 2,400 / 24,000; shard 240 / 2,400)")
    ap.add_argument("--adapt-sizes", help="samples of the adapt runs (default 240,2400; --full 2400,24000)")
    ap.add_argument("--shard-sizes", help="list entries of the shard runs (default 32,256; --full 240,2400)")
    ap.add_argument("--lengths", default="10,60", help="clip lengths (s) of the one-clip shard runs")
    ap.add_argument("--size", default="540x360", help="frame size of the shard job's clips (AudioSet-like)")
    ap.add_argument("--methods", default="tent")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers of the adapt runs")
    ap.add_argument("--workdir", help="keep the data here (default: a temporary folder)")
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: adapt, shard")
    args = ap.parse_args()
    adapt_sizes = [int(x) for x in (args.adapt_sizes or ("2400,24000" if args.full else "240,2400")).split(",")]
    shard_sizes = [int(x) for x in (args.shard_sizes or ("240,2400" if args.full else "32,256")).split(",")]
    root = Path(args.workdir or tempfile.mkdtemp(prefix="avtta-mem-"))
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}"
    )
    rows = []
    if "adapt" not in args.skip:
        rows += adapt_rows(root / "adapt", adapt_sizes, args.methods, args.workers)
    if "shard" not in args.skip:
        w, h = map(int, args.size.split("x"))
        rows += shard_rows(root / "shard", [float(x) for x in args.lengths.split(",")], shard_sizes, (w, h))
    print(f"\n{'what':36s} {'size':>12s} {'peak RSS MiB':>13s} {'children MiB':>13s} {'s':>7s}")
    for r in rows:
        size = f"{r['samples']} samples" if "samples" in r else f"{r['seconds_of_video']:g} s clip"
        print(
            f"{r['what']:36s} {size:>12s} {r['peak_rss_mib']:13.1f} {r['children_peak_mib']:13.1f} {r['seconds']:7.1f}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
