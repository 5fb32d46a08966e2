"""Benchmark the corruption library against the reference implementations, side by side in one run.

Video: frames per second of ``apply_corruption`` (a clip of 10 frames, every severity) against the reference code on
the same frames: ``imagecorruptions.corrupt`` (the ImageNet-C code Kinetics50-C uses), where its ``glass_blur`` and
``fog`` are run with two compatibility shims (scikit-image's removed ``multichannel`` argument, NumPy 2's removed
``np.float_``) so the reference code itself is timed; ``elastic_transform`` against ImageNet-C's algorithm as written
in tests/corruptions/test_fidelity.py (imagecorruptions ships a different one). The reference motion blur of the
Kinetics50-C generator is ImageMagick (not installed); imagecorruptions' NumPy motion blur stands in for it.

Audio: seconds per 10-s clip of ``apply_corruption`` against a transcription of the reference code (spec
corruptions.md 2 and 3): NumPy noise, per-call loading / resampling of the recording (as both references do),
pydub's 16-bit saturating overlay, torchaudio's add_noise.

Run: ``.venv/bin/python benchmarks/bench_corruptions.py [--repeats 3] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import random
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from avtta.corruptions import CorruptionOptions, CorruptionSpec, apply_corruption, tables
from avtta.corruptions.testing import synthetic_frames, synthetic_wave

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("AVTTA_SHARED", ROOT.parent / "shared"))


def _clip() -> tuple[np.ndarray, np.ndarray, Path | None]:
    clip = SHARED / "fixtures" / "audioset_clip"
    if not clip.is_dir():
        return synthetic_frames(), synthetic_wave(), None
    import soundfile as sf
    from PIL import Image

    frames = np.stack(
        [
            np.asarray(Image.open(clip / "eval_frames" / f"frame_{k}" / "BkjpjAohg-0.jpg").convert("RGB"))
            for k in range(10)
        ]
    )
    wave, _ = sf.read(clip / "BkjpjAohg-0.wav", dtype="float32")
    return frames, wave, SHARED / "fixtures" / "noise"


def _fidelity_module():
    spec = importlib.util.spec_from_file_location("test_fidelity", ROOT / "tests/corruptions/test_fidelity.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fidelity_table(frames: np.ndarray) -> list[dict]:
    """Mean-PSNR agreement per video corruption and severity, as tests/corruptions/test_fidelity.py checks it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import imagecorruptions
    fid = _fidelity_module()

    def same_draws(name: str, reference) -> list[float]:
        diffs = []
        for s in tables.SEVERITIES:
            sub = frames[:3]
            params = apply_corruption(CorruptionSpec("video", name, s), sub, None, seed=s, key="f")[2]
            ours = fid._ours(name, s, sub, 0, params=params)
            ref = [reference(f, s, p) for f, p in zip(sub, params["video"]["frames"], strict=True)]
            diffs.append(fid._mean_psnr(sub, ours) - fid._mean_psnr(sub, ref))
        return diffs

    rows = {name: ("imagecorruptions", fid.unpaired_diffs(name, imagecorruptions, frames)) for name in fid.UNPAIRED}
    for name in ("motion_blur", "frost"):
        rows[name] = ("imagecorruptions, paired draws", fid.paired_diffs(name, imagecorruptions, frames))
    rows["glass_blur"] = ("spec reference (test)", fid.glass_diffs(frames))

    def fog(f: np.ndarray, s: int, p: dict) -> np.ndarray:
        return fid.reference_fog(f, s, np.random.default_rng(p["noise_seed"]))

    def elastic(f: np.ndarray, s: int, p: dict) -> np.ndarray:
        return fid.reference_elastic(f, s, np.array(p["point_offsets"]), np.random.default_rng(p["noise_seed"]))

    rows["fog"] = ("spec reference, same draws", same_draws("fog", fog))
    rows["elastic_transform"] = ("spec reference, same draws", same_draws("elastic_transform", elastic))
    return [{"corruption": f"video:{n}", "reference": rows[n][0], "diff_db": rows[n][1]} for n in tables.VIDEO_ORDER]


