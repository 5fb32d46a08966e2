"""The demo data set ("avsynth"): small synthetic audio-visual clips written as real mp4 files (H.264 + AAC).

Design. A class is a pair (visual attribute, audio attribute), and the pairs are the edges of one cycle through
the attribute values (:func:`class_attributes`): with 10 classes and 5 values per modality, class ``c`` is
``(visual c // 2, audio ((c + 1) // 2) % 5)``. Every visual value is therefore shared by exactly two classes, and
every audio value by two *other* classes. Video alone or audio alone can tell at best which of two classes a clip
belongs to (50 % accuracy at perfect recognition); the pair identifies it. A late-fusion model suffices: the score
``s_V(v) + s_A(a)`` peaks at the one class matching both.

* Visual attribute: the hue of the main object (5 hues 72 degrees apart, +-14 degrees jitter). Nuisances: shape
  (disc or 3-6-gon), size, position and linear motion with bounces, slow zoom, rotation, shading stripes, lighting,
  a low-saturation textured background of any hue that drifts, and in half the clips a smaller distractor object
  of a *different* class hue. The model reads a single frame, so the cue is in every frame.
* Audio attribute: the sound pattern: steady ``hum``, on/off ``beep``, repeated up-glide ``rise``, repeated
  down-glide ``fall``, band-limited noise ``hiss``. Nuisances: pitch (about two octaves), timbre (number, roll-off
  and parity of harmonics), glide rate and depth, beat rate and duty cycle, loudness, onset, and coloured background
  noise at 8-30 dB SNR.

Each clip is rendered from its own ``numpy`` generator seeded with ``(seed, split, index)``, so the data set does
not depend on the number of workers. Files go to ``OUT/<split>/<mid>/<id>.mp4`` with random-looking ids (a hash),
so the sorted file order does not reveal the class. ``OUT/class_labels_indices.csv`` is the label CSV in the
reference format, ``OUT/clips.parquet`` records every clip's attributes and nuisance parameters, and
``OUT/dataset.json`` (written last) marks a complete data set: a rerun with the same options returns at once.
"""

from __future__ import annotations

import colorsys
import concurrent.futures as cf
import csv
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from avtta.shards.io import atomic_path, atomic_write, cpu_count, is_temp_name

__all__ = [
    "AUDIO_PATTERNS",
    "DATASET_FILE",
    "LABELS_FILE",
    "VISUAL_HUES",
    "DemoConfig",
    "DemoDataset",
    "class_attributes",
    "class_table",
    "clip_id",
    "generate_demo_dataset",
    "render_audio",
    "render_clip",
    "render_frames",
]

log = logging.getLogger(__name__)

# Visual attribute value -> (name, hue in degrees). 72 degrees apart; the +-14 degree jitter keeps 44 degrees clear.
VISUAL_HUES = (("red", 0.0), ("lime", 72.0), ("jade", 144.0), ("azure", 216.0), ("violet", 288.0))
HUE_JITTER = 14.0
# Audio attribute value -> name of the sound pattern.
AUDIO_PATTERNS = ("hum", "beep", "rise", "fall", "hiss")

LABELS_FILE = "class_labels_indices.csv"
CLIPS_FILE = "clips.parquet"
DATASET_FILE = "dataset.json"
FORMAT_VERSION = 1
_SPLIT_CODE = {"train": 1, "test": 2}


@dataclass(frozen=True)
class DemoConfig:
    """Options of :func:`generate_demo_dataset` that change the data (recorded in ``dataset.json``)."""

    num_classes: int = 10
    train: int = 1000
    test: int = 400
    seconds: float = 2.0
    size: int = 64
    fps: float = 10.0
    audio_rate: int = 16000
    seed: int = 0
    version: int = FORMAT_VERSION

    def validate(self) -> None:
        n_vis, n_aud = len(VISUAL_HUES), len(AUDIO_PATTERNS)
        if not 2 <= self.num_classes <= 2 * min(n_vis, n_aud):
            raise ValueError(f"num_classes must be in 2..{2 * min(n_vis, n_aud)}, got {self.num_classes}")
        if self.train < 0 or self.test < 0 or self.train + self.test == 0:
            raise ValueError(f"train and test clip counts must be >= 0 and not both 0, got {self.train}, {self.test}")
        if not 0.5 <= self.seconds <= 10.0:
            raise ValueError(f"seconds must be in [0.5, 10], got {self.seconds}")
        if self.size < 32 or self.size % 2:
            raise ValueError(f"size must be an even number >= 32 (H.264 4:2:0), got {self.size}")
        if not 2.0 <= self.fps <= 30.0:
            raise ValueError(f"fps must be in [2, 30], got {self.fps}")
        if self.audio_rate < 8000:
            raise ValueError(f"audio_rate must be >= 8000, got {self.audio_rate}")


