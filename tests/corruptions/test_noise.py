"""Environmental noises on real recordings (16 / 44.1 / 48 kHz, mono and stereo) and on synthetic stand-ins."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from avtta.corruptions import CorruptionOptions, CorruptionSpec, apply_corruption, tables
from avtta.corruptions import audio as audio_mod
from avtta.corruptions.synthetic import GENERATORS, synthesize
from avtta.corruptions.testing import snr


@pytest.fixture(scope="module")
def noise_root(fixtures_dir: Path) -> Path:
    root = fixtures_dir / "noise"
    if not root.is_dir():
        pytest.skip("../shared/fixtures/noise is absent")
    return root


@pytest.fixture(scope="module")
def k50_noise_dir(noise_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Kinetics50-C style noise_dir mixing both layouts: single files and folders, of every rate and layout."""
    d = tmp_path_factory.mktemp("k50_noise")
    os.symlink(next((noise_root / "crackling_fire_and_siren").glob("*.wav")), d / "traffic.wav")  # 44.1 kHz mono
    os.symlink(noise_root / "crowd_speech", d / "crowd")  # folder, 48 kHz stereo
    os.symlink(noise_root / "rain", d / "rain")  # folder, 44.1 kHz mono
    os.symlink(next((noise_root / "underwater").glob("*.wav")), d / "thunder.wav")  # 16 kHz mono
    os.symlink(noise_root / "wind", d / "wind")
    return d


def _ulp(magnitude: float) -> float:
    """One float32 ulp at ``magnitude``: a float32 rounding step there errs by at most half of it."""
    return float(np.spacing(np.float32(magnitude)))


