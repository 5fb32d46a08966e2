"""Sample-level modality valuation: the Shapley value of audio and video for each sample's prediction.

Paper: Y. Wei, R. Feng, Z. Wang, D. Hu, "Enhancing Multimodal Cooperation via Sample-level Modality Valuation",
CVPR 2024. Upstream: GeWu-Lab/Valuate-and-Enhance-Multimodal-Cooperation, ``code/sample_level.py``
(``execute_modulation``).

The formula (:func:`shapley_values`) and the two missing-modality forwards (:func:`modality_logits`) live in
``models/valuation.py``, shared with the valuation pass of re-sampled training (``models/balance.py``); they are
re-exported here. This module adds the per-batch record the adaptation worker writes (:class:`ModalityValues`).
Why a modality is removed with the missing-modality forward rather than zeroed: ``docs/valuation.md``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from avtta.models.valuation import MODALITY_MODES, modality_logits, shapley_values
from torch import Tensor, nn

__all__ = ["MODALITY_MODES", "ModalityValues", "modality_logits", "shapley_values", "valuate_batch"]


@dataclass(frozen=True)
class ModalityValues:
    """Per-sample valuation of one batch (all ``[B]``, on the CPU)."""

    phi_a: Tensor  # float32
    phi_v: Tensor  # float32
    prediction: Tensor  # long, fused arg-max
    audio_prediction: Tensor  # long, arg-max with video removed
    video_prediction: Tensor  # long, arg-max with audio removed


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
