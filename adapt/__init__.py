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

from .methods import *  # noqa: F403 (the library's public API, re-exported)
from .methods import __all__ as _METHODS_API
from .source_data import (
    fisher_cached,
    load_fisher,
    load_source_data,
    load_source_stats,
    save_source_data,
    source_data_cached,
    source_stats_cached,
)

__all__ = [
    *_METHODS_API,
    "fisher_cached",
    "load_fisher",
    "load_source_data",
    "load_source_stats",
    "save_source_data",
    "source_data_cached",
    "source_stats_cached",
]
