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
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIXTURE_CLIP = HERE.parents[1] / "shared" / "fixtures" / "audioset_clip" / "BkjpjAohg-0.mp4"  # beside the clone


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
        shutil.rmtree(root / f"run-{n}", ignore_errors=True)
        argv = ["adapt", "--catalog", str(cat), "--dataset", "bench", "--protocol", "clean", "--methods", methods,
                "--checkpoint", str(ckpt), "--seeds", "1", "--device", "cpu", "--workers", str(workers),
                "--out", str(root / f"run-{n}"), "--no-progress"]  # fmt: skip
        rows.append({"what": f"avtta adapt ({methods})", "samples": n, **measure(argv)})
        print(rows[-1], flush=True)
    return rows


def looped_clip(src: Path, dst: Path, seconds: float) -> None:
    """``src`` repeated (packets copied, timestamps shifted, no re-encoding) up to ``seconds``."""
    import av

    with av.open(str(src)) as inp:  # one pass's length per stream: first dts to the last packet's end
        span: dict[int, tuple[int, int]] = {}
        for p in inp.demux():
            if p.dts is not None:
                lo, hi = span.get(p.stream.index, (p.dts, p.dts))
                span[p.stream.index] = (min(lo, p.dts), max(hi, max(p.dts, p.pts or p.dts) + (p.duration or 0)))
    with av.open(str(dst), "w") as out:
        streams, shift, done = None, 0, False
        while not done:
            with av.open(str(src)) as inp:
                streams = streams or {s.index: out.add_stream_from_template(s) for s in inp.streams if s.index in span}
                for p in inp.demux():
                    if p.dts is None or p.stream.index not in streams:
                        continue
                    lo, hi = span[p.stream.index]
                    p.pts, p.dts = p.pts + shift * (hi - lo), p.dts + shift * (hi - lo)
                    if p.pts * p.time_base >= seconds:
                        done = True
                        continue
                    p.stream = streams[p.stream.index]
                    out.mux(p)
            shift += 1


