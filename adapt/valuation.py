"""Sample-level modality valuation: the Shapley value of audio and video for each sample's prediction.

Paper: Y. Wei, R. Feng, Z. Wang, D. Hu, "Enhancing Multimodal Cooperation via Sample-level Modality Valuation",
CVPR 2024. Upstream: GeWu-Lab/Valuate-and-Enhance-Multimodal-Cooperation, ``code/sample_level.py``
(``execute_modulation``).

With the value of a modality set the correctness of the prediction it gives (``v(both) = 2`` if the fused
prediction is correct else 0; ``v(a)``, ``v(v)`` = 1 if the prediction with the other modality removed is correct
else 0; ``v({}) = 0``), the two-player Shapley values are::

    phi_a = (v(a) + v(both) - v(v)) / 2        phi_v = (v(v) + v(both) - v(a)) / 2

so ``phi_a + phi_v = v(both)``. Predictions are the arg-max of the logits (first index on ties, as ``np.argmax``).

Removing a modality: the upstream model is late fusion (a linear head over concatenated pooled features) and
zeroes the removed modality's pooled feature. CAV-MAE fuses tokens in a shared transformer block, where zeroed
tokens would still be attended to and normalised (a LayerNorm maps a zero token to its bias), so avtta removes a
modality with the model's own missing-modality forward instead: ``missingaudioonly`` (audio kept) and
``missingvideoonly`` (video kept). Why, in full: ``docs/valuation.md``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["MODALITY_MODES", "ModalityValues", "modality_logits", "shapley_values", "valuate_batch"]

# The forward that keeps only audio, and the one that keeps only video (spec model-cav-mae.md section 6).
MODALITY_MODES = {"audio": "missingaudioonly", "video": "missingvideoonly"}


@dataclass(frozen=True)
class ModalityValues:
    """Per-sample valuation of one batch (all ``[B]``, on the CPU)."""

    phi_a: Tensor  # float32
    phi_v: Tensor  # float32
    prediction: Tensor  # long, fused arg-max
    audio_prediction: Tensor  # long, arg-max with video removed
    video_prediction: Tensor  # long, arg-max with audio removed


def shapley_values(
    fused_logits: Tensor, audio_logits: Tensor, video_logits: Tensor, labels: Tensor
) -> tuple[Tensor, Tensor]:
    """Per-sample ``(phi_a, phi_v)`` (float32, ``[B]``) from the three predictions' logits ``[B, C]`` and labels.

    Raises:
        ValueError: the shapes disagree.
    """
    if not (fused_logits.shape == audio_logits.shape == video_logits.shape) or fused_logits.ndim != 2:
        raise ValueError(
            f"logits must all be [B, C], got fused {tuple(fused_logits.shape)}, audio {tuple(audio_logits.shape)}, "
            f"video {tuple(video_logits.shape)} (adapt/valuation.py)"
        )
    labels = labels.reshape(-1).to(fused_logits.device)
    if labels.shape[0] != fused_logits.shape[0]:
        raise ValueError(f"{labels.shape[0]} labels for {fused_logits.shape[0]} samples (adapt/valuation.py)")
    v_both = 2.0 * (fused_logits.argmax(dim=1) == labels).float()
    v_a = (audio_logits.argmax(dim=1) == labels).float()
    v_v = (video_logits.argmax(dim=1) == labels).float()
    return (v_a + v_both - v_v) / 2.0, (v_v + v_both - v_a) / 2.0


@torch.no_grad()
def modality_logits(
    model: nn.Module,
    audio: Tensor,
    video: Tensor,
    autocast: contextlib.AbstractContextManager | None = None,
) -> tuple[Tensor, Tensor]:
    """The audio-only and video-only logits of ``model`` for a whole batch: one extra pair of forwards, no grad.

    Args:
        model: a CAVMAEFT (read only: nothing in it changes, not even its train/eval mode).
        audio: ``[B, T, F]`` fbank batch.
        video: ``[B, 3, H, W]`` frame batch.
        autocast: the precision context of the caller (e.g. ``method.autocast()``); None = as it is.

    Returns:
        ``(audio_logits, video_logits)``, fp32, on the model's device.
    """
    device = next(model.parameters()).device
    audio = audio.to(device, non_blocking=True)
    video = video.to(device, non_blocking=True)
    with autocast if autocast is not None else contextlib.nullcontext():
        audio_logits = model(audio, None, mode=MODALITY_MODES["audio"])
        video_logits = model(None, video, mode=MODALITY_MODES["video"])
    return audio_logits.float(), video_logits.float()


def valuate_batch(
    model: nn.Module,
    audio: Tensor,
    video: Tensor,
    fused_logits: Tensor,
    labels: Tensor,
    autocast: contextlib.AbstractContextManager | None = None,
) -> ModalityValues:
    """Valuate a scored batch: :func:`modality_logits` on ``model``, then :func:`shapley_values`.

    ``fused_logits`` are the logits the method scored (``method.step``'s return value); ``model`` is the model as it
    scored them (see ``docs/valuation.md`` for when to call this relative to ``step``).
    """
    audio_logits, video_logits = modality_logits(model, audio, video, autocast)
    return values_from_logits(fused_logits, audio_logits, video_logits, labels)


def values_from_logits(
    fused_logits: Tensor, audio_logits: Tensor, video_logits: Tensor, labels: Tensor
) -> ModalityValues:
    """:class:`ModalityValues` of a batch from its scored logits and its unimodal logits (computed beforehand when
    the method scores the model before its update)."""
    fused = fused_logits.detach().float().to(audio_logits.device)
    phi_a, phi_v = shapley_values(fused, audio_logits, video_logits, labels)
    return ModalityValues(
        phi_a=phi_a.cpu(),
        phi_v=phi_v.cpu(),
        prediction=fused.argmax(dim=1).cpu(),
        audio_prediction=audio_logits.argmax(dim=1).cpu(),
        video_prediction=video_logits.argmax(dim=1).cpu(),
    )
