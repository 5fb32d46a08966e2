"""The batched torch Kaldi fbank (CUDA path of the on-the-fly reader) against torchaudio's, on the CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from avtta.shards.fbank import compute_fbank, kaldi_fbank_batch
from torchaudio.compliance import kaldi

CLIP = Path(__file__).resolve().parents[2] / ".." / "shared" / "fixtures" / "audioset_clip" / "BkjpjAohg-0.wav"
# Both sides run the same torch FFT and float32 arithmetic on this CPU; they differ in how frames are laid out and in
# the order of the mel filter product (one mm per clip vs one batched matmul), which moves a mel energy by a few
# float32 ulps (relative ~1e-6), i.e. ~1e-6 after the log. 1e-5 is the bound the issue asks for, 10x that.
TOL = 1e-5


def torchaudio_fbank(wave: np.ndarray) -> torch.Tensor:
    """The reference loader's fbank, straight from torchaudio (global DC removal, reference arguments, 1024 rows)."""
    x = torch.from_numpy(wave.astype(np.float32))[None]
    x = x - x.mean()
    f = kaldi.fbank(
        x, htk_compat=True, sample_frequency=16000.0, use_energy=False, window_type="hanning", num_mel_bins=128,
        dither=0.0, frame_shift=10,
    )  # fmt: skip
    return torch.nn.functional.pad(f, (0, 0, 0, max(0, 1024 - f.shape[0])))[:1024]


def test_random_waveforms_of_several_lengths() -> None:
    rng = np.random.default_rng(0)
    lengths = (400, 401, 1600, 16000, 80_123, 163_840, 200_000)  # one window .. longer than 1024 frames
    waves = [(rng.uniform(0.01, 0.5) * rng.standard_normal(n)).astype(np.float32) for n in lengths]
    waves[3][4000:8000] = 0.0  # digital silence inside a clip: log of the float32 eps floor
    batch = kaldi_fbank_batch(waves)
    assert batch.shape == (len(waves), 1024, 128) and batch.dtype == torch.float32
    for wave, got in zip(waves, batch, strict=True):
        ref = torchaudio_fbank(wave)
        assert float((got - ref).abs().max()) <= TOL


def test_short_waveform_is_padded_as_compute_fbank() -> None:
    wave = np.linspace(-0.3, 0.3, 250, dtype=np.float32)  # shorter than a window: item 24's FIX
    got = kaldi_fbank_batch([wave])[0].numpy()
    assert np.abs(got - compute_fbank(wave)).max() <= TOL
    assert np.all(got[1:] == 0) and np.any(got[0] != 0)


@pytest.mark.skipif(not CLIP.exists(), reason="the shared AudioSet fixture clip is not available")
def test_real_clip() -> None:
    wave, rate = sf.read(CLIP, dtype="float32")
    wave = wave if wave.ndim == 1 else wave[:, 0]
    assert rate == 16000
    ref = torchaudio_fbank(wave)
    got = kaldi_fbank_batch([wave, wave[: len(wave) // 3]])  # in a batch with a shorter clip (zero padding)
    assert float((got[0] - ref).abs().max()) <= TOL
    assert float((got[1] - torchaudio_fbank(wave[: len(wave) // 3])).abs().max()) <= TOL


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="no waveform"):
        kaldi_fbank_batch([])
    with pytest.raises(ValueError, match="mono"):
        kaldi_fbank_batch([np.zeros((2, 500), np.float32)])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_equals_torchaudio_on_cpu() -> None:
    rng = np.random.default_rng(1)
    waves = [(0.2 * rng.standard_normal(n)).astype(np.float32) for n in (16000, 163_840)]
    if CLIP.exists():
        wave, _ = sf.read(CLIP, dtype="float32")
        waves.append(wave if wave.ndim == 1 else wave[:, 0])
    got = kaldi_fbank_batch(waves, device="cuda").cpu()
    for wave, g in zip(waves, got, strict=True):
        assert float((g - torchaudio_fbank(wave)).abs().max()) <= TOL
