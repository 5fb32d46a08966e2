"""Sweep over every registered corruption: contract, determinism, replay, pickling, harm growing with severity."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from avtta.corruptions import (
    CorruptionOptions,
    CorruptionSpec,
    apply_corruption,
    list_corruptions,
    parse_specs,
    tables,
)
from avtta.corruptions.registry import AUDIO, AV, VIDEO
from avtta.corruptions.testing import psnr, snr

ALL = [tuple(item.split(":")) for item in list_corruptions()]
N_SWEEP_FRAMES = 2
SWEEP_SECONDS = 3

# Steps s-1 -> s where the reference's own table lowers the PSNR harm (ImageNet-C tables, KEEP spec item 28):
# glass blur 1 -> 2 and 3 -> 4 (smaller sigma / fewer passes), frost 3 -> 4 and fog 4 -> 5 (a smaller image weight
# darkens the frame, which moves it *towards* the clean one where frost / fog brighten it), fog 3 -> 4 (only the
# fractal's roughness changes), elastic 2 -> 3 and 3 -> 4 (severities 1-2 are large smooth warps with a low PSNR,
# 3-5 small local jitter). Everything else must fall (with common random numbers across severities).
PSNR_NON_MONOTONE = {
    ("video", "glass_blur"): {2, 4},
    ("video", "frost"): {4},
    ("video", "fog"): {4, 5},
    ("video", "elastic_transform"): {3, 4},
    ("av", "frost"): {4},
}


def _inputs(frames: np.ndarray, wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return frames[:N_SWEEP_FRAMES].copy(), wave[: SWEEP_SECONDS * 16000].copy()


def _is_random(modality: str, name: str) -> tuple[bool, bool]:
    if modality == "video":
        return VIDEO[name].random, False
    if modality == "audio":
        return False, AUDIO[name].random
    visual, sound = AV[name]
    return visual.random, sound.random


def test_registry_is_complete() -> None:
    assert len(VIDEO) == 15 and len(AUDIO) == 6 and len(AV) == 15
    assert list_corruptions()[:2] == ["video:gaussian_noise", "video:shot_noise"]
    assert len(list_corruptions()) == 36
    assert all(len(t) == 5 for t in (tables.GAUSSIAN_NOISE, tables.ZOOM_BLUR, tables.ENV_SNRS, tables.ELASTIC))
    # the float-rounding quirk of ImageNet-C's arange (severity 1 ends at 1.11, 12 factors)
    assert [len(z) for z in tables.ZOOM_BLUR] == [12, 16, 11, 13, 11]


@pytest.mark.parametrize(("modality", "name"), ALL, ids=[":".join(m) for m in ALL])
def test_contract_determinism_replay(modality: str, name: str, clip_frames: np.ndarray, clip_wave: np.ndarray) -> None:
    frames, wave = _inputs(clip_frames, clip_wave)
    frames_before, wave_before = frames.copy(), wave.copy()
    spec = CorruptionSpec(modality, name, 3)
    f1, w1, p1 = apply_corruption(spec, frames, wave, seed=7, key="clip/a")
    # inputs untouched, shapes and dtypes kept
    np.testing.assert_array_equal(frames, frames_before)
    np.testing.assert_array_equal(wave, wave_before)
    assert f1.shape == frames.shape and f1.dtype == np.uint8
    assert w1.shape == wave.shape and w1.dtype == np.float32
    assert np.isfinite(w1).all()
    # the corrupted modality changed, the other is returned as is
    if modality in ("video", "av"):
        assert not np.array_equal(f1, frames)
    else:
        assert f1 is frames
    if modality in ("audio", "av"):
        assert not np.array_equal(w1, wave)
    else:
        assert w1 is wave
    # same seed and key -> same output; parameters are JSON and replay exactly
    f2, w2, p2 = apply_corruption(spec, frames, wave, seed=7, key="clip/a")
    np.testing.assert_array_equal(f1, f2)
    np.testing.assert_array_equal(w1, w2)
    assert p1 == p2
    recorded = json.loads(json.dumps(p1))
    f3, w3, p3 = apply_corruption(spec, frames, wave, seed=999, key="other", params=recorded)
    np.testing.assert_array_equal(f1, f3)
    np.testing.assert_array_equal(w1, w3)
    assert json.loads(json.dumps(p3)) == recorded
    # another seed or key -> other draws for the random ones
    video_random, audio_random = _is_random(modality, name)
    f4, w4, _ = apply_corruption(spec, frames, wave, seed=8, key="clip/a")
    f5, w5, _ = apply_corruption(spec, frames, wave, seed=7, key="clip/b")
    if video_random:
        assert not np.array_equal(f1, f4) and not np.array_equal(f1, f5)
        # the frames of one clip get independent draws
        assert p1["video"]["frames"][0] != p1["video"]["frames"][1]
    if audio_random:
        assert not np.array_equal(w1, w4) and not np.array_equal(w1, w5)
    if not video_random and not audio_random:
        np.testing.assert_array_equal(f1, f4)
        np.testing.assert_array_equal(w1, w4)


def _common_draws(modality: str, name: str, severity: int, frames: np.ndarray, wave: np.ndarray, seed: int) -> dict:
    """Parameters of every severity drawn from the same generator state (common random numbers), so that the
    comparison between severities sees the table's effect, not the luck of the draw."""
    from avtta.corruptions.core import CorruptionOptions as Options
    from avtta.corruptions.registry import Context

    ctx = Context(16000, Options())
    visual, sound = {"video": (VIDEO.get(name), None), "audio": (None, AUDIO.get(name))}.get(modality) or AV[name]
    params = {}
    if visual is not None:
        rng = np.random.default_rng(seed)
        per_frame = [visual.sample(rng, severity, f.shape[:2], ctx) for f in frames]
        params["video"] = {"reference_frames": False, "reference_jpeg": False, "frames": per_frame}
    if sound is not None:
        params["audio"] = sound.sample(np.random.default_rng(seed + 1), severity, wave.size, ctx)
    return params


