"""Shared test fixtures.

``shared`` points at ../shared beside the clone (spec, golden outputs, real fixtures); tests that need it
skip cleanly when it is absent (a user's clone does not have it).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("AVTTA_SHARED", ROOT.parent / "shared"))

# Two cores: keep intra-op threads bounded so parallel test processes do not oversubscribe.
torch.set_num_threads(min(2, os.cpu_count() or 1))


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
