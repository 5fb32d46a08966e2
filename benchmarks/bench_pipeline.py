"""Benchmark the shard pipeline and the shard reader against the reference way, side by side in one run.

1. raw mp4 -> shards (decode with PyAV, 10 frames, fbank, JPEG, tar), clips/s with 1 and 2 Ray workers (embedded
   local Ray) and in-process.
2. Reading for evaluation: our reader (``avtta.manifests.open_dataset``, both access modes) vs the reference layout's
   loader (JPEG frame folders + 16 kHz wav files listed in a JSON file, decoded per sample as the CAV-MAE / READ /
   BriMPR ``AudiosetDataset`` does: PIL open + Resize(224, bicubic) + CenterCrop + ToTensor + Normalize, wav load + DC
   removal + Kaldi fbank + pad + normalise), both through a torch DataLoader with the same workers and batch size.

Run inside a loopback-only network namespace (Ray): ``unshare -n sh -c 'ip link set lo up && .venv/bin/python
benchmarks/bench_pipeline.py'`` (``make bench`` does it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import soundfile as sf
import torch
from avtta.manifests import open_dataset
from avtta.pipelines.decode import decode_clip
from avtta.pipelines.shard_job import ShardJobConfig, run_shard_job
from avtta.pipelines.synth import write_test_video
from PIL import Image
from torch.utils.data import DataLoader, Dataset


class ReferenceLoader(Dataset):
    """The reference data loader's per-sample work (spec preprocessing.md 2.1-2.2), reading the reference layout."""

    def __init__(self, json_path: str, frame: int = 5):
        from torchvision import transforms as T

        self.data = json.loads(Path(json_path).read_text())["data"]
        self.frame = frame
        self.preprocess = T.Compose(
            [
                T.Resize(224, interpolation=T.InterpolationMode.BICUBIC),
                T.CenterCrop(224),
                T.ToTensor(),
                T.Normalize(mean=[0.4850, 0.4560, 0.4060], std=[0.2290, 0.2240, 0.2250]),
            ]
        )

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        import torchaudio

        item = self.data[i]
        wav, sr = sf.read(item["wav"], dtype="float32", always_2d=True)  # torchaudio.load needs torchcodec here
        waveform = torch.from_numpy(wav.T.copy())
        waveform = waveform - waveform.mean()
        fbank = torchaudio.compliance.kaldi.fbank(
            waveform,
            htk_compat=True,
            sample_frequency=sr,
            use_energy=False,
            window_type="hanning",
            num_mel_bins=128,
            dither=0.0,
            frame_shift=10,
        )
        p = 1024 - fbank.shape[0]
        fbank = torch.nn.functional.pad(fbank, (0, 0, 0, p)) if p > 0 else fbank[:1024]
        fbank = (fbank + 5.081) / 4.4849
        image = self.preprocess(Image.open(f"{item['video_path']}/frame_{self.frame}/{item['video_id']}.jpg"))
        return fbank, image, 0


def make_clips(root: Path, n: int, seconds: float, size: tuple[int, int]) -> Path:
    videos = root / "videos" / "c"
    videos.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        p = videos / f"clip{i:04d}.mp4"
        if not p.exists():
            write_test_video(p, seconds=seconds, fps=25, size=size, audio_rate=44100, channels=2, seed=i)
    return videos.parent


def make_reference_layout(videos: Path, root: Path, copies: int) -> Path:
    """The reference tree for the same clips: frame_K/<id>.jpg (224 px, q75) + <id>.wav (16 kHz PCM16) + JSON.

    Each clip is written ``copies`` times under distinct ids (``<stem>_r<copy>``), like the reader set.
    """
    frames_root, wav_root = root / "frames", root / "wavs"
    entries = []
    for p in sorted(videos.rglob("*.mp4")):
        clip = decode_clip(p, num_frames=10)
        for r in range(copies):
            vid = f"{p.stem}_r{r}"
            for k, frame in enumerate(clip.frames):
                (frames_root / f"frame_{k}").mkdir(parents=True, exist_ok=True)
                Image.fromarray(frame).save(frames_root / f"frame_{k}" / f"{vid}.jpg", quality=75)
            wav_root.mkdir(parents=True, exist_ok=True)
            sf.write(wav_root / f"{vid}.wav", clip.waveform, 16000, subtype="PCM_16")
            entries.append({"video_id": vid, "wav": str(wav_root / f"{vid}.wav"), "video_path": str(frames_root)})
    path = root / "test.json"
    path.write_text(json.dumps({"data": entries}))
    return path


def make_reader_list(videos: Path, root: Path, copies: int) -> tuple[Path, Path]:
    """A video list naming every clip ``copies`` times with distinct video ids, and its label CSV."""
    root.mkdir(parents=True, exist_ok=True)
    labels = root / "labels.csv"
    labels.write_text("index,mid,display_name\n0,c,c\n")
    lst = root / "list.csv"
    with open(lst, "w") as fh:
        fh.write("path,label,video_id\n")
        for p in sorted(videos.rglob("*.mp4")):
            for r in range(copies):
                fh.write(f"{p},c,{p.stem}_r{r}\n")
    return lst, labels


