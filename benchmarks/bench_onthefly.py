"""Benchmark corrupting while reading (``open_dataset(..., source="clean")``) against reading written sets.

1. Reading for evaluation (eval frame, shuffled, batch 32), samples/s at 0 and 2 DataLoader workers, best of
   ``--passes``: clean, a cheap video corruption (brightness), an audio corruption (gaussian_noise: the fbank is
   computed while reading) and the slowest video kernel here (glass_blur), each read from the set
   ``avtta shard --corrupt`` wrote and corrupted on the fly from the clean set; and the reference layout's loader
   (``bench_pipeline.ReferenceLoader``: JPEG frame folders + wav files, fbank per sample) on the clean data.
2. Disk: the bytes per sample each kind of set takes (measured on the sets written here) and what a Kinetics50-C
   sized sweep (15 video + 6 audio corruptions at severity 5, 2,466 clips) takes written and on the fly.

In-process shard job (no Ray): ``.venv/bin/python benchmarks/bench_onthefly.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from avtta.manifests import Catalog, open_dataset
from avtta.pipelines.shard_job import ShardJobConfig, run_shard_job
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import ReferenceLoader, make_clips, make_reader_list, make_reference_layout  # noqa: E402

READS = ("clean", "video:brightness@5", "audio:gaussian_noise@5", "video:glass_blur@5")
K50C = {"clips": 2466, "video": 15, "audio": 6}


def samples_per_s(make, n_expected: int) -> float:
    loader = make()
    t0 = time.perf_counter()
    n = sum(len(b["key"]) if isinstance(b, dict) else len(b[0]) for b in loader)
    dt = time.perf_counter() - t0
    assert n == n_expected, (n, n_expected)
    return n / dt


def disk(cat: Catalog) -> dict[str, float]:
    """Bytes per sample of the clean set (with and without the waveform) and of the written corrupted sets."""
    per = {}
    for spec in READS:
        modality, _, rest = spec.partition(":")
        name, _, sev = rest.partition("@")
        info = cat.get("bench", "test", modality, name or "clean", int(sev or 0))
        members = cat.members(info).to_pydict()
        total = sum(members["size"])
        flac = sum(s for f, s in zip(members["field"], members["size"], strict=True) if f == "wav.flac")
        # tar overhead (headers, padding) counted in proportion: the set's bytes over its member bytes
        scale = info.bytes / total
        per[spec] = info.bytes / info.samples
        per[spec + " without waveform"] = (total - flac) * scale / info.samples
        per[spec + " waveform"] = flac * scale / info.samples
    return per


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips", type=int, default=24, help="distinct clips")
    ap.add_argument("--samples", type=int, default=240, help="samples per set (each clip listed several times)")
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--workdir", help="keep data here (default: a temporary folder)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    root = Path(args.workdir or tempfile.mkdtemp(prefix="avtta-otf-"))
    videos = make_clips(root, args.clips, args.seconds, (320, 240))
    copies = max(1, args.samples // args.clips)
    n = args.clips * copies
    out = root / f"sets-{n}"
    if not (out / "catalog.parquet").exists():
        lst, labels = make_reader_list(videos, root / f"list-{n}", copies)
        t0 = time.perf_counter()
        run_shard_job(
            ShardJobConfig(
                videos=str(lst), labels=str(labels), out=str(out), dataset="bench", split="test", frames=10,
                shard_size=64, waveform=True, corrupt=("none", *READS[1:]), workers=0, progress=False,
            )
        )  # fmt: skip
        print(f"shard job ({n} samples x {len(READS)} sets, in-process): {time.perf_counter() - t0:.0f} s")
    ref_json = root / f"reference-{n}" / "test.json"
    if not ref_json.exists():
        ref_json = make_reference_layout(videos, root / f"reference-{n}", copies)
    cat = Catalog(out)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}")
    print(f"reading {n} samples ({args.clips} clips x {copies}), batch {args.batch_size}, best of {args.passes}:\n")
    print("| selection | workers | written set | on the fly | on the fly / written | reference loader |")
    print("|---|---|---|---|---|---|")
    results = {}
    for spec in READS:
        for workers in (0, 2):
            kw = dict(batch_size=args.batch_size, num_workers=workers, pin_memory=False)
            sides = {
                "written": lambda s=spec, kw=kw: open_dataset(cat, "bench", "test", s, **kw),
                "on the fly": lambda s=spec, kw=kw: open_dataset(cat, "bench", "test", s, source="clean", **kw),
            }
            if spec == "clean":
                sides["reference"] = lambda w=workers: DataLoader(
                    ReferenceLoader(str(ref_json)), batch_size=args.batch_size, shuffle=True, num_workers=w
                )
            best = dict.fromkeys(sides, 0.0)
            for _ in range(args.passes):
                for name, make in sides.items():
                    best[name] = max(best[name], samples_per_s(make, n))
            results[f"{spec} w{workers}"] = best
            ref = f"{best['reference']:.0f}" if "reference" in best else "-"
            print(
                f"| {spec} | {workers} | {best['written']:.0f} | {best['on the fly']:.0f} | "
                f"{best['on the fly'] / best['written']:.2f} | {ref} |"
            )
    per = disk(cat)
    video = (per["video:brightness@5 without waveform"] + per["video:glass_blur@5 without waveform"]) / 2
    audio = per["audio:gaussian_noise@5 without waveform"]
    clean = per["clean without waveform"]
    wave = per["clean waveform"]
    c = K50C["clips"]
    written = c * (clean + K50C["video"] * video + K50C["audio"] * audio)
    video_wave = (per["video:brightness@5"] + per["video:glass_blur@5"]) / 2
    written_wave = c * (per["clean"] + K50C["video"] * video_wave + K50C["audio"] * per["audio:gaussian_noise@5"])
    otf = c * (clean + wave)
    print("\nbytes per sample (measured here):")
    for k, v in per.items():
        print(f"  {k:45s} {v / 1e3:8.1f} kB")
    print(
        f"\nK50-C-sized sweep ({K50C['video']} video + {K50C['audio']} audio sets at severity 5, {c} clips, plus "
        f"the clean set):\n  written, no waveform: {written / 1e9:.2f} GB; written, every set with --waveform: "
        f"{written_wave / 1e9:.2f} GB; on the fly (the clean set with --waveform only): {otf / 1e9:.3f} GB "
        f"({written / otf:.1f}x less than written)"
    )
    (root / "bench_onthefly.json").write_text(json.dumps({"reads": results, "bytes_per_sample": per}, indent=2))


if __name__ == "__main__":
    main()
