"""The corruption registry: one entry per (modality, name), each a sampler plus a pure kernel.

A visual op works on one uint8 H x W x 3 RGB frame; an audio op on one float32 mono waveform. ``sample`` draws every
random quantity from the generator it is given and returns it as a JSON-serialisable dict (large random fields are
recorded as a ``noise_seed`` that the kernel expands, so a record stays small); ``kernel`` is deterministic given
that dict, so recorded parameters replay exactly (torchvision v2's make_params / transform split).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

Params = dict[str, Any]


@dataclass(frozen=True)
class Context:
    """What a kernel may need beyond its parameters: the audio rate and the user's options."""

    sample_rate: int
    options: Any  # CorruptionOptions (kept untyped here to avoid an import cycle)


VisualSampler = Callable[[np.random.Generator, int, tuple[int, int], "Context"], Params]
AudioSampler = Callable[[np.random.Generator, int, int, "Context"], Params]


@dataclass(frozen=True)
class VisualOp:
    """A per-frame image corruption."""

    name: str
    sample: VisualSampler
    kernel: Callable[[np.ndarray, Params, Context], np.ndarray]  # returns values on the 0..255 scale
    random: bool = True


@dataclass(frozen=True)
class AudioOp:
    """A per-clip waveform corruption."""

    name: str
    sample: AudioSampler  # (rng, severity, n_samples, ctx)
    kernel: Callable[[np.ndarray, Params, Context], np.ndarray]
    random: bool = True


VIDEO: dict[str, VisualOp] = {}
AUDIO: dict[str, AudioOp] = {}
AV: dict[str, tuple[VisualOp, AudioOp]] = {}


def new_seed(rng: np.random.Generator) -> int:
    """A sub-seed that fits a signed 64-bit integer column (JSON / Parquet safe)."""
    return int(rng.integers(0, 2**63 - 1))
