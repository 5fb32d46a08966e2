"""Fixtures of the model tests."""

from __future__ import annotations

import pytest
import torch
from avtta.models import CAVMAEFT, create_model


@pytest.fixture(scope="session")
def base_model() -> CAVMAEFT:
    """The full-size released architecture (50 classes). Tests may load weights into it, never change its structure."""
    return create_model("cav_mae_ft_base")


@pytest.fixture(autouse=True)
def one_thread():
    """Run the model tests single-threaded: their tensors are small, and on a shared 2-core machine OpenMP
    synchronisation of tiny ops costs more than the second thread gains (measured ~15x slower under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
