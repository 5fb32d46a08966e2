"""Balanced source training: the pieces ``avtta train`` calls for ``--resample`` and ``--structure-loss``.

* Re-sampling (``models/resample.py``): :func:`valuate` runs the valuation pass over the training set,
  :func:`epoch_plan` turns its phis into the epoch's :class:`~avtta.models.resample.ResamplePlan`,
  :func:`prepare_epoch_plan` does both with a plan file per epoch (so a resumed epoch reads the same rows),
  :func:`plan_batches` cuts the plan into the reader's batches, and :func:`planned_logits` is the training forward
  where some rows have a modality removed.
* Structure preservation (``models/structure.py``): :func:`structure_forward` is the multimodal training forward that
  also returns the four features the loss needs.
* :func:`schedule_position`: the learning-rate schedule's step for an epoch whose length the plan changed.

Removing a modality = the model's missing-modality forward (``missingaudioonly`` keeps audio, ``missingvideoonly``
keeps video), the same forwards the valuation uses; the official code zeroes the removed modality's pooled feature in
a late-fusion model, which has no CAV-MAE counterpart (why: docs/faithfulness.md, balanced source training).
Torch and numpy only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .resample import (
    DROP_AUDIO,
    DROP_NONE,
    DROP_VIDEO,
    ResampleConfig,
    ResamplePlan,
    load_plan,
    modality_level_plan,
    sample_level_plan,
    save_plan,
)
from .valuation import MODALITY_MODES, shapley_values

__all__ = [
    "DROP_MODES",
    "Valuation",
    "epoch_plan",
    "plan_batches",
    "plan_path",
    "planned_logits",
    "prepare_epoch_plan",
    "schedule_position",
    "structure_forward",
    "valuate",
]

_log = logging.getLogger(__name__)

# Forward mode of a row by its drop code: audio dropped -> video only, video dropped -> audio only.
DROP_MODES = {DROP_NONE: "multimodal", DROP_AUDIO: "missingvideoonly", DROP_VIDEO: "missingaudioonly"}

_VALUATION_HEADS = ("multimodal", "audio", "video")
LogitsFn = Callable[[nn.Module, Tensor, Tensor], Mapping[str, Tensor]]


@dataclass(frozen=True)
class Valuation:
    """Per-sample Shapley values of the training set, in reading (dataset) order."""

    phi_a: np.ndarray  # float64 [N]
    phi_v: np.ndarray
    keys: list[str]  # sample keys when the batches had them, else []

    @property
    def stats(self) -> dict[str, float]:
        return {"phi_a_mean": float(self.phi_a.mean()), "phi_v_mean": float(self.phi_v.mean())}


def _three_logits(model: nn.Module, audio: Tensor, video: Tensor) -> dict[str, Tensor]:
    return {
        "multimodal": model(audio, video, "multimodal"),
        "audio": model(audio, None, MODALITY_MODES["audio"]),
        "video": model(None, video, MODALITY_MODES["video"]),
    }


@torch.no_grad()
def valuate(
    model: nn.Module,
    batches: Iterable[Mapping[str, Any]],
    logits_fn: LogitsFn | None = None,
    autocast: bool = True,
) -> Valuation:
    """The valuation pass (upstream ``execute_modulation``): eval mode, no gradient, over ``batches`` in order.

    Per sample: ``v_both = 2`` if the fused prediction is right, ``v_a`` / ``v_v`` = 1 if the audio-only
    (``missingaudioonly``) / video-only (``missingvideoonly``) prediction is right; ``phi_a = (v_a + v_both - v_v)/2``,
    ``phi_v = (v_v + v_both - v_a)/2`` (``models/valuation.py`` ``shapley_values``, the formula the adaptation
    worker's valuation uses too; arg-max ties go to the first class, as ``np.argmax``).

    Args:
        model: a CAVMAEFT; its train/eval mode is restored afterwards.
        batches: the training set in dataset order (unshuffled), batch dicts with ``audio``, ``video``, ``label``.
        logits_fn: ``(model, audio, video) -> {"multimodal", "audio", "video": logits}``; default: three calls of the
            model's forward (pass ``train.eval_logits`` to share the modality stacks).
        autocast: fp16 autocast on CUDA (as the training loop), nothing on the CPU.
    """
    logits_fn = logits_fn or _three_logits
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    phi_a, phi_v, keys = [], [], []
    try:
        for batch in batches:
            audio = batch["audio"].to(device, non_blocking=True).float()
            video = batch["video"].to(device, non_blocking=True).float()
            label = torch.as_tensor(batch["label"]).to(device).long().reshape(-1)
            with torch.autocast("cuda", dtype=torch.float16, enabled=autocast and device.type == "cuda"):
                out = logits_fn(model, audio, video)
            a, v = shapley_values(*(out[name].float() for name in _VALUATION_HEADS), label)
            phi_a.append(a.double().cpu().numpy())  # halves of small integers: exact in any float type
            phi_v.append(v.double().cpu().numpy())
            keys.extend(batch.get("key", []))
    finally:
        model.train(was_training)
    if not phi_a:
        raise ValueError("valuate: the training data is empty")
    return Valuation(np.concatenate(phi_a), np.concatenate(phi_v), list(keys))


def epoch_plan(
    phis: Valuation | tuple[np.ndarray, np.ndarray], cfg: ResampleConfig, seed: int, epoch: int
) -> ResamplePlan | None:
    """The plan of epoch ``epoch`` (0-based) from the valuation of the model after epoch ``epoch - 1``; ``None``
    when the epoch is plain (method ``none`` or still in the warm-up: ``epoch < cfg.warmup``)."""
    if not cfg.active(epoch):
        return None
    phi_a, phi_v = (phis.phi_a, phis.phi_v) if isinstance(phis, Valuation) else phis
    if cfg.method == "sample":
        return sample_level_plan(phi_a, phi_v, seed, epoch)
    return modality_level_plan(phi_a, phi_v, seed, epoch, cfg)


def plan_path(out: str | Path, epoch: int) -> Path:
    """Where the plan of epoch ``epoch`` (0-based) is kept in a run folder: ``plans/epoch_<epoch+1:04d>.json``."""
    return Path(out) / "plans" / f"epoch_{epoch + 1:04d}.json"


def prepare_epoch_plan(
    out: str | Path,
    cfg: ResampleConfig,
    seed: int,
    epoch: int,
    num_samples: int,
    valuate_fn: Callable[[], Valuation],
) -> ResamplePlan | None:
    """The plan of ``epoch``: read from the run folder when it is there (a resumed epoch), else made from a fresh
    valuation (``valuate_fn()``) and written before the epoch starts. ``None`` for a plain epoch."""
    if not cfg.active(epoch):
        return None
    path = plan_path(out, epoch)
    if path.exists():
        plan = load_plan(path, seed=seed, epoch=epoch, method=cfg.method, num_samples=num_samples)
        _log.info("epoch %d: re-sampling plan read from %s (%d rows)", epoch + 1, path, len(plan))
        return plan
    valuation = valuate_fn()
    if valuation.phi_a.shape[0] != num_samples:
        raise ValueError(f"valuation covers {valuation.phi_a.shape[0]} samples, the training set has {num_samples}")
    plan = epoch_plan(valuation, cfg, seed, epoch)
    save_plan(plan, path)
    _log.info("epoch %d: re-sampling plan %s (%d rows): %s", epoch + 1, path, len(plan), plan.stats)
    return plan


def plan_batches(plan: ResamplePlan, batch_size: int, drop_last: bool = False) -> list[tuple[list[int], np.ndarray]]:
    """The plan cut into batches in reading order: ``(sample indices, drop codes)`` per batch (the indices are what
    the reader's batch sampler takes)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(plan)
    out = [(plan.index[s : s + batch_size].tolist(), plan.drop[s : s + batch_size]) for s in range(0, n, batch_size)]
    if drop_last and out and len(out[-1][0]) < batch_size:
        out.pop()
    return out


def planned_logits(model: nn.Module, audio: Tensor, video: Tensor, drop: Tensor | np.ndarray) -> Tensor:
    """Training logits ``[B, C]`` where row ``i`` has the modality of ``drop[i]`` removed (see :data:`DROP_MODES`).

    Rows are grouped by drop code, each group runs only the stacks it needs, and the logits are put back in row
    order. CAV-MAE has no batch-coupled layer (LayerNorm only), so splitting a batch changes no row's logits.
    """
    drop = torch.as_tensor(np.asarray(drop), dtype=torch.long).reshape(-1)
    if drop.shape[0] != audio.shape[0] or drop.shape[0] != video.shape[0]:
        raise ValueError(f"planned_logits: {drop.shape[0]} drop codes for audio {tuple(audio.shape)}, video "
                         f"{tuple(video.shape)}")  # fmt: skip
    codes = sorted(set(drop.tolist()))
    if not set(codes) <= set(DROP_MODES):
        raise ValueError(f"planned_logits: drop codes must be in {sorted(DROP_MODES)}, got {codes}")
    if codes == [DROP_NONE]:
        return model(audio, video, "multimodal")
    parts, rows = [], []
    for code in codes:
        idx = torch.nonzero(drop == code).flatten()
        a = audio[idx.to(audio.device)] if code != DROP_AUDIO else None
        v = video[idx.to(video.device)] if code != DROP_VIDEO else None
        parts.append(model(a, v, DROP_MODES[code]))
        rows.append(idx)
    order = torch.argsort(torch.cat(rows)).to(parts[0].device)
    return torch.cat(parts)[order]


def structure_forward(model: nn.Module, audio: Tensor, video: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """The multimodal forward of a CAVMAEFT plus the features of the structure-preserving loss.

    Built on the model's contract: :meth:`~avtta.models.CAVMAEFT.encode` of each modality (with
    ``layer_features``), the fusion block, the final LayerNorm pooling and :meth:`forward_head`, the same operations
    as ``fuse_pool(..., "multimodal")`` + ``forward_head``. Input space (per modality): the modality stack's output
    tokens as the fusion block reads them (its first LayerNorm ``blocks_u[0].norm1``), averaged over tokens
    (``encode``'s last layer feature). Transformed space: the fused tokens after the final ``norm``, averaged over
    the audio positions and over the video positions; their token-weighted mean is the pooled vector the head
    classifies.

    Returns:
        ``(logits, {"in_a", "in_v", "out_a", "out_v"})``: the logits equal ``model(audio, video, "multimodal")``.
    """
    a, layers_a = model.encode("a", audio, layer_features=True)
    v, layers_v = model.encode("v", video, layer_features=True)
    fused = model.fuse(torch.cat((a, v), dim=1), "u")
    na = a.shape[1]
    feats = {
        "in_a": layers_a[:, -1],
        "in_v": layers_v[:, -1],
        # The final LayerNorm acts per token, so pooling a slice of the fused tokens is that slice's share.
        "out_a": model.pool(fused[:, :na], "norm"),
        "out_v": model.pool(fused[:, na:], "norm"),
    }
    return model.forward_head(model.pool(fused, "norm")), feats


def schedule_position(epoch: int, batch: int, batches_in_epoch: int, plain_steps_per_epoch: int) -> float:
    """Step of the learning-rate schedule for batch ``batch`` of epoch ``epoch`` when that epoch has
    ``batches_in_epoch`` batches and the schedule was laid out for ``plain_steps_per_epoch`` per epoch.

    The schedule (warm-up + cosine over ``epochs * plain_steps_per_epoch``) stays a function of the position in the
    run measured in epochs, as upstream's per-epoch ``StepLR``: a re-sampled epoch with more batches covers the same
    stretch of the schedule with finer steps. For a plain epoch this is ``epoch * plain + batch``.
    """
    if batches_in_epoch < 1 or not 0 <= batch < batches_in_epoch:
        raise ValueError(f"schedule_position: batch {batch} outside an epoch of {batches_in_epoch} batches")
    return (epoch + batch / batches_in_epoch) * plain_steps_per_epoch