def shard_rows(
    root: Path,
    lengths: list[float],
    sizes: list[int],
    size: tuple[int, int],
    clip: Path | None,
    list_size: tuple[int, int] | None = None,
    list_seconds: float = 2.0,
) -> list[dict]:
    import av
    from avtta.pipelines.synth import write_test_video

    rows = []
    for seconds in lengths:
        folder = root / f"clip-{seconds:g}s" / "c"
        folder.mkdir(parents=True, exist_ok=True)
        made = folder / "clip.mp4"
        if clip is not None:  # the real clip itself, or looped to the length
            made.unlink(missing_ok=True)
            if seconds > 10.5:
                looped_clip(clip, made, seconds)
            else:
                made.symlink_to(clip.resolve())
        elif not made.exists():
            write_test_video(made, seconds=seconds, fps=25, size=size, audio_rate=44100, channels=2, seed=1)
        shutil.rmtree(root / f"shards-{seconds:g}s", ignore_errors=True)  # a fresh job, not a resumed one
        argv = ["shard", "--videos", str(folder.parent), "--out", str(root / f"shards-{seconds:g}s"), "--dataset",
                "bench", "--workers", "0", "--no-progress"]  # fmt: skip
        with av.open(str(made)) as media:
            length = round(media.duration / 1e6, 2)
        rows.append({"what": "avtta shard, one clip", "seconds_of_video": length, **measure(argv)})
        print(rows[-1], flush=True)
    list_size = list_size or size
    base = root / f"list-clips-{list_size[0]}x{list_size[1]}-{list_seconds:g}s" / "c"
    base.mkdir(parents=True, exist_ok=True)
    clips = []
    for i in range(4):
        p = base / f"clip{i}.mp4"
        if not p.exists():
            write_test_video(p, seconds=list_seconds, fps=25, size=list_size, audio_rate=44100, channels=2, seed=i)
        clips.append(p)
    labels = root / "labels.csv"
    labels.write_text("index,mid,display_name\n0,c,c\n")
    for n in sizes:
        lst = root / f"list-{n}.csv"
        lst.write_text("path,label,video_id\n" + "".join(f"{clips[i % 4]},c,v{i:06d}\n" for i in range(n)))
        shutil.rmtree(root / f"shards-list-{n}", ignore_errors=True)  # a fresh job, not a resumed one
        argv = ["shard", "--videos", str(lst), "--labels", str(labels), "--out", str(root / f"shards-list-{n}"),
                "--dataset", "bench", "--workers", "0", "--shard-size", "64", "--no-progress"]  # fmt: skip
        what = f"avtta shard, list of {list_seconds:g}-s {list_size[0]}x{list_size[1]} clips"
        rows.append({"what": what, "samples": n, **measure(argv)})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--full",
        action="store_true",
        help="the issue's sizes (adapt and shard 2,400 / 24,000; the shard runs' clips 0.5 s, 160x120)",
    )
    ap.add_argument("--adapt-sizes", help="samples of the adapt runs (default 240,2400; --full 2400,24000)")
    ap.add_argument("--shard-sizes", help="list entries of the shard runs (default 32,256; --full 2400,24000)")
    ap.add_argument("--lengths", default="10,60", help="clip lengths (s) of the one-clip shard runs")
    ap.add_argument("--size", default="540x360", help="frame size of the shard job's synthetic clips (AudioSet-like)")
    ap.add_argument("--list-size", help="frame size of the clips of the list runs (default: --size)")
    ap.add_argument(
        "--list-seconds",
        type=float,
        default=2.0,
        help="length of the clips of the list runs (short, small clips make a 24,000-sample job take minutes: the "
        "job's state per sample does not depend on the clip)",
    )
    ap.add_argument(
        "--clip",
        default=str(FIXTURE_CLIP),
        help="the real clip of the one-clip shard runs, looped (packets copied) to each length; where it is absent, "
        "synthetic clips of --size (default: the shared AudioSet fixture clip, 540 x 360, 10 s)",
    )
    ap.add_argument("--methods", default="tent")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers of the adapt runs")
    ap.add_argument("--workdir", help="keep the data here (default: a temporary folder)")
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: adapt, shard")
    args = ap.parse_args()
    adapt_sizes = [int(x) for x in (args.adapt_sizes or ("2400,24000" if args.full else "240,2400")).split(",")]
    shard_sizes = args.shard_sizes if args.shard_sizes is not None else ("2400,24000" if args.full else "32,256")
    if args.full:
        args.list_size, args.list_seconds = args.list_size or "160x120", 0.5
    shard_sizes = [int(x) for x in shard_sizes.split(",") if x]  # "": no list runs
    root = Path(args.workdir or tempfile.mkdtemp(prefix="avtta-mem-"))
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}"
    )
    rows = []
    if "adapt" not in args.skip:
        rows += adapt_rows(root / "adapt", adapt_sizes, args.methods, args.workers)
    if "shard" not in args.skip:
        w, h = map(int, args.size.split("x"))
        clip = Path(args.clip) if args.clip and Path(args.clip).exists() else None
        lw, lh = map(int, (args.list_size or args.size).split("x"))
        lengths = [float(x) for x in args.lengths.split(",") if x]  # "": no one-clip runs
        rows += shard_rows(root / "shard", lengths, shard_sizes, (w, h), clip, (lw, lh), args.list_seconds)
    print(f"\n{'what':44s} {'size':>14s} {'peak RSS MiB':>13s} {'children MiB':>13s} {'s':>7s}")
    for r in rows:
        size = f"{r['samples']} samples" if "samples" in r else f"{r['seconds_of_video']:g} s clip"
        print(
            f"{r['what']:44s} {size:>14s} {r['peak_rss_mib']:13.1f} {r['children_peak_mib']:13.1f} {r['seconds']:7.1f}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
