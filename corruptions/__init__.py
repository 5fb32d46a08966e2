"""The corruption library: Kinetics50-C / VGGSound-C video (15) and audio (6), AVRobustBench audio-visual (15).

Usage::

    from avtta.corruptions import CorruptionOptions, apply_corruption, parse_specs

    for spec in parse_specs(["video:all@5", "audio:rain@3", "none"]):
        frames_c, wave_c, params = apply_corruption(spec, frames, wave, seed=0, key="clip-001")

Each corruption is a sampler plus a pure kernel registered under (modality, name) (``registry.py``); all severity
numbers live in ``tables.py``. The draws come from a generator seeded by a stable hash of (seed, key, modality,
name, severity), and the sampled parameters are returned so a sample can be regenerated
(``apply_corruption(..., params=recorded)``). Deviations from the reference code (spec/README.md items 26-39) are
documented in corruptions/README.md and beside the numbers in ``tables.py``.
"""

from .core import (
    CLEAN,
    CorruptionOptions,
    CorruptionSpec,
    apply_corruption,
    corrupt_frame,
    corrupt_waveform,
    corrupts,
    format_spec,
    list_corruptions,
    parse_spec_text,
    parse_specs,
    spec_rng,
)
from .tables import AUDIO_ORDER, AV_ORDER, VIDEO_ORDER

__all__ = [
    "AUDIO_ORDER",
    "AV_ORDER",
    "CLEAN",
    "VIDEO_ORDER",
    "CorruptionOptions",
    "CorruptionSpec",
    "apply_corruption",
    "corrupt_frame",
    "corrupt_waveform",
    "corrupts",
    "format_spec",
    "list_corruptions",
    "parse_spec_text",
    "parse_specs",
    "spec_rng",
]