@pytest.mark.parametrize(("modality", "name"), ALL, ids=[":".join(m) for m in ALL])
def test_harm_grows_with_severity(modality: str, name: str, clip_frames: np.ndarray, clip_wave: np.ndarray) -> None:
    frames = clip_frames[::2] if modality != "audio" else clip_frames[:1]
    wave = clip_wave
    quality, snrs = [], []
    for severity in tables.SEVERITIES:
        spec = CorruptionSpec(modality, name, severity)
        params = _common_draws(modality, name, severity, frames, wave, seed=3)
        f, w, _ = apply_corruption(spec, frames, wave, seed=0, key="", params=params)
        quality.append(psnr(frames, f) if modality != "audio" else snr(wave, w))
        snrs.append(snr(wave, w) if modality == "av" else 0.0)
    allowed = PSNR_NON_MONOTONE.get((modality, name), set())
    for s in range(2, 6):
        if s not in allowed:
            assert quality[s - 1] < quality[s - 2] + 0.1, f"{modality}:{name} quality by severity {quality}"
    if name != "elastic_transform":
        assert quality[4] < quality[0] - 1.0, f"{modality}:{name} quality by severity {quality}"
    if modality == "av":  # the audio part too
        assert all(b < a + 0.1 for a, b in zip(snrs, snrs[1:], strict=False)), f"{name} audio SNR {snrs}"
        assert snrs[4] < snrs[0] - 3.0


def test_pickle_roundtrip(clip_frames: np.ndarray, clip_wave: np.ndarray) -> None:
    frames, wave = _inputs(clip_frames, clip_wave)
    specs = parse_specs(["video:all@2", "audio:rain@4", "av:crowd@1", "none"])
    options = CorruptionOptions(snr_db=5.0, reference_frames=True)
    specs2, options2 = pickle.loads(pickle.dumps((specs, options)))
    assert specs2 == specs and options2 == options
    for spec, spec2 in zip(specs[:3], specs2[:3], strict=True):
        a = apply_corruption(spec, frames, wave, seed=1, key="k", options=options)
        b = apply_corruption(spec2, frames, wave, seed=1, key="k", options=options2)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


def test_clean_is_identity(clip_frames: np.ndarray, clip_wave: np.ndarray) -> None:
    frames, wave = _inputs(clip_frames, clip_wave)
    (spec,) = parse_specs(["none"])
    f, w, p = apply_corruption(spec, frames, wave, seed=0, key="k")
    assert f is frames and w is wave and p == {}


