"""Procedurally synthesised environmental noises, used when no ``noise_dir`` of real recordings is given.

Each generator makes a plausible stand-in of one recording category (spectral shape plus a temporal structure:
gusts, droplets, passing cars, babble, ...) from an explicit generator, at ``tables.SYNTHETIC_NOISE_RMS``. They
are NOT the recordings of the published benchmarks: numbers obtained with them are not comparable with published
ones (the corruption parameters record ``"noise_source": "synthetic"``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from . import tables


def _norm(x: np.ndarray) -> np.ndarray:
    """Unit standard deviation (unchanged when constant, e.g. a one-sample clip)."""
    std = float(np.std(x))
    return x / std if std > 0 else x


def _shaped(rng: np.random.Generator, n: int, sr: int, gain: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """White noise filtered in the frequency domain by ``gain(freq_hz)``."""
    spec = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / sr)
    return np.fft.irfft(spec * gain(freqs), n)


def _band(lo: float, hi: float, slope: float = 0.0) -> Callable[[np.ndarray], np.ndarray]:
    def gain(f: np.ndarray) -> np.ndarray:
        g = ((f >= lo) & (f <= hi)).astype(np.float64)
        if slope:
            g *= np.maximum(f, 1.0) ** (-slope / 2)  # power ~ f^-slope
        return g

    return gain


def _envelope(rng: np.random.Generator, n: int, sr: int, rate_hz: float, depth: float) -> np.ndarray:
    """A smooth random positive envelope varying at about ``rate_hz``."""
    knots = max(int(n / sr * rate_hz) + 2, 2)
    values = 1.0 + depth * rng.uniform(-1, 1, size=knots)
    return np.interp(np.linspace(0, knots - 1, n), np.arange(knots), np.maximum(values, 0.05))


def _events(rng: np.random.Generator, n: int, sr: int, rate_hz: float, make: Callable[[], np.ndarray]) -> np.ndarray:
    """Sum of short events at Poisson times."""
    out = np.zeros(n)
    count = rng.poisson(rate_hz * n / sr)
    for start in rng.integers(0, max(n, 1), size=count):
        ev = make()
        end = min(n, start + ev.size)
        out[start:end] += ev[: end - start]
    return out


def _decaying_tone(rng: np.random.Generator, sr: int, f_lo: float, f_hi: float, dur: float, chirp: float) -> np.ndarray:
    t = np.arange(int(dur * sr)) / sr
    f0 = rng.uniform(f_lo, f_hi)
    phase = 2 * np.pi * (f0 * t + 0.5 * chirp * f0 * t * t)
    return np.sin(phase) * np.exp(-t / (dur / 5)) * rng.uniform(0.3, 1.0)


def _click(rng: np.random.Generator, sr: int, dur: float = 0.004) -> np.ndarray:
    m = max(int(dur * sr), 2)
    return rng.standard_normal(m) * np.exp(-np.arange(m) / (m / 4)) * rng.uniform(0.2, 1.0)


def _babble(rng: np.random.Generator, n: int, sr: int, voices: int) -> np.ndarray:
    out = np.zeros(n)
    for _ in range(voices):
        f1 = rng.uniform(300, 900)
        voice = _shaped(rng, n, sr, lambda f, f1=f1: np.exp(-(((f - f1) / 250) ** 2)) + 0.5 * _band(900, 3400)(f))
        out += voice * _envelope(rng, n, sr, rate_hz=rng.uniform(3, 6), depth=1.0) ** 2
    return out


def traffic(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    rumble = _shaped(rng, n, sr, _band(20, 400, slope=2.0))
    tyres = _shaped(rng, n, sr, _band(300, 4000, slope=1.0))
    passes = np.zeros(n)
    t = np.arange(n) / sr
    for centre in rng.uniform(0, n / sr, size=max(1, rng.poisson(n / sr / 3))):
        passes += np.exp(-(((t - centre) / rng.uniform(0.8, 2.0)) ** 2))
    return _norm(rumble) + (0.3 + passes) * _norm(tyres)


def crowd(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    return _babble(rng, n, sr, voices=10)


def rain(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    bed = _shaped(rng, n, sr, _band(200, 7900, slope=0.5))
    drops = _events(rng, n, sr, 300.0, lambda: _click(rng, sr))
    return _norm(bed) + 2.0 * _norm(drops)


def thunder(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    rumble = _shaped(rng, n, sr, _band(15, 250, slope=2.0))
    t = np.arange(n) / sr
    env = np.full(n, 0.05)
    for start in rng.uniform(0, max(n / sr - 1, 0.1), size=1 + rng.poisson(0.15 * n / sr)):
        env += np.where(t >= start, np.exp(-(t - start) / rng.uniform(1.0, 3.0)), 0.0)
    return rumble * env


def wind(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    return _shaped(rng, n, sr, _band(10, 1200, slope=1.5)) * _envelope(rng, n, sr, rate_hz=0.7, depth=0.8)


def water_drops(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    drops = _events(rng, n, sr, 8.0, lambda: _decaying_tone(rng, sr, 800, 3000, 0.08, chirp=4.0))
    return drops + 0.05 * rng.standard_normal(n)


def underwater(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    murmur = _shaped(rng, n, sr, _band(20, 700, slope=1.0))
    bubbles = _events(rng, n, sr, 15.0, lambda: _decaying_tone(rng, sr, 300, 1200, 0.05, chirp=6.0))
    return _norm(murmur) + _norm(bubbles)


def concert(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    t = np.arange(n) / sr
    music = np.zeros(n)
    seg = int(0.5 * sr)
    for start in range(0, n, seg):
        root = 110 * 2 ** (rng.integers(0, 12) / 12)
        idx = slice(start, min(n, start + seg))
        for ratio in (1.0, 1.25, 1.5, 2.0):
            for harmonic in (1, 2, 3):
                music[idx] += np.sin(2 * np.pi * root * ratio * harmonic * t[idx]) / harmonic
    babble = crowd(rng, n, sr)
    return _norm(music) + 0.5 * _norm(babble)


def fire_and_siren(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    t = np.arange(n) / sr
    freq = 900 + 300 * np.sin(2 * np.pi * 0.5 * t)
    siren = np.sin(2 * np.pi * np.cumsum(freq) / sr)
    crackle = _events(rng, n, sr, 40.0, lambda: _click(rng, sr, 0.002))
    return siren + 3.0 * _norm(crackle)


def snow(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    hiss = _shaped(rng, n, sr, _band(100, 6000, slope=1.0)) * _envelope(rng, n, sr, rate_hz=0.5, depth=0.6)
    crunch = _events(rng, n, sr, 2.0, lambda: _shaped(rng, int(0.15 * sr), sr, _band(500, 5000)))
    return _norm(hiss) + _norm(crunch)


def frost(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    cracks = _events(rng, n, sr, 25.0, lambda: _shaped(rng, int(0.01 * sr), sr, _band(2000, 7900)))
    breeze = _shaped(rng, n, sr, _band(10, 800, slope=1.5))
    return _norm(cracks) + 0.5 * _norm(breeze)


GENERATORS: dict[str, Callable[[np.random.Generator, int, int], np.ndarray]] = {
    "traffic": traffic,
    "crowd": crowd,
    "rain": rain,
    "thunder": thunder,
    "wind": wind,
    "snow": snow,
    "frost": frost,
    "water_drops": water_drops,
    "underwater": underwater,
    "concert": concert,
    "crackling_fire_and_siren": fire_and_siren,
    "crowd_speech": crowd,
}


def synthesize(kind: str, n_samples: int, sample_rate: int, seed: int) -> np.ndarray:
    """A synthetic recording of ``kind`` (float32 mono, RMS ``tables.SYNTHETIC_NOISE_RMS``)."""
    if kind not in GENERATORS:
        raise ValueError(f"no synthetic noise of kind {kind!r}; known: {sorted(GENERATORS)}")
    rng = np.random.default_rng(seed)
    x = GENERATORS[kind](rng, max(int(n_samples), 1), int(sample_rate))
    rms = float(np.sqrt(np.mean(x * x)))
    if rms > 0:
        x = x * (tables.SYNTHETIC_NOISE_RMS / rms)
    return x.astype(np.float32)
