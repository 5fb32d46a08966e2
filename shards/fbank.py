"""The audio side of the CAV-MAE input transforms: the 16 kHz PCM16 waveform and its Kaldi fbank.

Here, below the readers, so that both the write path (``avtta shard``, ``avtta import``: :mod:`avtta.pipelines.features`
re-exports these functions) and a reader that corrupts the clean set's stored waveform while reading
(``avtta.manifests.onthefly``) compute the fbank with one function; ``shards/`` imports no other avtta package
(``tests/test_layering.py``), so the function must live here for a reader to use it.

* :func:`compute_fbank`: torchaudio's Kaldi fbank with the reference's arguments, one clip, on the CPU;
* :func:`kaldi_fbank_batch`: the same computation in torch for a batch of waveforms, on any device (CUDA: the
  on-the-fly reader computes a batch's fbanks on the GPU); equal to :func:`compute_fbank` to float32 rounding;
* :func:`quantize_pcm16` (the PCM16 grid, as writing a 16-bit WAV) and :func:`decode_flac` (the ``wav.flac``
  member).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torchaudio.compliance import kaldi

from .schema import NUM_MEL_BINS, SAMPLE_RATE, TARGET_LENGTH

__all__ = [
    "compute_fbank",
    "decode_flac",
    "kaldi_fbank_batch",
    "max_samples_for_frames",
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


def decode_flac(data: bytes | bytearray | memoryview) -> tuple[np.ndarray, int]:
    """A ``wav.flac`` member -> (float32 mono waveform ``k / 32768``, sample rate): exactly the samples written."""
    import soundfile as sf

    wave, rate = sf.read(io.BytesIO(bytes(data)), dtype="float32", always_2d=False)
    if wave.ndim != 1:
        raise ValueError(f"the waveform member holds {wave.shape[1]} channels, not one")
    return wave, int(rate)


_MEL_BANKS: dict[tuple[int, int, float, str], torch.Tensor] = {}


def _mel_banks(num_mel_bins: int, padded: int, sample_rate: float, device: torch.device) -> torch.Tensor:
    """torchaudio's Kaldi mel filters ``[padded // 2 + 1, num_mel_bins]`` (zero column for Nyquist), cached."""
    key = (num_mel_bins, padded, float(sample_rate), str(device))
    if key not in _MEL_BANKS:
        banks, _ = kaldi.get_mel_banks(num_mel_bins, padded, float(sample_rate), 20.0, 0.0, 100.0, -500.0, 1.0)
        banks = torch.nn.functional.pad(banks, (0, 1))  # the FFT's Nyquist bin has no filter
        _MEL_BANKS[key] = banks.t().contiguous().to(device)
    return _MEL_BANKS[key]


def kaldi_fbank_batch(
    waveforms: Sequence[np.ndarray | torch.Tensor] | torch.Tensor,
    sample_rate: int = SAMPLE_RATE,
    target_length: int = TARGET_LENGTH,
    num_mel_bins: int = NUM_MEL_BINS,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """:func:`compute_fbank` of a batch of mono waveforms at once, on ``device``: float32 ``[B, target_length, bins]``.

    The steps are those torchaudio's ``kaldi.fbank`` takes with the reference's arguments (25 ms Hanning windows
    every 10 ms, ``snip_edges``, no dither, per-frame DC removal, pre-emphasis 0.97, 512-point power spectrum, mel
    filters from ``kaldi.get_mel_banks``, log floored at float32 eps), after the loader's global DC removal and the
    one-window padding of item 24; waveforms of different lengths are zero-padded and their frames past their own
    end are zero rows, as :func:`compute_fbank` pads. The only difference is float32 rounding of the FFT and the
    filter product (tests: 1e-5 against torchaudio on random and real waveforms).
    """
    dev = torch.device(device) if device is not None else None
    waves = [torch.as_tensor(np.asarray(w, dtype=np.float32) if not torch.is_tensor(w) else w) for w in waveforms]
    if not waves:
        raise ValueError("kaldi_fbank_batch got no waveform")
    window = int(sample_rate * 0.025)
    shift = int(sample_rate * 0.010)
    padded = 1 << (window - 1).bit_length()  # round_to_power_of_two
    lengths = []
    for w in waves:
        if w.ndim != 1 or w.numel() == 0:
            raise ValueError(f"kaldi_fbank_batch expects non-empty mono waveforms [S], got shape {tuple(w.shape)}")
        lengths.append(max(int(w.numel()), window))
    longest = max(lengths)
    x = torch.zeros((len(waves), longest), dtype=torch.float32, device=dev)
    for b, w in enumerate(waves):
        w = w.to(device=x.device, dtype=torch.float32)
        x[b, : w.numel()] = w - w.mean()  # the loader's global DC removal, over the clip's own samples
    frames = x.unfold(1, window, shift)  # [B, M, window], snip_edges=True
    frames = frames - frames.mean(dim=2, keepdim=True)  # remove_dc_offset
    prev = torch.cat([frames[:, :, :1], frames[:, :, :-1]], dim=2)  # replicate padding, as kaldi's pre-emphasis
    frames = frames - 0.97 * prev
    frames = frames * torch.hann_window(window, periodic=False, device=x.device, dtype=torch.float32)
    frames = torch.nn.functional.pad(frames, (0, padded - window))
    power = torch.fft.rfft(frames).abs().pow(2.0)
    mel = torch.matmul(power, _mel_banks(num_mel_bins, padded, sample_rate, x.device))
    fbank = torch.clamp_min(mel, torch.finfo(torch.float32).eps).log()
    counts = torch.tensor([1 + (n - window) // shift for n in lengths], device=x.device)
    rows = torch.arange(fbank.shape[1], device=x.device)
    fbank = fbank * (rows[None, :] < counts[:, None]).unsqueeze(2)  # frames past a clip's end: zero rows
    if fbank.shape[1] < target_length:
        fbank = torch.nn.functional.pad(fbank, (0, 0, 0, target_length - fbank.shape[1]))
    return fbank[:, :target_length]
