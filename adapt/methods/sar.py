"""SAR: sharpness-aware and reliable entropy minimisation with model recovery.

Paper: S. Niu, J. Wu, Y. Zhang, Z. Wen, Y. Chen, P. Zhao, M. Tan, "Towards Stable Test-Time Adaptation in Dynamic
Wild World", ICLR 2023. Upstream: mr-eggplant/SAR; as adapted in Luchicken/BriMPR ``TTA/SAR.py``
(spec methods.md section 5). SAM: P. Foret et al., "Sharpness-Aware Minimization", ICLR 2021.

Per batch: entropies of the pre-update logits, reliable set ``e < E0`` (``E0 = e_margin * ln C``), ``L1`` = their
mean; SAM ascent of radius ``rho`` along ``grad L1``; second forward at the perturbed weights, ``L2`` = mean
entropy of the samples still below ``E0`` (among the first set); restore and take the Adam step with the
perturbed-point gradients; ``ema`` of ``L2`` (momentum 0.9, skipped when ``L2`` is NaN); recovery (restore the
initial model and optimiser) when ``ema < reset_constant``. No GradScaler, even for fp16 (as the reference).
Trains the LayerNorms of all modality blocks except the top two of each stack (groups ``norms.blocks_a.{i}``,
``norms.blocks_v.{i}``, ``i < depth - 2``: 216 tensors at full width).

KEEP (item 14, ``ema_quirk=True``): after a recovery the pre-reset (small) ``ema`` is written back, so the model
can be reset again on the following batches. ``ema_quirk=False`` leaves ``ema = None`` after a recovery.
KEEP: when no sample is reliable, both losses are NaN means over empty sets whose gradients are zero; the Adam step
is still taken (with zero gradients, so only earlier momentum moves the weights), as in the reference.
KEEP (item 15): blocks 9-10 of each stack, the fusion block and the final norms/head are not adapted.
FIX (item 7): exact reset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from .base import MethodConfig, TTAMethod
from .losses import reliable, sam_ascent, sam_restore, softmax_entropy

__all__ = ["SAR", "SARConfig", "lower_block_norm_groups"]


def lower_block_norm_groups(model: object, skip_top: int = 2) -> tuple[str, ...]:
    """Groups ``norms.blocks_a.{i}`` and ``norms.blocks_v.{i}`` for ``i < depth - skip_top`` (SAR/DeYO selection)."""
    top = max(1, model.depth - skip_top)  # >= 1 block on shallow models
    return tuple(f"norms.{stack}.{i}" for stack in ("blocks_a", "blocks_v") for i in range(top))


@dataclass(frozen=True, kw_only=True)
class SARConfig(MethodConfig):
    """Attributes:
    e_margin: entropy margin E0 in units of ln C (0.4).
    rho: SAM radius (0.05, non-adaptive).
    reset_constant: recovery threshold e_m on the EMA of the second loss (0.2).
    ema_momentum: momentum of that EMA (0.9).
    ema_quirk: KEEP the reference's write-back of the pre-reset EMA after a recovery (item 14).
    """

    e_margin: float = 0.4
    rho: float = 0.05
    reset_constant: float = 0.2
    ema_momentum: float = 0.9
    ema_quirk: bool = True


class SAR(TTAMethod):
    """Reliable entropy minimisation with SAM and model recovery."""

    name = "sar"
    config_class = SARConfig

    def trainable_groups(self) -> tuple[str, ...]:
        return lower_block_norm_groups(self.model)

    def init_state(self) -> None:
        self.e_margin = self.config.e_margin * math.log(self.num_classes)

    def reset_state(self) -> None:
        self.ema: float | None = None
        self.recoveries = 0

    def forward_and_adapt(self, audio: Tensor, video: Tensor) -> Tensor:
        cfg = self.config
        params = self.params
        assert self.optimizer is not None
        self.optimizer.zero_grad(set_to_none=True)
        logits = self.forward_logits(audio, video)
        entropy = softmax_entropy(self.loss_input(logits))
        ids1 = reliable(entropy, self.e_margin)
        entropy[ids1].mean(0).backward()  # NaN over an empty set: its gradients are zero (see KEEP above)

        saved = sam_ascent(params, cfg.rho)
        self.optimizer.zero_grad(set_to_none=True)
        entropy2 = softmax_entropy(self.loss_input(self.forward_logits(audio, video)))[ids1]
        loss2 = entropy2[reliable(entropy2, self.e_margin)].mean(0)
        value = float(loss2.detach())
        ema = self.ema
        if not math.isnan(value):
            ema = value if ema is None else cfg.ema_momentum * ema + (1 - cfg.ema_momentum) * value
        loss2.backward()
        sam_restore(params, saved)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

        if ema is not None and ema < cfg.reset_constant:
            self.recoveries += 1
            recoveries = self.recoveries
            self.reset()  # restores model + optimiser and sets ema = None
            self.recoveries = recoveries
            if not cfg.ema_quirk:
                ema = None
        self.ema = ema
        return logits
