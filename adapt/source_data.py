"""The cache of the methods' source data (application side): safetensors files with string metadata, never pickle.

A method declares the statistics it needs from clean source clips as a :class:`~avtta.adapt.methods.SourceData`
(EATA's Fisher information, spec methods.md 4.1; BriMPR's source statistics, 8.5). They are computed once per
(checkpoint, source set): :func:`source_data_cached` loads them from a file or computes and writes them (atomically),
checking the metadata recorded with them. :func:`fisher_cached` / :func:`source_stats_cached` and the save/load
loaders are the same for EATA and BriMPR by name.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from avtta.shards import storage
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .methods import EATA, BriMPR, FisherTable, SourceData, SourceStats

logger = logging.getLogger(__name__)

__all__ = [
    "cached_tensors",
    "fisher_cached",
    "load_fisher",
    "load_source_data",
    "load_source_stats",
    "load_tensors",
    "save_source_data",
    "save_tensors",
    "source_data_cached",
    "source_stats_cached",
]


def save_tensors(path: str | Path, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> Path | str:
    """Write ``tensors`` (moved to CPU, made contiguous) to a safetensors file atomically, creating parent folders;
    ``path`` may be a URL (``s3://``: the file is uploaded whole)."""
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    with storage.staged_path(path) as tmp:  # a crashed writer never leaves a half file behind
        save_file(cpu, str(tmp), metadata=meta)
    return Path(path) if storage.is_local(path) else str(path)


def load_tensors(path: str | Path, device: torch.device | str = "cpu") -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read a safetensors file written by :func:`save_tensors`: ``(tensors, metadata)``."""
    from safetensors import safe_open

    if not _is_file(path):
        raise ValueError(f"no such statistics file: {path} (adapt/source_data.py)")
    with storage.local_copy(path) as local:
        with safe_open(str(local), framework="pt") as f:
            meta = dict(f.metadata() or {})
        return load_file(str(local), device=str(device)), meta


def _is_file(path: str | Path) -> bool:
    return storage.local_path(path).is_file() if storage.is_local(path) else storage.exists(path)


def cached_tensors(
    path: str | Path,
    compute: Callable[[], dict[str, Tensor]],
    metadata: dict[str, str] | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, Tensor]:
    """Load ``path`` if it exists, else ``compute()`` and save it there (with ``metadata``)."""
    if _is_file(path):
        tensors, meta = load_tensors(path, device)
        for key, value in (metadata or {}).items():
            if key in meta and meta[key] != str(value):
                raise ValueError(
                    f"cached file {path} was made with {key}={meta[key]!r}, expected {value!r} (adapt/source_data.py)"
                )
        logger.info("loaded cached statistics from %s", path)
        return tensors
    tensors = compute()
    save_tensors(path, tensors, metadata)
    logger.info("saved statistics to %s", path)
    return {k: v.to(device) for k, v in tensors.items()}


# ---------------------------------------------------------------------- generic over a method's declaration
def source_data_cached(
    need: SourceData,
    model: nn.Module,
    source: Iterable,
    path: str | Path,
    num_clips: int,
    metadata: dict[str, str] | None = None,
) -> Any:
    """Load the declared source data at ``path`` or compute it from ``num_clips`` clips of ``source`` and save it.

    The caller keys ``path`` by checkpoint and source set; ``metadata`` (with ``kind`` and the clip count) is stored
    in the file and checked on load.
    """
    meta = {"kind": need.kind, need.size_key: str(num_clips), **(metadata or {})}
    tensors = cached_tensors(path, lambda: need.to_tensors(need.compute(model, source, num_clips)), meta)
    return need.from_tensors(tensors, path)


def save_source_data(need: SourceData, path: str | Path, value: Any, metadata: dict[str, str] | None = None) -> Path:
    """Write declared source data as safetensors (its ``to_tensors`` keys, ``kind`` in the metadata)."""
    return save_tensors(path, need.to_tensors(value), {"kind": need.kind, **(metadata or {})})


def load_source_data(need: SourceData, path: str | Path, device: torch.device | str = "cpu") -> Any:
    """Read declared source data written by :func:`save_source_data` or :func:`source_data_cached`."""
    tensors, _ = load_tensors(path, device)
    return need.from_tensors(tensors, path)


# ---------------------------------------------------------------------- the same by name
def fisher_cached(
    model: nn.Module, source: Iterable, path: str | Path, num_clips: int = 2000, metadata: dict[str, str] | None = None
) -> FisherTable:
    """EATA's Fisher table at ``path``, computed from ``source`` and saved there when missing."""
    return source_data_cached(EATA.source_data, model, source, path, num_clips, metadata)


def source_stats_cached(
    model: nn.Module, source: Iterable, path: str | Path, num_samples: int = 32, metadata: dict[str, str] | None = None
) -> SourceStats:
    """BriMPR's source statistics at ``path``, computed from ``source`` and saved there when missing."""
    return source_data_cached(BriMPR.source_data, model, source, path, num_samples, metadata)


def load_fisher(path: str | Path, device: torch.device | str = "cpu") -> FisherTable:
    """Read a Fisher table written by :func:`fisher_cached` (or :func:`save_source_data`)."""
    return load_source_data(EATA.source_data, path, device)


def load_source_stats(path: str | Path, device: torch.device | str = "cpu") -> SourceStats:
    """Read statistics written by :func:`source_stats_cached` (or :func:`save_source_data`)."""
    return load_source_data(BriMPR.source_data, path, device)
