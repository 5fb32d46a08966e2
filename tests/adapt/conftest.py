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
