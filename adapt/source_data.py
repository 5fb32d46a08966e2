"""Source-data helpers: taking N clips from a batch iterable, and safetensors I/O for cached statistics.

EATA's Fisher information (spec methods.md 4.1) and BriMPR's source statistics (8.5) are computed once per
(checkpoint, source set) from clean training clips. The worker caches them; these helpers keep the files in
safetensors with string metadata (never pickle).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

logger = logging.getLogger(__name__)

__all__ = ["cached_tensors", "load_tensors", "save_tensors", "take_clips"]

Batch = tuple[Tensor, Tensor]


def take_clips(source: Iterable, num_clips: int) -> Iterator[Batch]:
    """Yield ``(audio, video)`` batches from ``source`` until ``num_clips`` clips were produced.

    Batches may carry extra items (e.g. labels); only the first two are used. The last batch is truncated
    so that exactly ``min(num_clips, available)`` clips are yielded.
    """
    if num_clips <= 0:
        raise ValueError(f"num_clips must be positive, got {num_clips} (adapt/source_data.py)")
    left = num_clips
    for batch in source:
        if not isinstance(batch, tuple | list) or len(batch) < 2:
            raise TypeError(
                f"source batches must be (audio, video, ...) tuples, got {type(batch)} (adapt/source_data.py)"
            )
        audio, video = batch[0], batch[1]
        if audio.shape[0] != video.shape[0]:
            raise ValueError(
                f"audio and video batch sizes differ: {audio.shape[0]} vs {video.shape[0]} (adapt/source_data.py)"
            )
        n = min(left, audio.shape[0])
        yield audio[:n], video[:n]
        left -= n
        if left == 0:
            return


def save_tensors(path: str | Path, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Write ``tensors`` (moved to CPU, made contiguous) to a safetensors file, creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(cpu, str(tmp), metadata=meta)
    tmp.replace(path)  # atomic: a crashed writer never leaves a half file behind
    return path


def load_tensors(path: str | Path, device: torch.device | str = "cpu") -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read a safetensors file written by :func:`save_tensors`: ``(tensors, metadata)``."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no such statistics file: {path} (adapt/source_data.py)")
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
    return load_file(str(path), device=str(device)), meta


def cached_tensors(
    path: str | Path,
    compute: Callable[[], dict[str, Tensor]],
    metadata: dict[str, str] | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, Tensor]:
    """Load ``path`` if it exists, else ``compute()`` and save it there (with ``metadata``)."""
    path = Path(path)
    if path.is_file():
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
