"""Inputs for the corruption tests: the real fixture clip when ../shared is there, synthetic stand-ins otherwise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from avtta.corruptions.testing import synthetic_frames, synthetic_wave
from PIL import Image


def _fixture_clip(request: pytest.FixtureRequest) -> Path | None:
    try:
        return request.getfixturevalue("fixtures_dir") / "audioset_clip"
    except pytest.skip.Exception:
        return None


@pytest.fixture(scope="session")
def clip_frames(request: pytest.FixtureRequest) -> np.ndarray:
    """uint8 [10, 224, 224, 3]: the fixture clip's 10 evaluation frames, or synthetic frames."""
    root = _fixture_clip(request)
    if root is None:
        return synthetic_frames()
    paths = [root / "eval_frames" / f"frame_{k}" / "BkjpjAohg-0.jpg" for k in range(10)]
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])


@pytest.fixture(scope="session")
def clip_wave(request: pytest.FixtureRequest) -> np.ndarray:
    """float32 [S] 16 kHz mono: the fixture clip's reference wav, or a synthetic signal."""
    root = _fixture_clip(request)
    if root is None:
        return synthetic_wave()
    import soundfile as sf

    wave, sr = sf.read(root / "BkjpjAohg-0.wav", dtype="float32")
    assert sr == 16000
    return wave
