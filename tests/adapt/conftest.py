"""Run the adapt tests single-threaded: the models here are narrow (width 32), so intra-op threading only adds
synchronisation cost, and on the shared 2-core machine a busy second thread made them ~8x slower."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def _single_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
