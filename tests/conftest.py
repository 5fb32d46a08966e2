"""Shared test fixtures.

``shared`` points at ../shared beside the clone (spec, golden outputs, real fixtures); tests that need it
skip cleanly when it is absent (a user's clone does not have it).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("AVTTA_SHARED", ROOT.parent / "shared"))

# One intra-op thread by default: the models in tests are small, where threading costs more than it gains (up to 8x
# slower on a loaded 2-core machine). AVTTA_TEST_THREADS=N runs the suite with N threads instead, to check that every
# tolerance also holds with the other reduction orders that threading brings.
TEST_THREADS = int(os.environ.get("AVTTA_TEST_THREADS", "1"))
torch.set_num_threads(TEST_THREADS)


@pytest.fixture(scope="session")
def shared() -> Path:
    """The ../shared folder, or skip."""
    if not (SHARED / "spec").is_dir():
        pytest.skip("../shared is absent (spec, golden outputs and fixtures live there)")
    return SHARED


@pytest.fixture(scope="session")
def golden(shared: Path) -> Path:
    path = shared / "golden"
    if not (path / "official_outputs.npz").exists():
        pytest.skip("../shared/golden is absent")
    return path


@pytest.fixture(scope="session")
def fixtures_dir(shared: Path) -> Path:
    path = shared / "fixtures"
    if not path.is_dir():
        pytest.skip("../shared/fixtures is absent")
    return path


@pytest.fixture(scope="session")
def small_videos(tmp_path_factory):
    """Six short real mp4 clips (H.264 + AAC) in two class folders."""
    from avtta.pipelines.synth import write_test_video

    root = tmp_path_factory.mktemp("videos")
    for i in range(6):
        cls = "dog" if i % 2 else "cat"
        (root / cls).mkdir(exist_ok=True)
        write_test_video(root / cls / f"vid{i:02d}.mp4", seconds=1.5, fps=12, size=(80, 60), audio_rate=22050, seed=i)
    return root


@pytest.fixture(scope="session")
def ray_local():
    """One embedded local Ray for the whole session (ray.init is slow)."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


class RayCluster:
    """A real 2-node Ray cluster on 127.0.0.1 started with `ray start`; its processes are found by its temp dir."""

    def __init__(self, port: int = 6390):
        import tempfile

        self.port = port
        self.tmp = tempfile.mkdtemp(prefix="avtta-rc-", dir="/tmp")  # short: Ray's socket paths are length-limited
        self.env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
        self.ray = str(Path(sys.executable).with_name("ray"))

    def start(self) -> str:
        common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"]
        head = subprocess.run(
            [
                self.ray,
                "start",
                "--head",
                f"--port={self.port}",
                f"--temp-dir={self.tmp}",
                "--include-dashboard=false",
                *common,
            ],
            env=self.env,
            capture_output=True,
            text=True,
        )
        assert head.returncode == 0, head.stderr[-2000:]
        worker = subprocess.run(
            [self.ray, "start", f"--address=127.0.0.1:{self.port}", *common],
            env=self.env,
            capture_output=True,
            text=True,
        )
        assert worker.returncode == 0, worker.stderr[-2000:]
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        # `ray stop` would kill every Ray process of the machine (other tests' too): kill only this cluster's
        subprocess.run(["pkill", "-9", "-f", self.tmp], capture_output=True)
        subprocess.run(["pkill", "-9", "-f", f"127.0.0.1:{self.port}"], capture_output=True)
        import shutil

        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_cluster():
    """Address of a real 2-node Ray cluster on 127.0.0.1 (`ray start --head`, then `ray start --address`)."""
    # AVTTA_TEST_RAY_PORT: lets two suite runs on one machine (e.g. under two CPU settings) use separate clusters
    cluster = RayCluster(port=int(os.environ.get("AVTTA_TEST_RAY_PORT", "6390")))
    try:
        yield cluster.start()
    finally:
        cluster.stop()
