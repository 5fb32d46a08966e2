"""Run the adapt tests single-threaded: the models here are narrow (width 32), so intra-op threading only adds
synchronisation cost, and on the shared 2-core machine a busy second thread made them ~8x slower.
AVTTA_TEST_THREADS=N (see tests/conftest.py) overrides it, to check the tolerances under threaded reductions."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def _single_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("AVTTA_TEST_THREADS", "1")))
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def golden_more(golden):
    """``golden_more(name, weights)``: a newer method's golden run (``golden/more/<name>.npz``) with the batches and the
    weights file it used (``golden/more/<weights>``, else ``golden/<weights>``); skips when the file is absent."""
    from avtta.adapt.testing import golden_batches, load_npz

    def load(name: str, weights: str = "weights_released_layout.pth") -> dict:
        path = golden / "more" / f"{name}.npz"
        if not path.exists():
            pytest.skip(f"../shared/golden/more/{name}.npz is absent")
        local = golden / "more" / weights
        return {
            "ref": load_npz(path),
            **golden_batches(golden),
            "weights": local if local.exists() else golden / weights,
        }

    return load


@pytest.fixture(scope="session")
def toy_catalog(tmp_path_factory, small_videos):
    """``toy_catalog(specs, waveform=False)``: a tiny real catalog of dataset ``toy`` (clean train + test sets of
    ``specs``), built once per distinct argument set."""
    from avtta.pipelines.shard_job import ShardJobConfig, run_shard_job

    built: dict = {}

    def build(specs: tuple[str, ...], waveform: bool = False):
        if (specs, waveform) not in built:
            out = tmp_path_factory.mktemp("catalog")
            common = dict(
                videos=str(small_videos), out=str(out), dataset="toy", frames=2, shard_size=4, workers=0, progress=False
            )
            run_shard_job(ShardJobConfig(split="train", corrupt=("none",), **common))
            run_shard_job(ShardJobConfig(split="test", corrupt=specs, waveform=waveform, **common))
            built[(specs, waveform)] = out
        return built[(specs, waveform)]

    return build


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """A random ``cav_mae_ft_tiny`` (2 classes) saved as an avtta checkpoint."""
    from avtta.models import create_model, save_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_checkpoint(create_model("cav_mae_ft_tiny", num_classes=2), path)
    return path
