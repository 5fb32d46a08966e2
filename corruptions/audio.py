"""Waveform corruptions: the 6 of Kinetics50-C / VGGSound-C (spec 2) and the audio parts of AVRobustBench (spec 3).

Input and output are float32 mono waveforms at ``ctx.sample_rate`` (16 kHz in the pipeline), values nominally in
[-1, 1]; results are not clipped unless the reference clamps (the pipeline clips when it quantises to PCM16, as the
reference's WAV write did).

Environmental noises come from ``options.noise_dir`` (one ``<category>.<ext>`` file or one ``<category>/`` folder
per category, any rate and channel count: downmixed to mono and resampled to the clip's rate first, FIX items 30 and
39) or, without it, from :mod:`.synthetic` (``"noise_source": "synthetic"`` in the parameters; such numbers are not
comparable with published ones).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
from avtta.shards import storage

from . import synthetic, tables
from .registry import AUDIO, AudioOp, AudioSampler, Context, Params, new_seed

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")

# ---------------------------------------------------------------------------------------------------------------------
# noise sources
# ---------------------------------------------------------------------------------------------------------------------


def noise_files(noise_dir: str | Path, category: str) -> list[str]:
    """Recordings of ``category`` under ``noise_dir`` (a folder or a URL such as ``s3://bucket/noises``), as paths
    relative to it (sorted). Listed once per process and folder: every sample draws from it, and on an object store
    a listing is a request."""
    return list(_noise_listing(str(noise_dir), category))


@functools.lru_cache(maxsize=64)
def _noise_listing(root: str, category: str) -> tuple[str, ...]:
    folder = storage.join(root, category)
    if storage.isdir(folder):
        files = sorted(f"{category}/{n}" for n in storage.listdir(folder) if Path(n).suffix.lower() in AUDIO_EXTENSIONS)
        if files:
            return tuple(files)
        raise FileNotFoundError(f"noise folder {folder} holds no audio file ({', '.join(AUDIO_EXTENSIONS)})")
    names = set(storage.listdir(root))
    for ext in AUDIO_EXTENSIONS:
        if f"{category}{ext}" in names and not storage.isdir(storage.join(root, f"{category}{ext}")):
            return (f"{category}{ext}",)
    raise FileNotFoundError(f"noise_dir {root} has neither a folder {category}/ nor a file {category}.wav")


@functools.lru_cache(maxsize=128)  # AVRobustBench's 9 folders hold ~134 files; 10 s at 16 kHz = 0.64 MB each
def load_noise(path: str, sample_rate: int) -> np.ndarray:
    """A noise recording (a local path or a URL) as float32 mono at ``sample_rate``: channels averaged, then
    resampled (torchaudio's default windowed-sinc resampler, as AVRobustBench). A remote recording is one GET, then
    decoded from memory; each process keeps the last 128 it decoded."""
    import io

    import soundfile as sf

    try:
        source = path if storage.is_local(path) else io.BytesIO(storage.read_bytes(path))
        data, rate = sf.read(source, dtype="float32", always_2d=True)
    except storage.StorageError:
        raise
    except Exception as err:  # soundfile raises its own error types
        raise ValueError(f"cannot read noise recording {path}: {err}") from err
    mono = data.mean(axis=1)
    if rate != sample_rate:
        import torch
        import torchaudio.functional as taf

        mono = taf.resample(torch.from_numpy(np.ascontiguousarray(mono)), int(rate), int(sample_rate)).numpy()
    if mono.size == 0:
        raise ValueError(f"noise recording {path} is empty")
    return mono.astype(np.float32)


def _tile(noise: np.ndarray, n: int) -> np.ndarray:
    # both references loop the recording from its start (no cross-fade, no random offset) and cut it to the clip
    reps = -(-n // noise.size)
    return np.tile(noise, reps)[:n] if reps > 1 else noise[:n]


def _sample_source(rng: np.random.Generator, category: str, ctx: Context) -> Params:
    noise_dir = getattr(ctx.options, "noise_dir", None)
    if noise_dir is None:
        return {"category": category, "noise_source": "synthetic", "noise_seed": new_seed(rng)}
    files = noise_files(noise_dir, category)
    return {"category": category, "noise_source": "recording", "noise_file": files[int(rng.integers(len(files)))]}


def _noise_signal(p: Params, n: int, ctx: Context) -> np.ndarray:
    if p["noise_source"] == "synthetic":
        return synthetic.synthesize(p["category"], n, ctx.sample_rate, p["noise_seed"])
    noise_dir = getattr(ctx.options, "noise_dir", None)
    if noise_dir is None:
        raise ValueError(f"parameters use the recording {p['noise_file']!r} but options.noise_dir is not set")
    return _tile(load_noise(storage.join(str(noise_dir), p["noise_file"]), ctx.sample_rate), n)


# ---------------------------------------------------------------------------------------------------------------------
# mixing
# ---------------------------------------------------------------------------------------------------------------------


def _energy(x: np.ndarray) -> float:
    # float64 sum of squares without BLAS (np.dot's threads stall on shared cores: 10 ms for 160k samples)
    x = x.astype(np.float64, copy=False)
    return float(np.sum(x * x))


def mix_at_snr(x: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``torchaudio.functional.add_noise``: scale the noise so that sum(x^2) / sum(n^2) is ``snr_db``; no clamp."""
    ex, en = _energy(x), _energy(noise)
    scale = 0.0 if ex == 0.0 or en == 0.0 else 10 ** ((10 * np.log10(ex / en) - snr_db) / 20)
    return (x + np.float32(scale) * noise).astype(np.float32)


def _snr_scaled_clamped(x: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    # AVRobustBench impulse / shot / speckle: mean powers, +1e-8 on the noise power, clamp to [-1, 1]
    ps = float(np.mean(x.astype(np.float64) ** 2))
    pn = float(np.mean(noise.astype(np.float64) ** 2)) + 1e-8
    scale = np.sqrt(ps / (10 ** (snr_db / 10) * pn))
    return np.clip(x + np.float32(scale) * noise, -1, 1).astype(np.float32)


def effective_snr_db(clean: np.ndarray, corrupted: np.ndarray) -> float | None:
    """10 log10(sum clean^2 / sum (corrupted - clean)^2), or None when undefined (no change, silent clip)."""
    c = clean.astype(np.float64)
    es, ed = _energy(c), _energy(corrupted.astype(np.float64) - c)
    if es == 0.0 or ed == 0.0:
        return None
    return float(10 * np.log10(es / ed))


def _target_snr(ctx: Context) -> float | None:
    value = getattr(ctx.options, "snr_db", None)
    return None if value is None else float(value)


# ---------------------------------------------------------------------------------------------------------------------
# Kinetics50-C / VGGSound-C audio
# ---------------------------------------------------------------------------------------------------------------------


def _sample_k50_gaussian(rng: np.random.Generator, severity: int, n: int, ctx: Context) -> Params:
    params: Params = {"sigma": tables.AUDIO_GAUSSIAN_NOISE[severity - 1], "noise_seed": new_seed(rng)}
    if _target_snr(ctx) is not None:
        params["snr_db"] = _target_snr(ctx)
    return params


def k50_gaussian(x: np.ndarray, p: Params, ctx: Context) -> np.ndarray:
    noise = np.random.default_rng(p["noise_seed"]).standard_normal(x.shape).astype(np.float32)
    if "snr_db" in p:
        return mix_at_snr(x, noise, p["snr_db"])
    return (x + np.float32(p["sigma"]) * noise).astype(np.float32)  # absolute level (KEEP item 30)


def _sample_gain_env(category: str) -> AudioSampler:
    def sample(rng: np.random.Generator, severity: int, n: int, ctx: Context) -> Params:
        params = {**_sample_source(rng, category, ctx), "gain_db": tables.ENV_GAIN_DB[severity - 1]}
        if _target_snr(ctx) is not None:
            params["snr_db"] = _target_snr(ctx)
        return params

    return sample


def gain_env(x: np.ndarray, p: Params, ctx: Context) -> np.ndarray:
    noise = _noise_signal(p, x.size, ctx)
    if "snr_db" in p:
        return mix_at_snr(x, noise, p["snr_db"])
    # pydub: amplify the recording (saturating at full scale) and overlay; no SNR normalisation (KEEP item 30)
    return (x + np.clip(noise * np.float32(10 ** (p["gain_db"] / 20)), -1, 1)).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------------
# AVRobustBench audio
# ---------------------------------------------------------------------------------------------------------------------


def _sample_snr_noise(table: tuple) -> AudioSampler:
    def sample(rng: np.random.Generator, severity: int, n: int, ctx: Context) -> Params:
        snr = _target_snr(ctx)
        return {"snr_db": table[severity - 1] if snr is None else snr, "noise_seed": new_seed(rng)}

    return sample


def av_gaussian(x: np.ndarray, p: Params, ctx: Context) -> np.ndarray:
    noise = np.random.default_rng(p["noise_seed"]).standard_normal(x.shape).astype(np.float32)
    return mix_at_snr(x, noise, p["snr_db"])


def av_impulse(x: np.ndarray, p: Params, ctx: Context) -> np.ndarray:
    r = np.random.default_rng(p["noise_seed"]).random(x.shape)
    half = tables.IMPULSE_AUDIO_PROB / 2
    noise = np.where(r < half, -1.0, np.where(r > 1 - half, 1.0, 0.0)).astype(np.float32)
    return _snr_scaled_clamped(x, noise, p["snr_db"])


def av_shot(x: np.ndarray, p: Params, ctx: Context) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    y = np.full(x.shape, 0.5) if hi == lo else (x.astype(np.float64) - lo) / (hi - lo)
    rate = tables.SHOT_AUDIO_RATE
    noise = np.random.default_rng(p["noise_seed"]).poisson(rate * y) / rate - y
    return _snr_scaled_clamped(x, noise.astype(np.float32), p["snr_db"])


def av_speckle(x: np.ndarray, p: Params, ctx: Context) -> np.ndarray:
    noise = np.random.default_rng(p["noise_seed"]).standard_normal(x.shape).astype(np.float32) * x
    return _snr_scaled_clamped(x, noise, p["snr_db"])


def _sample_lowpass(rng: np.random.Generator, severity: int, n: int, ctx: Context) -> Params:
    nyquist = ctx.sample_rate / 2
    cutoff = tables.LOWPASS_CUTOFF_HZ[severity - 1]
    # FIX (item 34): clamp below Nyquist (the reference's severity 1 normalises to exactly 1 and raises)
    return {"cutoff_hz": float(min(cutoff, tables.LOWPASS_MAX_FRACTION_OF_NYQUIST * nyquist))}


def av_lowpass(x: np.ndarray, p: Params, ctx: Context) -> np.ndarray:
    from scipy import signal  # here, not at the top: scipy.signal costs 0.5 s to import in every Ray worker

    b, a = signal.butter(tables.LOWPASS_ORDER, p["cutoff_hz"] / (ctx.sample_rate / 2), btype="low")
    return signal.lfilter(b, a, x.astype(np.float64)).astype(np.float32)  # causal, one pass, as the reference


def _sample_av_env(folder: str) -> AudioSampler:
    def sample(rng: np.random.Generator, severity: int, n: int, ctx: Context) -> Params:
        snr = _target_snr(ctx)
        return {**_sample_source(rng, folder, ctx), "snr_db": tables.ENV_SNRS[severity - 1] if snr is None else snr}

    return sample


def av_env(x: np.ndarray, p: Params, ctx: Context) -> np.ndarray:
    return mix_at_snr(x, _noise_signal(p, x.size, ctx), p["snr_db"])  # no clamp (KEEP item 39)


def _sample_gaps(rng: np.random.Generator, severity: int, n: int, ctx: Context) -> Params:
    fraction = tables.INTERFERENCE_MASK_FRACTION[severity - 1]
    count = 2 * severity
    gap = max(int(n * fraction) // count, ctx.sample_rate // 10)
    positions = max(n - gap, 0)  # starts in 0 .. n - gap - 1, distinct
    starts = sorted(int(s) for s in rng.choice(positions, size=min(count, positions), replace=False))
    return {"gap": int(gap), "starts": starts if positions else [0]}


def av_gaps(x: np.ndarray, p: Params, ctx: Context) -> np.ndarray:
    out = x.copy()
    for s in p["starts"]:
        out[s : s + p["gap"]] = 0.0
    return out


# ---------------------------------------------------------------------------------------------------------------------
# registration
# ---------------------------------------------------------------------------------------------------------------------

AUDIO["gaussian_noise"] = AudioOp("gaussian_noise", _sample_k50_gaussian, k50_gaussian)
for _category in tables.AUDIO_ENV_NOISES:
    AUDIO[_category] = AudioOp(_category, _sample_gain_env(_category), gain_env)

AVRB_AUDIO: dict[str, AudioOp] = {
    "gaussian": AudioOp("gaussian", _sample_snr_noise(tables.AV_GAUSSIAN_SNRS), av_gaussian),
    "impulse": AudioOp("impulse", _sample_snr_noise(tables.NOISE_SNRS), av_impulse),
    "shot": AudioOp("shot", _sample_snr_noise(tables.NOISE_SNRS), av_shot),
    "speckle": AudioOp("speckle", _sample_snr_noise(tables.NOISE_SNRS), av_speckle),
    "compression": AudioOp("compression", _sample_lowpass, av_lowpass, False),
    "interference": AudioOp("interference", _sample_gaps, av_gaps),
    **{name: AudioOp(name, _sample_av_env(folder), av_env) for name, folder in tables.AV_ENV_FOLDERS.items()},
}