@dataclass(frozen=True)
class DemoDataset:
    """Where :func:`generate_demo_dataset` wrote the data set."""

    root: Path
    train: Path
    test: Path
    labels: Path
    clips: Path
    classes: tuple[tuple[str, str], ...]  # (mid, display_name) in index order
    config: DemoConfig


# ----------------------------------------------------------------------------------------------------- classes


def class_attributes(num_classes: int) -> list[tuple[int, int]]:
    """(visual value, audio value) of each class: consecutive edges of a cycle through the attribute values.

    With ``num_classes = 2k`` classes over ``k`` values per modality the cycle closes, so every value of each
    modality is shared by exactly two classes. An odd count leaves one visual value and one audio value unique.
    """
    k = max(2, (num_classes + 1) // 2)  # values per modality (2 classes need 2 values of one modality)
    if k > min(len(VISUAL_HUES), len(AUDIO_PATTERNS)) or num_classes < 2:
        raise ValueError(f"num_classes {num_classes} is not supported (2..{2 * len(VISUAL_HUES)})")
    return [(c // 2, ((c + 1) // 2) % k) for c in range(num_classes)]


def class_table(num_classes: int) -> list[tuple[str, str]]:
    """``(mid, display_name)`` per class, e.g. ``("red_hum", "red object + hum")``; ``mid`` is the folder name."""
    rows = []
    for v, a in class_attributes(num_classes):
        hue, sound = VISUAL_HUES[v][0], AUDIO_PATTERNS[a]
        rows.append((f"{hue}_{sound}", f"{hue} object + {sound}"))
    return rows


def clip_id(seed: int, split: str, index: int) -> str:
    """A random-looking, stable 11-character id (like a YouTube id) for clip ``index`` of ``split``."""
    digest = hashlib.blake2b(f"avsynth/{seed}/{split}/{index}".encode(), digest_size=8).hexdigest()
    return digest[:11]


def _split_labels(cfg: DemoConfig, split: str, n: int) -> np.ndarray:
    """Balanced class labels of a split, in a seeded random order."""
    labels = np.arange(n) % cfg.num_classes
    rng = np.random.default_rng([cfg.seed, _SPLIT_CODE[split], 0xC1A55])
    return rng.permutation(labels)


# ----------------------------------------------------------------------------------------------------- video


def _hsv(h_deg: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb((h_deg % 360.0) / 360.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0, 1))))


def _shape_alpha(xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, radius: float, sides: int, angle: float):
    """Anti-aliased coverage in [0, 1] of a disc (``sides == 0``) or a regular polygon of circumradius ``radius``."""
    dx, dy = xx - cx, yy - cy
    r = np.hypot(dx, dy)
    if sides == 0:
        dist = radius - r
    else:
        sector = 2 * np.pi / sides
        phi = np.mod(np.arctan2(dy, dx) - angle, sector) - sector / 2
        # signed distance to the nearest edge (exact inside, a close approximation outside)
        dist = radius * np.cos(np.pi / sides) - r * np.cos(phi)
    return np.clip(dist + 0.5, 0.0, 1.0)


def _sample_object(rng: np.random.Generator, hue: float, size: int, seconds: float, scale: tuple[float, float]):
    radius = rng.uniform(*scale) * size / 2
    margin = radius
    return {
        "hue": hue,
        "saturation": rng.uniform(0.55, 1.0),
        "value": rng.uniform(0.55, 1.0),
        "sides": int(rng.choice([0, 3, 4, 5, 6])),
        "radius": radius,
        "zoom": rng.uniform(-0.25, 0.25),  # relative size change over the clip
        "angle": rng.uniform(0, 2 * np.pi),
        "spin": rng.uniform(-2.0, 2.0),  # rad/s
        "x": rng.uniform(margin, size - margin),
        "y": rng.uniform(margin, size - margin),
        "vx": rng.uniform(-1.0, 1.0) * size / seconds * 0.6,  # px/s: crosses up to ~60 % of the frame per clip
        "vy": rng.uniform(-1.0, 1.0) * size / seconds * 0.6,
        "stripe_amp": rng.uniform(0.0, 0.3),
        "stripe_freq": rng.uniform(0.15, 0.5),  # rad/px
        "stripe_dir": rng.uniform(0, np.pi),
    }


def _bounce(pos: float, lo: float, hi: float) -> float:
    """Reflect a free position into [lo, hi] (a ball bouncing between walls)."""
    span = hi - lo
    if span <= 0:
        return (lo + hi) / 2
    p = np.mod(pos - lo, 2 * span)
    return lo + (p if p <= span else 2 * span - p)


def render_frames(
    rng: np.random.Generator, visual: int, size: int, num_frames: int, fps: float
) -> tuple[np.ndarray, dict]:
    """Frames ``uint8 [num_frames, size, size, 3]`` of one clip whose main object has hue ``visual``, and params."""
    seconds = num_frames / fps
    base_hue = VISUAL_HUES[visual][1]
    hue = base_hue + rng.uniform(-HUE_JITTER, HUE_JITTER)
    main = _sample_object(rng, hue, size, seconds, (0.45, 0.75))
    objects = [main]
    if rng.random() < 0.5:
        other = int(rng.choice([v for v in range(len(VISUAL_HUES)) if v != visual]))
        d_hue = VISUAL_HUES[other][1] + rng.uniform(-HUE_JITTER, HUE_JITTER)
        distractor = _sample_object(rng, d_hue, size, seconds, (0.2, 0.32))
        distractor["visual"] = other
        objects.insert(0, distractor)  # drawn first: the main object may cover it
    # background: a low-saturation colour of any hue, a linear gradient, and drifting blurred noise
    bg = {
        "hue": rng.uniform(0, 360),
        "saturation": rng.uniform(0.0, 0.3),
        "value": rng.uniform(0.2, 0.85),
        "gradient": rng.uniform(-0.25, 0.25, size=2),
        "texture_amp": rng.uniform(0.0, 0.15),
        "drift": rng.uniform(-1, 1, size=2) * size / seconds * 0.3,
    }
    light = rng.uniform(0.8, 1.15)  # global illumination
    cells = 8
    noise = rng.standard_normal((cells, cells))
    noise = np.pad(noise, ((0, 1), (0, 1)), mode="wrap")  # periodic, so the drifting texture has no seam

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    bg_rgb = _hsv(bg["hue"], bg["saturation"], bg["value"])
    ramp = 1.0 + bg["gradient"][0] * (xx / size - 0.5) * 2 + bg["gradient"][1] * (yy / size - 0.5) * 2
    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    for i in range(num_frames):
        t = i / fps
        # texture: bilinear upsampling of a coarse noise grid, shifted by the drift (wraps around)
        u = np.mod(xx + bg["drift"][0] * t, size) / size * cells
        w = np.mod(yy + bg["drift"][1] * t, size) / size * cells
        iu, iw = u.astype(int), w.astype(int)
        fu, fw = u - iu, w - iw
        tex = (
            noise[iw, iu] * (1 - fu) * (1 - fw)
            + noise[iw, iu + 1] * fu * (1 - fw)
            + noise[iw + 1, iu] * (1 - fu) * fw
            + noise[iw + 1, iu + 1] * fu * fw
        )
        img = bg_rgb[None, None, :] * (ramp + bg["texture_amp"] * tex)[..., None]
        for obj in objects:
            radius = obj["radius"] * (1 + obj["zoom"] * t / seconds)
            cx = _bounce(obj["x"] + obj["vx"] * t, radius, size - radius)
            cy = _bounce(obj["y"] + obj["vy"] * t, radius, size - radius)
            angle = obj["angle"] + obj["spin"] * t
            alpha = _shape_alpha(xx, yy, cx, cy, radius, obj["sides"], angle)[..., None]
            proj = (xx - cx) * np.cos(obj["stripe_dir"]) + (yy - cy) * np.sin(obj["stripe_dir"])
            shade = 1.0 + obj["stripe_amp"] * np.sin(obj["stripe_freq"] * proj)
            colour = _hsv(obj["hue"], obj["saturation"], obj["value"])[None, None, :] * shade[..., None]
            img = img * (1 - alpha) + colour * alpha
        frames[i] = np.clip(img * light * 255.0 + 0.5, 0, 255).astype(np.uint8)
    params = {
        "hue": round(float(hue), 3),
        "objects": [_round(o) for o in objects],
        "background": _round(bg),
        "light": round(float(light), 4),
    }
    return frames, params


# ----------------------------------------------------------------------------------------------------- audio


def _coloured_noise(rng: np.random.Generator, n: int, beta: float) -> np.ndarray:
    """Noise with power spectrum ~ 1 / f^beta (0 white, 1 pink, 2 brown), unit RMS."""
    spec = rng.standard_normal(n // 2 + 1) + 1j * rng.standard_normal(n // 2 + 1)
    f = np.arange(n // 2 + 1, dtype=np.float64)
    f[0] = 1.0
    spec *= f ** (-beta / 2)
    spec[0] = 0.0
    x = np.fft.irfft(spec, n)
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


def render_audio(rng: np.random.Generator, audio: int, seconds: float, rate: int) -> tuple[np.ndarray, dict]:
    """Mono waveform ``float32 [1, S]`` of one clip with sound pattern ``AUDIO_PATTERNS[audio]``, and params."""
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    pattern = AUDIO_PATTERNS[audio]
    f0 = float(np.exp(rng.uniform(np.log(170.0), np.log(680.0))))  # two octaves of pitch nuisance
    n_harm = int(rng.integers(1, 7))
    rolloff = rng.uniform(0.5, 2.5)
    odd_only = bool(rng.random() < 0.3)
    ks = np.arange(1, n_harm + 1) * (2 if odd_only else 1) - (1 if odd_only else 0)
    amps = ks ** (-rolloff) * rng.uniform(0.5, 1.5, size=len(ks))
    p: dict[str, Any] = {"pattern": pattern, "f0": f0, "harmonics": ks.tolist(), "amps": amps.tolist()}

    freq = np.full(n, f0)
    env = np.ones(n)
    if pattern == "hum":
        # steady; slow gentle tremolo and a little vibrato (far below the glides' depth)
        rate_am, depth_am = rng.uniform(0.3, 1.5), rng.uniform(0.0, 0.25)
        env = 1.0 - depth_am * (0.5 + 0.5 * np.sin(2 * np.pi * rate_am * t + rng.uniform(0, 2 * np.pi)))
        vib = rng.uniform(0.0, 0.02)
        freq = f0 * 2 ** (vib * np.sin(2 * np.pi * rng.uniform(3, 6) * t))
        p.update(tremolo_hz=rate_am, tremolo_depth=depth_am, vibrato_oct=vib)
    elif pattern == "beep":
        beat, duty = rng.uniform(2.5, 6.0), rng.uniform(0.35, 0.6)
        phase = np.mod(beat * t + rng.uniform(0, 1), 1.0)
        ramp = 0.008 * beat  # 8 ms edges, in cycle units
        env = np.clip(np.minimum(phase / ramp, (duty - phase) / ramp), 0.0, 1.0)
        p.update(beat_hz=beat, duty=duty)
    elif pattern in ("rise", "fall"):
        period, depth = rng.uniform(0.35, 0.9), rng.uniform(0.5, 1.2)
        saw = np.mod(t / period + rng.uniform(0, 1), 1.0)
        freq = f0 * 2 ** (depth * (saw if pattern == "rise" else 1.0 - saw) - depth / 2)
        p.update(period_s=period, depth_oct=depth)
    nyquist_guard = 0.45 * rate
    if pattern == "hiss":
        # band-limited noise around a pitch-dependent centre, about an octave wide
        centre, width = f0 * rng.uniform(2.0, 4.0), rng.uniform(0.4, 1.0)
        spec = np.fft.rfft(rng.standard_normal(n))
        f = np.fft.rfftfreq(n, 1 / rate)
        band = np.exp(-0.5 * (np.log2(np.maximum(f, 1.0) / centre) / (width / 2)) ** 2)
        sig = np.fft.irfft(spec * band, n)
        p.update(centre_hz=centre, width_oct=width)
    else:
        phase = 2 * np.pi * np.cumsum(freq) / rate
        sig = np.zeros(n)
        for k, a in zip(ks, amps, strict=True):
            # drop partials above the guard band (no aliasing), sample by sample since the pitch moves
            sig += a * np.sin(k * phase) * (k * freq < nyquist_guard)
    sig = sig * env
    # onset and fade: the sound starts in the first 0.25 s, 20 ms ramps
    onset = rng.uniform(0.0, 0.25)
    gate = np.clip(np.minimum((t - onset) / 0.02, (seconds - t) / 0.02), 0.0, 1.0)
    sig = sig * gate
    sig /= np.sqrt(np.mean(sig[t >= onset] ** 2)) + 1e-12
    snr_db, beta = rng.uniform(8.0, 30.0), rng.uniform(0.0, 2.0)
    noise = _coloured_noise(rng, n, beta) * 10 ** (-snr_db / 20)
    level_db = rng.uniform(-30.0, -14.0)  # RMS level of the signal, dBFS
    wave = (sig + noise) * 10 ** (level_db / 20)
    wave = np.clip(wave, -0.99, 0.99).astype(np.float32)[None]
    p.update(onset_s=onset, snr_db=snr_db, noise_beta=beta, level_dbfs=level_db)
    return wave, _round(p)


# ----------------------------------------------------------------------------------------------------- clips


def _round(obj: Any) -> Any:
    """JSON-friendly copy of a parameter dict (numpy -> Python, floats rounded to 4 decimals)."""
    if isinstance(obj, dict):
        return {k: _round(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [_round(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return round(float(obj), 4)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def render_clip(cfg: DemoConfig, split: str, index: int, label: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Frames, audio ``[1, S]`` and parameters of clip ``index`` of ``split`` (deterministic in its arguments)."""
    visual, audio = class_attributes(cfg.num_classes)[label]
    rng = np.random.default_rng([cfg.seed, _SPLIT_CODE[split], index])
    num_frames = max(1, int(round(cfg.seconds * cfg.fps)))
    frames, vparams = render_frames(rng, visual, cfg.size, num_frames, cfg.fps)
    wave, aparams = render_audio(rng, audio, cfg.seconds, cfg.audio_rate)
    return frames, wave, {"visual": visual, "audio": audio, "video_params": vparams, "audio_params": aparams}


def _write_clip(args: tuple[DemoConfig, str, int, int, str]) -> dict:
    """Render and write one clip (atomically: a temporary name, then rename); returns its manifest row."""
    from .synth import write_video

    cfg, split, index, label, root = args
    mid = class_table(cfg.num_classes)[label][0]
    vid = clip_id(cfg.seed, split, index)
    path = Path(root) / split / mid / f"{vid}.mp4"
    frames, wave, params = render_clip(cfg, split, index, label)
    if not path.exists():
        # not atomic_path: the temporary must keep its .mp4 suffix, from which PyAV picks the container
        tmp = path.with_name(f".{vid}.tmp-{os.getpid()}.mp4")
        write_video(tmp, frames, cfg.fps, wave, cfg.audio_rate)
        os.replace(tmp, path)
    return {
        "split": split,
        "index": index,
        "video_id": vid,
        "path": str(path.relative_to(root)),
        "label": label,
        "mid": mid,
        "visual": params["visual"],
        "audio": params["audio"],
        "params": json.dumps({"video": params["video_params"], "audio": params["audio_params"]}, sort_keys=True),
    }


def generate_demo_dataset(
    out_dir: str | os.PathLike,
    *,
    num_classes: int = 10,
    train: int = 1000,
    test: int = 400,
    seconds: float = 2.0,
    size: int = 64,
    fps: float = 10.0,
    audio_rate: int = 16000,
    seed: int = 0,
    workers: int | None = None,
    overwrite: bool = False,
) -> DemoDataset:
    """Write the synthetic audio-visual demo data set (see the module docstring for the design).

    Args:
        out_dir: output root; gets ``train/<mid>/<id>.mp4``, ``test/<mid>/<id>.mp4``, the label CSV,
            ``clips.parquet`` and ``dataset.json``.
        num_classes: 2..10 classes (pairs of visual and audio attributes).
        train, test: number of clips per split (balanced over the classes).
        seconds, size, fps, audio_rate: clip length, square frame side in pixels, frame rate, audio rate.
        seed: content seed; the same options give the same files.
        workers: processes writing clips (default: the CPUs available; 0 or 1: in this process).
        overwrite: delete an existing data set with *other* options instead of refusing.

    Returns:
        The paths of the written data set. A complete data set with the same options is reused untouched.
    """
    cfg = DemoConfig(num_classes, train, test, float(seconds), size, float(fps), audio_rate, seed)
    cfg.validate()
    root = Path(out_dir)
    classes = class_table(num_classes)
    result = DemoDataset(
        root, root / "train", root / "test", root / LABELS_FILE, root / CLIPS_FILE, tuple(classes), cfg
    )
    done = root / DATASET_FILE
    if done.exists():
        try:
            found = json.loads(done.read_text())
        except json.JSONDecodeError:
            found = {}
        if found.get("config") == asdict(cfg):
            log.info("demo data set in %s is complete, reusing it", root)
            return result
        if not overwrite:
            raise ValueError(
                f"{root} holds a demo data set made with other options ({found.get('config')}); "
                "choose another folder or pass overwrite=True"
            )
        for sub in ("train", "test"):
            shutil.rmtree(root / sub, ignore_errors=True)
        done.unlink()

    t0 = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        for mid, _ in classes:
            folder = root / split / mid
            folder.mkdir(parents=True, exist_ok=True)
            for stale in folder.iterdir():  # left by a killed run, never under a final name
                if is_temp_name(stale.name):
                    stale.unlink(missing_ok=True)
    jobs = [
        (cfg, split, i, int(label), str(root))
        for split, n in (("train", train), ("test", test))
        for i, label in enumerate(_split_labels(cfg, split, n))
    ]
    workers = cpu_count() if workers is None else workers
    if workers <= 1 or len(jobs) < 8:
        rows = [_write_clip(job) for job in jobs]
    else:
        # fork where available: "spawn" would re-import the caller's __main__ (scripts without a main guard
        # break), and the workers only run numpy + libav, which hold no state a forked child could inherit locked.
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        with cf.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            rows = list(pool.map(_write_clip, jobs, chunksize=max(1, len(jobs) // (workers * 8))))

    def label_rows(fh) -> None:
        writer = csv.writer(fh)
        writer.writerow(["index", "mid", "display_name"])
        for i, (mid, name) in enumerate(classes):
            writer.writerow([i, mid, name])

    atomic_write(result.labels, label_rows, text=True)
    import pyarrow as pa
    import pyarrow.parquet as pq

    with atomic_path(result.clips) as tmp:
        pq.write_table(pa.Table.from_pylist(rows), tmp)
    seconds_taken = time.perf_counter() - t0
    summary = {
        "config": asdict(cfg),
        "classes": [
            {"index": i, "mid": m, "display_name": d, "visual": VISUAL_HUES[v][0], "audio": AUDIO_PATTERNS[a]}
            for i, ((m, d), (v, a)) in enumerate(zip(classes, class_attributes(num_classes), strict=True))
        ],
        "clips": {"train": train, "test": test},
        "seconds": round(seconds_taken, 2),
    }
    atomic_write(done, json.dumps(summary, indent=2))
    log.info(
        "wrote %d demo clips to %s in %.1f s (%.1f clips/s)",
        len(jobs),
        root,
        seconds_taken,
        len(jobs) / max(seconds_taken, 1e-9),
    )
    return result
