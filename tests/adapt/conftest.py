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
