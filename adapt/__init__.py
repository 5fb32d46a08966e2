"""Test-time adaptation over the CAV-MAE classifier (spec/methods.md): the methods and the runs around them.

Two layers:

* ``adapt/methods/`` (``avtta.adapt.methods``): the library. The method classes, their losses and the registry;
  torch and timm only. ``create_method(name, model, **config)`` builds one of :func:`list_methods`; every method
  exposes ``step(audio, video) -> scored logits``, ``reset()``, ``reseed(seed)`` and ``predict(audio, video)``.
* ``adapt/`` itself: the application. ``worker.py`` (methods x conditions x seeds over shard sets, serving the
  methods' declarations: source data, presets, protocol overrides), ``source_data.py`` (the safetensors caches of
  source data: :func:`fisher_cached`, :func:`source_stats_cached`), ``report.py`` (tables, heatmap).

This package re-exports the public API of both, so ``from avtta import adapt; adapt.create_method(...)`` works.
"""

from __future__ import annotations

from .methods import (
    EATA,
    PRECISIONS,
    READ,
    SAR,
    T3A,
    BriMPR,
    BriMPRConfig,
    DeYO,
    DeYOConfig,
    EATAConfig,
    FisherTable,
    MethodConfig,
    READConfig,
    SARConfig,
    Source,
    SourceConfig,
    SourceData,
    SourceStats,
    T3AConfig,
    Tent,
    TentConfig,
    TTAMethod,
    compute_fisher,
    compute_source_stats,
    create_method,
    derive_seed,
    get_method_class,
    list_methods,
    load_reference_source_stats,
    make_config,
)
from .source_data import (
    fisher_cached,
    load_fisher,
    load_source_data,
    load_source_stats,
    save_fisher,
    save_source_data,
    save_source_stats,
    source_data_cached,
    source_stats_cached,
)

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
    "SourceData",
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
    "load_source_data",
    "load_source_stats",
    "make_config",
    "save_fisher",
    "save_source_data",
    "save_source_stats",
    "source_data_cached",
    "source_stats_cached",
]