def test_reference_frames_switch(clip_frames: np.ndarray, clip_wave: np.ndarray) -> None:
    frames, wave = _inputs(clip_frames, clip_wave)
    spec = CorruptionSpec("video", "contrast", 1)
    plain, _, p_plain = apply_corruption(spec, frames, wave, seed=0, key="k")
    ref, _, p_ref = apply_corruption(
        spec, frames, wave, seed=0, key="k", options=CorruptionOptions(reference_frames=True)
    )
    jpeg, _, _ = apply_corruption(
        spec, frames, wave, seed=0, key="k", options=CorruptionOptions(reference_frames=True, reference_jpeg=True)
    )
    assert ref.shape == plain.shape == jpeg.shape
    assert p_ref["video"]["reference_frames"] and not p_plain["video"]["reference_frames"]
    # the switch equals torchvision's Resize(256) + CenterCrop(224) (PIL backend) applied before the corruption
    from PIL import Image
    from torchvision import transforms

    prep = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224)])
    tv = np.stack([np.asarray(prep(Image.fromarray(f))) for f in frames])
    expected, _, _ = apply_corruption(spec, tv, wave, seed=0, key="k")
    np.testing.assert_array_equal(ref, expected)
    assert not np.array_equal(ref, plain) and not np.array_equal(jpeg, ref)
    # truncation, not rounding: contrast 0.4 maps 0 / 255 (mean 127.5) to 76.5 / 178.5 -> 76 / 178
    half = np.zeros((1, 224, 224, 3), dtype=np.uint8)
    half[:, :112] = 255
    out, _, _ = apply_corruption(spec, half, wave, seed=0, key="k")
    assert set(np.unique(out).tolist()) == {76, 178}


def test_snr_mode_and_effective_snr(clip_frames: np.ndarray, clip_wave: np.ndarray) -> None:
    frames, wave = _inputs(clip_frames, clip_wave)
    for text in ("audio:gaussian_noise@1", "audio:thunder@5", "av:wind@2"):
        (spec,) = parse_specs([text])
        _, w, p = apply_corruption(spec, frames, wave, seed=0, key="k", options=CorruptionOptions(snr_db=12.5))
        assert p["audio"]["snr_db"] == 12.5
        # the mix is scaled for exactly 12.5 dB in float64; only its float32 rounding (~1e-7 relative in power,
        # ~1e-6 dB) separates the effective SNR from it: 0.01 dB (0.23 % in power) is ample on any CPU
        assert p["audio"]["snr_db_effective"] == pytest.approx(12.5, abs=0.01)
        assert snr(wave, w) == pytest.approx(12.5, abs=0.01)
    _, _, p = apply_corruption(CorruptionSpec("audio", "traffic", 2), frames, wave, seed=0, key="k")
    assert p["audio"]["noise_source"] == "synthetic" and "snr_db" not in p["audio"]
    assert isinstance(p["audio"]["snr_db_effective"], float)


def test_seed_derivation_is_stable() -> None:
    # a stable hash (not Python's hash()): these draws must never change between processes or releases
    from avtta.corruptions import spec_rng

    rng = spec_rng(0, "clip", CorruptionSpec("video", "gaussian_noise", 1), "video")
    again = spec_rng(0, "clip", CorruptionSpec("video", "gaussian_noise", 1), "video")
    assert rng.integers(2**62) == again.integers(2**62)
    other = spec_rng(0, "clip", CorruptionSpec("video", "gaussian_noise", 2), "video")
    assert rng.integers(2**62) != other.integers(2**62)


def test_bad_inputs_raise(clip_frames: np.ndarray, clip_wave: np.ndarray) -> None:
    frames, wave = _inputs(clip_frames, clip_wave)
    spec = CorruptionSpec("video", "fog", 1)
    with pytest.raises(TypeError, match="uint8"):
        apply_corruption(spec, frames.astype(np.float32), wave, seed=0, key="k")
    with pytest.raises(TypeError, match="1-D"):
        apply_corruption(CorruptionSpec("audio", "wind", 1), frames, wave[None], seed=0, key="k")
    with pytest.raises(ValueError, match="severity"):
        CorruptionSpec("video", "fog", 6)


@pytest.mark.parametrize("modality", ["video", "audio", "av"])
def test_degenerate_inputs(modality: str) -> None:
    """Silent / empty audio, black / white / empty / non-square frames: shape kept, finite, no warning."""
    import warnings

    waves = [np.zeros(0, np.float32), np.zeros(16000, np.float32), np.full(1, 0.3, np.float32)]
    frame_sets = [np.zeros((1, 224, 224, 3), np.uint8), np.full((1, 224, 224, 3), 255, np.uint8),
                  np.zeros((0, 224, 224, 3), np.uint8), np.full((1, 240, 320, 3), 77, np.uint8)]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for spec in parse_specs([f"{modality}:all@5"]):
            for wave in waves if modality != "video" else waves[1:2]:
                for frames in frame_sets if modality != "audio" else frame_sets[:1]:
                    f, w, p = apply_corruption(spec, frames, wave, seed=0, key="k")
                    assert f.shape == frames.shape and w.shape == wave.shape, spec
                    assert np.isfinite(w).all(), spec
                    json.dumps(p)
