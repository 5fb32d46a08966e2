"""READ: reliable fusion by self-adaptive attention (adapting the fusion block's q/k/v projection).

Paper: M. Yang, Y. Li, C. Zhang, P. Hu, X. Peng, "Test-time Adaptation against Multi-modal Reliability Bias",
ICLR 2024. Upstream: XLearning-SCU/2024-ICLR-READ ``TTA/READ.py``; as adapted in Luchicken/BriMPR ``TTA/READ.py``
(spec methods.md section 7).

Per batch: pre-update logits ``z``, ``p = softmax(z)``; balance term = entropy of ``softmax(sum_i p_i)``;
confidence term ``mean_i pmax_i (1 - ln pmax_i + ln gamma)`` with ``gamma = 1/e``; loss = confidence - balance;
one Adam step (GradScaler for fp16) on the fusion attention's input projection (group ``fusion_qkv``:
``blocks_u.0.attn.qkv`` weight and bias, 1,771,776 values at full width).

KEEP (item 2, ``score="post"``): the scored logits come from a second, no-grad forward after the update of the same
batch (of the fusion block and head only: the frozen modality stacks' outputs of the first forward are reused);
``score="pre"`` scores the pre-update forward instead (fair comparison, one fusion pass less).
KEEP (item 19): softmax of the *summed* probabilities; gamma = 1/e.
FIX (items 6-8): one fused ``qkv`` is trained (Adam is element-wise, so this equals training the references'
q/k/v row slices), and reset restores it exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .base import MethodConfig, TTAMethod
from .losses import balance_entropy, confidence_term

__all__ = ["READ", "READConfig"]


@dataclass(frozen=True, kw_only=True)
class READConfig(MethodConfig):
    """Attributes:
    score: "post" (KEEP: second forward after the update) or "pre" (the forward used for the loss).
    gamma: confidence threshold of the confidence-aware term (1/e).
    """

    score: str = "post"
    gamma: float = math.exp(-1)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.score not in ("post", "pre"):
            raise ValueError(f"score must be 'post' or 'pre', got {self.score!r} (adapt/methods/read.py)")
        if not 0 < self.gamma < 1:
            raise ValueError(f"gamma must be in (0, 1), got {self.gamma} (adapt/methods/read.py)")


class READ(TTAMethod):
    """Self-adaptive fusion attention trained with the confidence-aware and balance losses."""

    name = "read"
    config_class = READConfig

    def trainable_groups(self) -> tuple[str, ...]:
        return ("fusion_qkv",)

    def forward_and_adapt(self, audio: Tensor, video: Tensor) -> Tensor:
        m = self.model
        with self.autocast():
            with torch.no_grad():  # the modality stacks are frozen: no graph, and their outputs are kept
                a, v = m.encode("a", audio), m.encode("v", video)
            logits = m.forward_head(m.fuse_pool(a, v))
        probs = self.loss_input(logits).softmax(dim=-1)
        loss = confidence_term(probs, self.config.gamma) - balance_entropy(probs)
        self.apply_update(loss)
        if self.config.score == "pre":
            return logits
        # KEEP item 2: scored after the update. Only the fusion qkv changed, so the stacks' outputs above are the
        # post-update ones too (eval mode, no dropout or running statistics): the fusion block and head run again.
        with torch.no_grad(), self.autocast():
            return m.forward_head(m.fuse_pool(a, v))
