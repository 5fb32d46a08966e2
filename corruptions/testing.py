"""Test builders and harm metrics shipped with the package (synthetic inputs when no real clip is at hand)."""

from __future__ import annotations

import numpy as np


def synthetic_frames(n: int = 10, size: int = 224, seed: int = 0) -> np.ndarray:
    """Natural-looking enough frames: colour gradients, texture at several scales (a 1/f-like spectrum, as natural
    images have) and a few solid shapes with soft edges."""
    import cv2

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    frames = []
    for _ in range(n):
        img = np.stack([0.2 + 0.6 * xx, 0.3 + 0.4 * yy, 0.5 + 0.3 * (xx - yy)], axis=-1).astype(np.float32)
        for sigma, amplitude in ((1.0, 0.8), (3.0, 1.2), (8.0, 2.0)):
            texture = cv2.GaussianBlur(rng.random((size, size, 3)).astype(np.float32), (0, 0), sigma) - 0.5
            img += amplitude * texture / max(float(texture.std()) * 8, 1e-6)
        for _ in range(6):
            x0, y0 = rng.integers(0, size - 40, size=2)
            w, h = rng.integers(10, 60, size=2)
            img[y0 : y0 + h, x0 : x0 + w] = rng.random(3)
        img = cv2.GaussianBlur(img, (0, 0), 0.7)
        frames.append((np.clip(img, 0, 1) * 255).astype(np.uint8))
    return np.stack(frames)


def synthetic_wave(seconds: float = 10.0, sr: int = 16000, seed: int = 0) -> np.ndarray:
    """A speech-like test signal: harmonic tones under a syllable-rate envelope plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    tone = sum(np.sin(2 * np.pi * f * t) / k for k, f in enumerate((180, 360, 540, 720), start=1))
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2
    return (0.2 * tone * env / 2 + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def psnr(clean: np.ndarray, corrupted: np.ndarray) -> float:
    """Peak signal-to-noise ratio (dB) of uint8-scale images."""
    mse = np.mean((clean.astype(np.float64) - corrupted.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse)) if mse > 0 else float("inf")


def snr(clean: np.ndarray, corrupted: np.ndarray) -> float:
    """Signal-to-noise ratio (dB) of a corrupted waveform against the clean one."""
    diff = corrupted.astype(np.float64) - clean
    return float(10 * np.log10(np.sum(clean.astype(np.float64) ** 2) / np.sum(diff**2)))