def _reference_video() -> dict:
    """name -> f(uint8 frame, severity) with the reference code."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import imagecorruptions
        import imagecorruptions.corruptions as icc
    from skimage.filters import gaussian

    def gaussian_shim(x, sigma, multichannel=None, **kw):  # skimage >= 0.19 renamed the argument
        return gaussian(x, sigma=sigma, channel_axis=-1 if multichannel else None, **kw)

    icc.gaussian = gaussian_shim
    if not hasattr(np, "float_"):
        np.float_ = np.float64  # benchmark-only shim so the reference fog runs under NumPy 2

    fid = _fidelity_module()

    def elastic(frame, s):
        affine = tables.ELASTIC[s - 1][2]
        return fid.reference_elastic(frame, s, np.random.uniform(-affine, affine, (3, 2)), np.random.default_rng())

    refs = {name: (lambda f, s, n=name: imagecorruptions.corrupt(f, s, n)) for name in tables.VIDEO_ORDER}
    refs["elastic_transform"] = elastic
    return refs


# the reference glass blur draws per pixel in a Python loop (seconds per frame): timed on 2 frames
REFERENCE_FRAMES = {"glass_blur": 2}


def bench_video(frames: np.ndarray, repeats: int) -> list[dict]:
    refs = _reference_video()
    rows = []
    for name in tables.VIDEO_ORDER:
        ref_frames = frames[: REFERENCE_FRAMES.get(name, len(frames))]
        ours_t, ref_t = [], []
        for _ in range(repeats):  # interleaved, so load changes on the shared machine hit both sides alike
            t = time.perf_counter()
            for s in tables.SEVERITIES:
                apply_corruption(CorruptionSpec("video", name, s), frames, None, seed=0, key="bench")
            ours_t.append(time.perf_counter() - t)
            t = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for s in tables.SEVERITIES:
                    for f in ref_frames:
                        refs[name](f, s)
            ref_t.append(time.perf_counter() - t)
        n, n_ref = (len(x) * len(tables.SEVERITIES) for x in (frames, ref_frames))
        rows.append({"corruption": f"video:{name}", "ours_fps": n / min(ours_t), "ref_fps": n_ref / min(ref_t)})
    return rows


# --------------------------------------------------------------------------------------------------------------------
# audio references (spec 2 and 3), per call as the reference code does it
# --------------------------------------------------------------------------------------------------------------------


def _ref_k50_env(wave: np.ndarray, noise_path: Path, severity: int) -> np.ndarray:
    import soundfile as sf

    noise, rate = sf.read(noise_path, dtype="int16", always_2d=True)  # pydub: integer samples, file's own format
    clip = np.round(wave * 32767).astype(np.int32)[:, None]
    if rate != 16000 or noise.shape[1] != 1:  # pydub converts both to the max rate / channels: emulate the cost
        import torch
        import torchaudio.functional as taf

        clip = taf.resample(torch.from_numpy(clip.T.astype(np.float32)), 16000, rate).T.numpy().astype(np.int32)
        clip = np.repeat(clip, noise.shape[1], axis=1)
    reps = clip.shape[0] // noise.shape[0] + 1
    looped = np.tile(noise, (reps, 1))[: clip.shape[0]].astype(np.int32)
    gained = np.clip(np.round(looped * 10 ** (tables.ENV_GAIN_DB[severity - 1] / 20)), -32768, 32767)
    return np.clip(clip + gained, -32768, 32767).astype(np.int16)


def _ref_av_env(wave: np.ndarray, folder: Path, severity: int) -> np.ndarray:
    import soundfile as sf
    import torch
    import torchaudio.functional as taf

    path = folder / np.random.choice(sorted(os.listdir(folder)))
    data, rate = sf.read(path, dtype="float32", always_2d=True)
    noise = torch.from_numpy(data.T.copy())
    if rate != 16000:
        noise = taf.resample(noise, rate, 16000)
    x = torch.from_numpy(wave)[None]
    while noise.shape[1] < x.shape[1]:
        noise = torch.cat([noise, noise], dim=1)
    noise = noise[:, : x.shape[1]]
    snr = torch.tensor([tables.ENV_SNRS[severity - 1]] * noise.shape[0])
    return taf.add_noise(x.expand(noise.shape[0], -1), noise, snr).numpy()


def _ref_av_simple(name: str, wave: np.ndarray, severity: int) -> np.ndarray:
    import torch
    from scipy import signal

    x = torch.from_numpy(wave)[None]
    snr = tables.NOISE_SNRS[severity - 1]

    def scaled(noise: torch.Tensor) -> torch.Tensor:
        ps, pn = x.pow(2).mean(), noise.pow(2).mean() + 1e-8
        return torch.clamp(x + torch.sqrt(ps / (10 ** (snr / 10) * pn)) * noise, -1, 1)

    if name == "gaussian":
        import torchaudio.functional as taf

        return taf.add_noise(x, torch.randn_like(x), torch.tensor([float(snr)])).numpy()
    if name == "impulse":
        r = torch.rand_like(x)
        return scaled(torch.where(r < 0.025, -1.0, torch.where(r > 0.975, 1.0, 0.0))).numpy()
    if name == "shot":
        y = (x - x.min()) / (x.max() - x.min())
        return scaled(torch.poisson(50 * y) / 50 - y).numpy()
    if name == "speckle":
        return scaled(torch.randn_like(x) * x).numpy()
    if name == "compression":
        cutoff = min(tables.LOWPASS_CUTOFF_HZ[severity - 1], 7600.0)
        b, a = signal.butter(6, cutoff / 8000, btype="low")
        return signal.lfilter(b, a, wave)
    # interference
    out = x.clone()
    t = x.shape[1]
    gap = max(int(t * tables.INTERFERENCE_MASK_FRACTION[severity - 1]) // (2 * severity), 1600)
    for p in random.sample(range(t - gap), 2 * severity):
        out[:, p : p + gap] = 0
    return out.numpy()


def bench_audio(wave: np.ndarray, noise_root: Path | None, repeats: int) -> list[dict]:
    rows = []
    k50_dir = None
    if noise_root is not None:  # a Kinetics50-C style noise_dir built from the real recordings
        k50_dir = Path(tempfile.mkdtemp(prefix="avtta_bench_noise_"))  # symlinks only, removed at the end
        picks = {"traffic": "crackling_fire_and_siren", "crowd": "crowd_speech", "rain": "rain",
                 "thunder": "underwater", "wind": "wind"}  # fmt: skip
        for name, folder in picks.items():
            os.symlink(next((noise_root / folder).glob("*.wav")), k50_dir / f"{name}.wav")
    no_frames = np.zeros((0, 224, 224, 3), np.uint8)  # av pairs: time the audio part only
    cases = [("audio", n) for n in tables.AUDIO_ORDER] + [("av", n) for n in tables.AV_ORDER]
    for modality, name in cases:
        env = (modality == "audio" and name != "gaussian_noise") or (modality == "av" and name in tables.AV_ENV_FOLDERS)
        noise_dir = (k50_dir if modality == "audio" else noise_root) if env else None
        options = CorruptionOptions(noise_dir=str(noise_dir) if noise_dir else None)

        def ref(s: int, modality=modality, name=name, noise_dir=noise_dir):
            if modality == "audio" and name == "gaussian_noise":
                return wave + np.random.normal(0, tables.AUDIO_GAUSSIAN_NOISE[s - 1], wave.shape)
            if modality == "audio":
                return _ref_k50_env(wave, noise_dir / f"{name}.wav", s) if noise_dir else None
            if name in tables.AV_ENV_FOLDERS:
                return _ref_av_env(wave, noise_dir / tables.AV_ENV_FOLDERS[name], s) if noise_dir else None
            return _ref_av_simple(name, wave, s)

        ours_t, ref_t = [], []
        for _ in range(repeats):
            t = time.perf_counter()
            for s in tables.SEVERITIES:
                apply_corruption(
                    CorruptionSpec(modality, name, s), no_frames, wave, seed=0, key="bench", options=options
                )
            ours_t.append((time.perf_counter() - t) / 5)
            t = time.perf_counter()
            for s in tables.SEVERITIES:
                ran = ref(s) is not None
            ref_t.append((time.perf_counter() - t) / 5 if ran else float("nan"))
        rows.append({
            "corruption": f"{modality}:{name}",
            "noise": "recording" if noise_dir else ("synthetic" if env else "-"),
            "ours_s_per_clip": min(ours_t),
            "ref_s_per_clip": min(ref_t),
        })  # fmt: skip
    if k50_dir is not None:
        shutil.rmtree(k50_dir)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions, the best is kept")
    parser.add_argument("--only", choices=("video", "audio", "fidelity"), help="run one part only")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    frames, wave, noise_root = _clip()
    print(f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; clip: {frames.shape}, "
          f"{wave.size / 16000:.2f} s audio; best of {args.repeats}")  # fmt: skip
    results: dict = {}
    if args.only in (None, "video"):
        results["video"] = bench_video(frames, args.repeats)
        print("\n| corruption | ours (frames/s) | reference (frames/s) | speed-up |\n|---|---:|---:|---:|")
        for r in results["video"]:
            ratio = r["ours_fps"] / r["ref_fps"]
            print(f"| {r['corruption']} | {r['ours_fps']:.0f} | {r['ref_fps']:.1f} | {ratio:.1f}x |")
    if args.only in (None, "audio"):
        results["audio"] = bench_audio(wave, noise_root, args.repeats)
        print("\n| corruption | noise | ours (s/clip) | reference (s/clip) | speed-up |\n|---|---|---:|---:|---:|")
        for r in results["audio"]:
            ratio = r["ref_s_per_clip"] / r["ours_s_per_clip"]
            print(f"| {r['corruption']} | {r['noise']} | {r['ours_s_per_clip']:.4f} | {r['ref_s_per_clip']:.4f} | "
                  f"{ratio:.1f}x |")  # fmt: skip
    if args.only in (None, "fidelity"):
        results["fidelity"] = fidelity_table(frames)
        print("\n| corruption | compared with | mean PSNR ours - reference (dB), severity 1..5 | worst abs |")
        print("|---|---|---|---:|")
        for r in results["fidelity"]:
            d = r["diff_db"]
            print(f"| {r['corruption']} | {r['reference']} | {', '.join(f'{x:+.3f}' for x in d)} | "
                  f"{max(abs(x) for x in d):.3f} |")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
