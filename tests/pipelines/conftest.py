from __future__ import annotations

import os

import pytest

from avtta.pipelines.synth import write_test_video


@pytest.fixture(scope="session")
def small_videos(tmp_path_factory):
    """Six short real mp4 clips (H.264 + AAC) in two class folders."""
    root = tmp_path_factory.mktemp("videos")
    for i in range(6):
        cls = "dog" if i % 2 else "cat"
        (root / cls).mkdir(exist_ok=True)
        write_test_video(root / cls / f"vid{i:02d}.mp4", seconds=1.5, fps=12, size=(80, 60), audio_rate=22050,
                         seed=i)
    return root


@pytest.fixture(scope="session")
def ray_local():
    """One embedded local Ray for the whole session (ray.init is slow)."""
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()
