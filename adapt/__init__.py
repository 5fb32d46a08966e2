"""Test-time adaptation methods over the CAV-MAE classifier (spec/methods.md).

``create_method(name, model, **config)`` builds one of :func:`list_methods`; every method exposes
``step(audio, video) -> scored logits``, ``reset()``, ``reseed(seed)`` and ``predict(audio, video)``.
Methods that need source data (EATA's Fisher, BriMPR's statistics) take ``source=`` (an iterable of
``(audio, video)`` batches) or their precomputed tables (``fisher=``, ``source_stats=``); see
:func:`fisher_cached` and :func:`source_stats_cached` for the on-disk caches.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from torch import nn

from .base import PRECISIONS, MethodConfig, TTAMethod, derive_seed
from .brimpr import (
    BriMPR,
    BriMPRConfig,
    SourceStats,
    compute_source_stats,
    load_reference_source_stats,
    load_source_stats,
    save_source_stats,
    source_stats_cached,
)
from .deyo import DeYO, DeYOConfig
from .eata import EATA, EATAConfig, FisherTable, compute_fisher, fisher_cached, load_fisher, save_fisher
from .read import READ, READConfig
from .sar import SAR, SARConfig
from .source import Source, SourceConfig
from .t3a import T3A, T3AConfig
from .tent import Tent, TentConfig

__all__ = [
    "EATA",
    "PRECISIONS",
    "READ",
    "SAR",
    "T3A",
    "BriMPR",
    "BriMPRConfig",
    "DeYO",
    "DeYOConfig",
    "EATAConfig",
    "FisherTable",
    "MethodConfig",
    "READConfig",
    "SARConfig",
    "Source",
    "SourceConfig",
    "SourceStats",
    "T3AConfig",
    "TTAMethod",
    "Tent",
    "TentConfig",
    "compute_fisher",
    "compute_source_stats",
    "create_method",
    "derive_seed",
    "fisher_cached",
    "get_method_class",
    "list_methods",
    "load_fisher",
    "load_reference_source_stats",
    "load_source_stats",
    "make_config",
    "save_fisher",
    "save_source_stats",
    "source_stats_cached",
]

_METHODS: dict[str, type[TTAMethod]] = {cls.name: cls for cls in (Source, T3A, Tent, EATA, SAR, DeYO, READ, BriMPR)}
_ALIASES = {"none": "source"}  # the references' ``--tta_method None``


def list_methods() -> list[str]:
    """Registered method names, in the order of the paper tables."""
    return list(_METHODS)


def get_method_class(name: str) -> type[TTAMethod]:
    """The class registered under ``name`` (case-insensitive; "none" is Source)."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in _METHODS:
        raise ValueError(f"unknown TTA method {name!r}; known: {list_methods()} (adapt/__init__.py)")
    return _METHODS[key]


def make_config(name: str, **config: Any) -> MethodConfig:
    """The frozen config of method ``name`` with ``config`` overriding its defaults (unknown keys raise)."""
    cls = get_method_class(name).config_class
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise TypeError(f"unknown {name} config key(s) {unknown}; known: {sorted(known)} (adapt/__init__.py)")
    return cls(**config)


def create_method(
    name: str,
    model: nn.Module,
    *,
    source: Iterable | None = None,
    fisher: FisherTable | None = None,
    source_stats: SourceStats | None = None,
    **config: Any,
) -> TTAMethod:
    """Build method ``name`` over ``model`` (adapted in place).

    Args:
        name: one of :func:`list_methods`.
        model: a CAVMAEFT (``avtta.models.create_model``).
        source: ``(audio, video)`` source batches, for EATA's Fisher / BriMPR's statistics when not given.
        fisher: precomputed EATA Fisher table (EATA only).
        source_stats: precomputed BriMPR source statistics (BriMPR only).
        **config: overrides of the method's config dataclass (e.g. ``lr``, ``precision``, ``seed``).
    """
    cls = get_method_class(name)
    cfg = make_config(name, **config)
    if cls is EATA:
        return EATA(model, cfg, fisher=fisher, source=source)
    if cls is BriMPR:
        return BriMPR(model, cfg, source_stats=source_stats, source=source)
    if fisher is not None or source_stats is not None:
        raise TypeError(f"{name} takes neither fisher= nor source_stats= (adapt/__init__.py)")
    return cls(model, cfg)
