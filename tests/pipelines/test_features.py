"""compute_fbank against torchaudio's Kaldi fbank with the reference arguments; padding; PCM16 quantisation."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
import torch
from avtta.pipelines.features import (
    FBANK_MEAN,
    FBANK_STD,
    compute_fbank,
    max_samples_for_frames,
    quantize_pcm16,
)
from avtta.shards.transforms import fill_fbank
from torchaudio.compliance import kaldi


def _wav(tmp_path, samples: np.ndarray, rate: int = 16000):
    path = tmp_path / "x.wav"
    sf.write(path, samples, rate, subtype="PCM_16")
    return path


def test_constants():
    assert FBANK_MEAN == -5.081 and FBANK_STD == 4.4849
    assert max_samples_for_frames(1024, 16000) == (1024 - 1) * 160 + 400


def test_fbank_equals_reference_on_real_wav(fixtures_dir, reference_fbank):
    wav_path = fixtures_dir / "audioset_clip" / "BkjpjAohg-0.wav"
    samples, sr = sf.read(wav_path, dtype="float32")
    ours = compute_fbank(samples, sample_rate=sr)
    ref = reference_fbank(wav_path).numpy()
    assert ours.dtype == np.float32 and ours.shape == (1024, 128)
    np.testing.assert_array_equal(ours, ref)  # exactly, before normalisation
    # 160,128 samples (10.008 s) -> 1 + (160128 - 400) // 160 = 999 real frames, then zero rows (log-mel zeros, item 25)
    assert np.all(ours[999:] == 0) and np.all(ours[998] != 0)
    norm = torch.empty(ours.shape)
    fill_fbank(norm, torch.from_numpy(ours))  # the readers' normalisation: padded rows are (0 - mean) / std
    # a zero row normalised: (0 + 5.081) / 4.4849 in float32, within allclose's defaults (rtol 1e-5 ~ 80 ulps)
    assert torch.allclose(norm[1000], torch.tensor(5.081 / 4.4849))


def test_fbank_equals_reference_on_synthetic_wavs(tmp_path, reference_fbank):
    rng = np.random.default_rng(0)
    for n in (400, 401, 16000, 200_000):  # one frame, two frames, 1 s, longer than 1024 frames (cut)
        samples = quantize_pcm16(0.3 * rng.standard_normal(n).astype(np.float32) + 0.05)  # with a DC offset
        path = _wav(tmp_path, samples)
        ours = compute_fbank(samples)
        np.testing.assert_array_equal(ours, reference_fbank(path).numpy(), err_msg=f"n={n}")
        expected_real = min(1 + (n - 400) // 160, 1024)
        assert np.all(ours[:expected_real] != 0)
        assert np.all(ours[expected_real:] == 0)


def test_fbank_target_length_and_shapes():
    x = np.linspace(-0.5, 0.5, 16000, dtype=np.float32)
    assert compute_fbank(x, target_length=50).shape == (50, 128)
    np.testing.assert_array_equal(compute_fbank(x, target_length=50), compute_fbank(x)[:50])
    assert compute_fbank(x[None]).shape == (1024, 128)  # [1, S] accepted
    assert compute_fbank(x, num_mel_bins=64, target_length=10).shape == (10, 64)


def test_fbank_short_waveform_is_padded_not_constant():
    # Deviation from the reference's 0.01 fallback (spec item 24): < 400 samples -> zero-padded to one window.
    rng = np.random.default_rng(1)
    short = (0.2 * rng.standard_normal(250)).astype(np.float32)
    out = compute_fbank(short)
    assert out.shape == (1024, 128)
    # a real frame's log-mel values are O(1-10), nowhere near the reference's constant 0.01 (allclose defaults)
    assert np.all(out[0] != 0) and not np.allclose(out[0], 0.01)
    assert np.all(out[1:] == 0)
    padded = np.concatenate([short - short.mean(), np.zeros(150, np.float32)])
    ref = kaldi.fbank(
        torch.from_numpy(padded)[None],
        htk_compat=True,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=128,
        dither=0.0,
        frame_shift=10,
    )
    # the same Kaldi fbank on the same samples, once inside a padded 1024-frame pipeline: log-mel values are O(10),
    # float32 ulp there ~1e-6; the power-spectrum reductions may be grouped otherwise, a few ulps apart
    np.testing.assert_allclose(out[0], ref[0].numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "bad, exc, text",
    [
        (np.zeros(0, np.float32), ValueError, "empty"),
        (np.array([0.0, np.nan] * 300, np.float32), ValueError, "NaN"),
        (np.zeros((2, 1000), np.float32), ValueError, "mono"),
        (np.zeros(1000, np.int16), TypeError, "float"),
    ],
)
def test_fbank_rejects_bad_input(bad, exc, text):
    with pytest.raises(exc, match=text):
        compute_fbank(bad)


def test_quantize_pcm16_matches_soundfile_write():
    rng = np.random.default_rng(2)
    x = rng.uniform(-1.2, 1.2, 200_000).astype(np.float32)  # float32, as our waveforms are
    buf = io.BytesIO()
    sf.write(buf, x, 16000, format="WAV", subtype="PCM_16")
    buf.seek(0)
    back, _ = sf.read(buf, dtype="float32")
    q = quantize_pcm16(x)
    assert q.dtype == np.float32
    np.testing.assert_array_equal(q, back)


def test_quantize_pcm16_rounding_and_clipping():
    lsb = 1 / 32768
    x = np.array([0.0, 2.5 * lsb, -2.5 * lsb, 0.7, 1.0, 1.3, -1.0, -1.3, 32767.9 * lsb], dtype=np.float64)
    floor = quantize_pcm16(x) * 32768
    np.testing.assert_array_equal(floor, [0, 2, -3, 22937, 32767, 32767, -32768, -32768, 32767])
    nearest = quantize_pcm16(x, rounding="nearest") * 32768
    np.testing.assert_array_equal(nearest, [0, 2, -2, 22938, 32767, 32767, -32768, -32768, 32767])
    grid = np.arange(-32768, 32768, 97) / 32768
    np.testing.assert_array_equal(quantize_pcm16(grid), grid.astype(np.float32))  # on-grid values unchanged
    np.testing.assert_array_equal(quantize_pcm16(grid, rounding="nearest"), grid.astype(np.float32))
    with pytest.raises(ValueError, match="rounding"):
        quantize_pcm16(grid, rounding="up")
    with pytest.raises(ValueError, match="NaN"):
        quantize_pcm16(np.array([np.nan]))
