"""Audio features as the CAV-MAE data loader computes them (spec/preprocessing.md section 2.1).

``compute_fbank`` returns the *unnormalised* Kaldi filterbank; normalisation with ``FBANK_MEAN`` /
``FBANK_STD`` happens after zero-padding (spec item 25), at model-input time, in the readers (the statistics and the
normalisation live in ``avtta.shards.transforms``; re-exported here). ``quantize_pcm16`` maps a float
waveform onto the 16-bit PCM grid, as writing and re-reading a 16-bit WAV does.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from avtta.shards.transforms import FBANK_MEAN, FBANK_STD, NUM_MEL_BINS, SAMPLE_RATE, TARGET_LENGTH
from torchaudio.compliance import kaldi

__all__ = [
    "FBANK_MEAN",
    "FBANK_STD",
    "max_samples_for_frames",
    "compute_fbank",
    "quantize_pcm16",
]

# The reference's fbank arguments; everything else is torchaudio's default (spec 2.1 step 3).
_KALDI_ARGS = dict(htk_compat=True, use_energy=False, window_type="hanning", dither=0.0, frame_shift=10)


def max_samples_for_frames(target_length: int = TARGET_LENGTH, sample_rate: int = SAMPLE_RATE) -> int:
    """Number of samples that ``target_length`` fbank frames read (``snip_edges=True``): (T-1)*hop + window."""
    window = int(sample_rate * 0.025)
    hop = int(sample_rate * 0.010)
    return (target_length - 1) * hop + window


def compute_fbank(
    waveform: np.ndarray,
    sample_rate: int = SAMPLE_RATE,
    target_length: int = TARGET_LENGTH,
    num_mel_bins: int = NUM_MEL_BINS,
) -> np.ndarray:
    """Kaldi log-mel filterbank of a mono waveform, exactly as the CAV-MAE loader computes it, unnormalised.

    Steps: subtract the mean of the whole waveform (global DC removal, done in float32 torch like the loader),
    ``torchaudio.compliance.kaldi.fbank`` with the reference arguments, then zero rows appended (or trailing rows
    cut) to ``target_length``.

    Deliberate deviation (spec item 24, FIX): a waveform shorter than one window (25 ms, 400 samples at 16 kHz)
    makes the reference's fbank raise and its loader substitute a constant ``[512, 128]`` tensor of 0.01.
    Here such a waveform is zero-padded at the end to one window, giving one real frame followed by padding
    rows. An empty or non-finite waveform raises ``ValueError``.

    Args:
        waveform: float samples in [-1, 1), shape ``[S]`` (or ``[1, S]``).
        sample_rate: sampling rate of ``waveform`` in Hz (the reference always feeds 16 kHz).
        target_length: number of output frames.
        num_mel_bins: number of mel filters.

    Returns:
        float32 array ``[target_length, num_mel_bins]``.
    """
    wav = np.asarray(waveform)
    if wav.ndim == 2 and wav.shape[0] == 1:
        wav = wav[0]
    if wav.ndim != 1:
        raise ValueError(f"compute_fbank expects a mono waveform [S], got shape {tuple(np.shape(waveform))}")
    if wav.size == 0:
        raise ValueError("compute_fbank got an empty waveform (0 samples)")
    if not np.issubdtype(wav.dtype, np.floating):
        raise TypeError(f"compute_fbank expects float samples in [-1, 1), got dtype {wav.dtype}")
    if not np.all(np.isfinite(wav)):
        raise ValueError("compute_fbank got a waveform with NaN or infinite samples")
    if target_length < 1:
        raise ValueError(f"target_length must be >= 1, got {target_length}")

    x = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))[None]
    x = x - x.mean()  # the loader's global DC removal, same op and dtype so the result is bit-identical
    window = int(sample_rate * 0.025)
    if x.shape[1] < window:
        x = torch.nn.functional.pad(x, (0, window - x.shape[1]))
    fbank = kaldi.fbank(x, sample_frequency=float(sample_rate), num_mel_bins=num_mel_bins, **_KALDI_ARGS)
    n = fbank.shape[0]
    if n < target_length:
        fbank = torch.nn.functional.pad(fbank, (0, 0, 0, target_length - n))
    elif n > target_length:
        fbank = fbank[:target_length]
    return fbank.numpy().astype(np.float32, copy=False)


def quantize_pcm16(waveform: np.ndarray, rounding: Literal["floor", "nearest"] = "floor") -> np.ndarray:
    """Put a float waveform on the 16-bit PCM grid ``k / 32768``, k in [-32768, 32767], as a WAV round trip does.

    ``rounding="floor"`` (default) reproduces ``soundfile.write(..., subtype="PCM_16")`` with the libsndfile
    shipped here (1.2.x), which the reference corruption scripts use to write corrupted audio: ``floor(x *
    32768)``, clipped to the int16 range (bit-exact for float32 input, checked in the tests; for float64 input
    libsndfile rounds values within ~1e-5 LSB of a grid point to that point, about 1 sample in 10^5). ``"nearest"``
    reproduces ffmpeg / libswresample (``lrintf(x * 32768)``, half to even), the path of the reference's
    ``extract_audio.py``. Values already on the grid are unchanged by either.

    Returns:
        float32 array of the same shape.
    """
    x = np.asarray(waveform, dtype=np.float64) * 32768.0
    if rounding == "floor":
        q = np.floor(x)
    elif rounding == "nearest":
        q = np.rint(x)
    else:
        raise ValueError(f"rounding must be 'floor' or 'nearest', got {rounding!r}")
    # NaN has no PCM value; a WAV writer would write garbage, so refuse it.
    if np.isnan(q).any():
        raise ValueError("quantize_pcm16 got NaN samples")
    return (np.clip(q, -32768, 32767) / 32768.0).astype(np.float32)
