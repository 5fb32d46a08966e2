"""Sample-level modality valuation, the formula: Shapley values of audio and video from three predictions.

Paper: Y. Wei, R. Feng, Z. Wang, D. Hu, "Enhancing Multimodal Cooperation via Sample-level Modality Valuation",
CVPR 2024 (upstream ``code/sample_level.py`` ``execute_modulation``). Shared by the adaptation worker's
``--valuation`` (``adapt/valuation.py``) and the valuation pass of re-sampled training (``models/balance.py``).

With the value of a modality set the correctness of the prediction it gives (``v(both) = 2`` if the fused
prediction is correct else 0; ``v(a)``, ``v(v)`` = 1 if the prediction with the other modality removed is correct
else 0; ``v({}) = 0``), the two-player Shapley values are::

    phi_a = (v(a) + v(both) - v(v)) / 2        phi_v = (v(v) + v(both) - v(a)) / 2

so ``phi_a + phi_v = v(both)``. Predictions are the arg-max of the logits (first index on ties, as ``np.argmax``).
A modality is removed with the model's missing-modality forward (``missingaudioonly`` keeps audio,
``missingvideoonly`` keeps video), not by zeroing it: why, in ``docs/valuation.md``. Torch only.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

__all__ = ["MODALITY_MODES", "modality_logits", "shapley_values"]

# The forward that keeps only audio, and the one that keeps only video (spec model-cav-mae.md section 6).
MODALITY_MODES = {"audio": "missingaudioonly", "video": "missingvideoonly"}


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
            f"video {tuple(video_logits.shape)} (models/valuation.py)"
        )
    labels = labels.reshape(-1).to(fused_logits.device)
    if labels.shape[0] != fused_logits.shape[0]:
        raise ValueError(f"{labels.shape[0]} labels for {fused_logits.shape[0]} samples (models/valuation.py)")
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