def _expected_noise(path: Path, n: int) -> np.ndarray:
    """Independent path: soundfile -> channel mean -> torchaudio resample to 16 kHz -> loop from the start."""
    import soundfile as sf
    import torch
    import torchaudio.functional as taf

    data, rate = sf.read(path, dtype="float32", always_2d=True)
    mono = torch.from_numpy(data.mean(axis=1))
    if rate != 16000:
        mono = taf.resample(mono, rate, 16000)
    mono = mono.numpy()
    return np.concatenate([mono] * (n // mono.size + 1))[:n]


@pytest.mark.parametrize("name", tables.AV_ENV_FOLDERS)
def test_av_env_noise_on_recordings(name: str, noise_root: Path, clip_wave: np.ndarray) -> None:
    options = CorruptionOptions(noise_dir=str(noise_root))
    spec = CorruptionSpec("av", name, 3)
    frames = np.zeros((1, 224, 224, 3), dtype=np.uint8) + 128
    _, out, params = apply_corruption(spec, frames, clip_wave, seed=0, key="k", options=options)
    p = params["audio"]
    assert p["noise_source"] == "recording"
    assert p["noise_file"].startswith(tables.AV_ENV_FOLDERS[name] + "/")
    assert out.shape == clip_wave.shape and out.dtype == np.float32 and np.isfinite(out).all()
    # mixed at the table's SNR (10 dB at severity 3), computed over the whole clip as torchaudio's add_noise; the
    # effective SNR differs only by the float32 rounding of the mix (~1e-7 relative power, ~1e-6 dB): 0.01 dB (0.23 %
    # in power) is ample on any CPU and still small against a mis-scaled mix
    assert p["snr_db"] == 10.0 and p["snr_db_effective"] == pytest.approx(10.0, abs=0.01)
    # the added signal is the recording, downmixed, resampled and looped, up to one scale factor (fitted in float64:
    # a float32 dot over 160k samples errs by ~1e-5 relative and by a CPU-dependent amount, which broke this test)
    added = out.astype(np.float64) - clip_wave  # exact: both are float32
    expected = _expected_noise(noise_root / p["noise_file"], clip_wave.size).astype(np.float64)
    scale = np.dot(added, expected) / np.dot(expected, expected)
    # Bound: the library's float32 mix rounds twice (s * n, then x + s n), each by <= half an ulp of the largest
    # operand M = max|x| + max|s n|, so added = s n + r with |r| <= R = ulp(M). The fitted scale absorbs
    # <r, n> / <n, n>, which moves a sample by <= R * sum|n| * max|n| / sum n^2. The noise itself is computed by the
    # same torchaudio resampler on the same float32 samples in this process, hence identically.
    rounding = _ulp(np.abs(clip_wave).max() + np.abs(scale * expected).max())
    fit = np.abs(expected).sum() * np.abs(expected).max() / np.dot(expected, expected)
    np.testing.assert_allclose(added, scale * expected, rtol=0, atol=rounding * (1 + fit))


@pytest.mark.parametrize("name", tables.AUDIO_ENV_NOISES)
def test_k50_env_noise_gain_on_recordings(name: str, k50_noise_dir: Path, clip_wave: np.ndarray) -> None:
    options = CorruptionOptions(noise_dir=str(k50_noise_dir))
    for severity in (1, 5):
        spec = CorruptionSpec("audio", name, severity)
        frames = np.zeros((1, 224, 224, 3), dtype=np.uint8)
        _, out, params = apply_corruption(spec, frames, clip_wave, seed=1, key="k", options=options)
        p = params["audio"]
        gain = 10 ** (tables.ENV_GAIN_DB[severity - 1] / 20)
        expected = np.clip(_expected_noise(k50_noise_dir / p["noise_file"], clip_wave.size) * gain, -1, 1)
        # Bound: four float32 roundings, each <= half an ulp of the largest operand M = max|x| + max|clip(g n)|:
        # the gain cast to float32 (relative, on g n), g n, x + g n, and out - x here (float32 minus float32).
        rounding = _ulp(np.abs(clip_wave).max() + np.abs(expected).max())
        np.testing.assert_allclose(out - clip_wave, expected, rtol=0, atol=4 * rounding / 2)
        # the recorded SNR is the same float64 formula over the same arrays: 1e-3 dB is ~2.3e-4 relative in power,
        # orders above float64 summation error (~1e-16 x log n)
        assert p["snr_db_effective"] == pytest.approx(snr(clip_wave, out), abs=1e-3)
        # replay from the recorded parameters
        _, again, _ = apply_corruption(spec, frames, clip_wave, seed=9, key="x", options=options, params=params)
        np.testing.assert_array_equal(out, again)


def test_stereo_48k_noise_is_downmixed_and_looped(noise_root: Path) -> None:
    path = next((noise_root / "crowd_speech").glob("*.wav"))
    noise = audio_mod.load_noise(str(path), 16000)
    import soundfile as sf

    info = sf.info(path)
    assert info.channels == 2 and info.samplerate == 48000
    assert noise.ndim == 1 and abs(noise.size - round(info.frames / 3)) <= 1
    looped = audio_mod._tile(noise, 160000)
    assert looped.size == 160000
    np.testing.assert_array_equal(looped[noise.size : 2 * noise.size], noise)


def test_missing_category_is_an_error(tmp_path: Path, clip_wave: np.ndarray) -> None:
    options = CorruptionOptions(noise_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="thunder"):
        apply_corruption(CorruptionSpec("audio", "thunder", 1), None, clip_wave, seed=0, key="k", options=options)
    (tmp_path / "snow").mkdir()
    with pytest.raises(FileNotFoundError, match="no audio file"):
        apply_corruption(CorruptionSpec("av", "snow", 1), np.zeros((1, 224, 224, 3), np.uint8), clip_wave, seed=0,
                         key="k", options=options)  # fmt: skip


@pytest.mark.parametrize("kind", sorted(GENERATORS))
def test_synthetic_noises(kind: str) -> None:
    a = synthesize(kind, 32000, 16000, seed=1)
    b = synthesize(kind, 32000, 16000, seed=1)
    c = synthesize(kind, 32000, 16000, seed=2)
    assert a.dtype == np.float32 and a.shape == (32000,) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # synthesize() scales to the table's RMS in float64, then casts to float32: <= 2^-24 = 6e-8 relative per sample,
    # so on the RMS; 1e-6 is 16x that (measured: <= 5e-9)
    assert np.sqrt(np.mean(a.astype(np.float64) ** 2)) == pytest.approx(tables.SYNTHETIC_NOISE_RMS, rel=1e-6)
