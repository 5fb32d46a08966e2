"""Tent: fully test-time adaptation by entropy minimisation.

Paper: D. Wang, E. Shelhamer, S. Liu, B. Olshausen, T. Darrell, "Tent: Fully Test-Time Adaptation by Entropy
Minimization", ICLR 2021. Upstream: DequanWang/tent; as adapted in Luchicken/BriMPR ``TTA/Tent.py``
(spec methods.md section 2).

Loss ``mean_i H(z_i)`` over the whole batch, one Adam step on the weight and bias of every LayerNorm (group
``norms``: 284 tensors at full width; only the 96 used by the multimodal forward get gradients, spec 0.4).
Prediction = the pre-update forward.

FIX (item 7): reset restores the true initial parameters (single fused ``qkv``). KEEP (item 15): every LayerNorm.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .base import MethodConfig, TTAMethod
from .losses import softmax_entropy

__all__ = ["Tent", "TentConfig"]


@dataclass(frozen=True, kw_only=True)
class TentConfig(MethodConfig):
    """Tent uses only the shared settings (Adam lr 1e-4)."""


class Tent(TTAMethod):
    """Entropy minimisation on all LayerNorm affine parameters."""

    name = "tent"
    config_class = TentConfig

    def trainable_groups(self) -> tuple[str, ...]:
        return ("norms",)

    def forward_and_adapt(self, audio: Tensor, video: Tensor) -> Tensor:
        logits = self.forward_logits(audio, video)
        loss = softmax_entropy(self.loss_input(logits)).mean(0)
        self.apply_update(loss)
        return logits
