"""Fixtures of the pipeline tests."""

from __future__ import annotations

import pytest
import soundfile as sf
import torch
from torchaudio.compliance import kaldi


def _reference_fbank(wav_path) -> torch.Tensor:
    """The CAV-MAE loader's steps 1-4 (spec/preprocessing.md 2.1), written out independently of avtta."""
    # torchaudio.load (which needs torchcodec in torchaudio 2.9+) returns PCM16 / 32768 as float32, like soundfile.
    samples, sr = sf.read(wav_path, dtype="float32", always_2d=True)
    waveform = torch.from_numpy(samples.T.copy())
    waveform = waveform - waveform.mean()
    fbank = kaldi.fbank(
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
    return torch.nn.functional.pad(fbank, (0, 0, 0, p)) if p > 0 else fbank[:1024]


@pytest.fixture(scope="session")
def reference_fbank():
    """A function: wav path -> the reference loader's fbank [1024, 128] (before normalisation)."""
    return _reference_fbank