def time_loader(make, n_expected: int) -> float:
    """Samples/s of one full pass over a fresh loader from ``make()`` (worker start-up included)."""
    loader = make()
    t0 = time.perf_counter()
    n = 0
    for batch in loader:
        n += len(batch["key"]) if isinstance(batch, dict) else len(batch[0])
    dt = time.perf_counter() - t0
    assert n == n_expected, (n, n_expected)
    return n_expected / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips", type=int, default=48, help="clips for the raw mp4 -> shards measurement")
    ap.add_argument("--reader-clips", type=int, default=240, help="distinct clips for the reader measurement")
    ap.add_argument(
        "--reader-samples",
        type=int,
        default=2400,
        help="samples read per pass (each clip listed several times under distinct ids; a Kinetics50-C test set "
        "has 2,466)",
    )
    ap.add_argument("--passes", type=int, default=3, help="reader passes per side (best is reported)")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--size", default="320x240")
    ap.add_argument("--workdir", help="keep data here (default: a temporary folder)")
    ap.add_argument("--batch-sizes", default="16,64", help="reader batch sizes (64: the references' evaluation batch)")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: shard (raw mp4 -> shards), reader")
    args = ap.parse_args()
    torch.set_num_threads(1)
    w, h = map(int, args.size.split("x"))
    root = Path(args.workdir or tempfile.mkdtemp(prefix="avtta-bench-"))
    videos = make_clips(root, max(args.clips, args.reader_clips), args.seconds, (w, h))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}")
    print(f"{args.clips} clips of {args.seconds:.0f} s, {w}x{h} H.264 25 fps + AAC 44.1 kHz stereo\n")

    import ray

    subset = root / f"subset-{args.clips}"  # the first --clips clips
    if not subset.exists():
        (subset / "c").mkdir(parents=True)
        for p in sorted(videos.rglob("*.mp4"))[: args.clips]:
            os.symlink(p, subset / "c" / p.name)
    for label, workers in (("in-process (no Ray)", 0), ("Ray, 1 worker", 1), ("Ray, 2 workers", 2)):
        if "shard" in args.skip:
            break
        out = root / f"shards-{workers}"
        shutil.rmtree(out, ignore_errors=True)
        cfg = ShardJobConfig(
            videos=str(subset),
            out=str(out),
            dataset="bench",
            split="test",
            frames=10,
            shard_size=8,
            workers=workers,
            progress=False,
        )
        startup = 0.0
        if workers:
            t0 = time.perf_counter()
            ray.init(address="local", num_cpus=workers, include_dashboard=False, logging_level="ERROR")
            startup = time.perf_counter() - t0
        t0 = time.perf_counter()
        run_shard_job(cfg)
        dt = time.perf_counter() - t0
        if workers:
            ray.shutdown()
        note = f"  (+ {startup:.1f} s to start Ray)" if workers else ""
        print(f"{'raw mp4 -> shards, ' + label:48s} {args.clips / dt:8.2f} clips/s{note}")

    if "reader" in args.skip:
        return
    copies = max(1, args.reader_samples // args.reader_clips)
    n = args.reader_clips * copies
    reader_set = root / f"reader-shards-{n}"
    unique = root / f"subset-{args.reader_clips}"
    if not unique.exists():
        (unique / "c").mkdir(parents=True)
        for p in sorted(videos.rglob("*.mp4"))[: args.reader_clips]:
            os.symlink(p, unique / "c" / p.name)
    if not (reader_set / "catalog.parquet").exists():
        lst, labels = make_reader_list(unique, root / f"reader-list-{n}", copies)
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR")
        run_shard_job(
            ShardJobConfig(
                videos=str(lst),
                labels=str(labels),
                out=str(reader_set),
                dataset="bench",
                split="test",
                frames=10,
                shard_size=64,
                workers=os.cpu_count() or 1,
                progress=False,
            )
        )
        ray.shutdown()
    ref_json = root / f"reference-{n}" / "test.json"
    if not ref_json.exists():
        ref_json = make_reference_layout(unique, root / f"reference-{n}", copies)
    print(
        f"\nreading {n} samples ({args.reader_clips} clips x {copies}, eval frame), best of {args.passes} passes, "
        "the sides interleaved:"
    )
    for bs in (int(b) for b in args.batch_sizes.split(",")):
        for workers in (0, 2):
            loaders = {
                "ours": lambda w=workers, bs=bs: open_dataset(
                    reader_set, "bench", "test", batch_size=bs, num_workers=w
                ),
                "ours-stream": lambda w=workers, bs=bs: open_dataset(
                    reader_set, "bench", "test", batch_size=bs, num_workers=w, access="stream"
                ),
                "reference": lambda w=workers, bs=bs: DataLoader(
                    ReferenceLoader(str(ref_json)), batch_size=bs, shuffle=True, num_workers=w
                ),
            }
            best = dict.fromkeys(loaders, 0.0)
            for _ in range(args.passes):
                for name, make in loaders.items():
                    best[name] = max(best[name], time_loader(make, n))
            print(
                f"reader, batch {bs:3d}, {workers} DataLoader workers: ours {best['ours']:6.0f} samples/s | "
                f"streaming access {best['ours-stream']:5.0f} | reference {best['reference']:4.0f} | ratio "
                f"{best['ours'] / best['reference']:5.1f}x (streaming {best['ours-stream'] / best['reference']:4.1f}x)"
                f" | load average {os.getloadavg()[0]:.1f}"
            )


if __name__ == "__main__":
    main()
