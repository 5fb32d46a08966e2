"""The test-time adaptation methods (the library: torch and timm only) and their registry.

One file per method: a config dataclass and a :class:`~.base.TTAMethod` subclass that implements
``forward_and_adapt`` and declares what it needs from the run (``source_data``, ``presets``, ``protocol_overrides``,
``config_for_model``; see ``base.py``). Register it in ``_METHODS`` below. The model is reached only through its
contract (``encode``, ``fuse_pool``, ``forward_head``, ``get_classifier``, ``depth``, ``embed_dim``, ``num_classes``,
``select_parameters``; ``models/cav_mae.py``). ``create_method(name, model, **config)`` builds one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from torch import nn

from .abpem import ABPEM, ABPEMConfig
from .adapgc import AdaPGC, AdaPGCConfig
from .audio_assist import AudioAssist, AudioAssistConfig
from .base import PRECISIONS, MethodConfig, RunContext, SourceData, TTAMethod, derive_seed, take_clips
from .brimpr import BriMPR, BriMPRConfig, SourceStats, compute_source_stats, load_reference_source_stats
from .dasp import DASP, DASPConfig
from .deyo import DeYO, DeYOConfig
from .eata import EATA, EATAConfig, FisherTable, compute_fisher
from .pta import PTA, PTAConfig
from .read import READ, READConfig
from .sar import SAR, SARConfig
from .source import Source, SourceConfig
from .sumi import SuMi, SuMiConfig
from .t3a import T3A, T3AConfig
from .tent import Tent, TentConfig
from .tsa import TSA, TSAConfig

__all__ = [
    "ABPEM",
    "ABPEMConfig",
    "AdaPGC",
    "AdaPGCConfig",
    "AudioAssist",
    "AudioAssistConfig",
    "DASP",
    "EATA",
    "TSA",
    "PRECISIONS",
    "READ",
    "SAR",
    "T3A",
    "BriMPR",
    "BriMPRConfig",
    "DeYO",
    "DASPConfig",
    "DeYOConfig",
    "EATAConfig",
    "FisherTable",
    "MethodConfig",
    "PTA",
    "PTAConfig",
    "READConfig",
    "SARConfig",
    "Source",
    "SourceConfig",
    "RunContext",
    "SourceData",
    "SourceStats",
    "SuMi",
    "SuMiConfig",
    "T3AConfig",
    "TSAConfig",
    "TTAMethod",
    "Tent",
    "TentConfig",
    "compute_fisher",
    "compute_source_stats",
    "create_method",
    "derive_seed",
    "get_method_class",
    "list_methods",
    "load_reference_source_stats",
    "make_config",
    "take_clips",
]

# the order of the paper tables: the BriMPR repository's eight, then the newer methods
_METHODS: dict[str, type[TTAMethod]] = {
    cls.name: cls
    for cls in (Source, T3A, Tent, EATA, SAR, DeYO, READ, BriMPR, ABPEM, SuMi, PTA, TSA, AdaPGC, DASP, AudioAssist)
}
_ALIASES = {"none": "source"}  # the references' ``--tta_method None``


def list_methods() -> list[str]:
    """Registered method names, in the order of the paper tables."""
    return list(_METHODS)


def get_method_class(name: str) -> type[TTAMethod]:
    """The class registered under ``name`` (case-insensitive; "none" is Source)."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in _METHODS:
        raise ValueError(f"unknown TTA method {name!r}; known: {list_methods()} (adapt/methods/__init__.py)")
    return _METHODS[key]


def make_config(name: str, **config: Any) -> MethodConfig:
    """The frozen config of method ``name`` with ``config`` overriding its defaults (unknown keys raise)."""
    cls = get_method_class(name).config_class
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise TypeError(f"unknown {name} config key(s) {unknown}; known: {sorted(known)} (adapt/methods/__init__.py)")
    return cls(**config)


def create_method(
    name: str,
    model: nn.Module,
    *,
    source: Iterable | None = None,
    inputs: Mapping[str, Any] | None = None,
    **config: Any,
) -> TTAMethod:
    """Build method ``name`` over ``model`` (adapted in place).

    Args:
        name: one of :func:`list_methods`.
        model: a CAVMAEFT (``avtta.models.create_model``).
        source: ``(audio, video)`` source batches, for a method's declared source data when it is not given.
        **config: overrides of the method's config dataclass (e.g. ``lr``, ``precision``, ``seed``), and the
            precomputed source data under its declared keyword (EATA ``fisher=``, BriMPR ``source_stats=``). The
            source-data keyword of another method may be passed as ``None`` (callers loop over methods).
        inputs: further constructor arguments a method declares through ``run_inputs`` (``audio_assist``'s
            ``label_map=`` and ``labeler_model=``).
    """
    cls = get_method_class(name)
    declared = cls.source_data.argument if cls.source_data is not None else None
    others = {c.source_data.argument for c in _METHODS.values() if c.source_data is not None} - {declared}
    given = [key for key in others if config.pop(key, None) is not None]
    if given:
        raise TypeError(f"{name} takes no {', '.join(sorted(given))}= (adapt/methods/__init__.py)")
    extra = {declared: config.pop(declared, None), "source": source} if declared else {}
    return cls(model, make_config(name, **config), **extra, **dict(inputs or {}))
