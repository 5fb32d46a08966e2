"""PTA: Partition-Then-Adapt, bias-aware test-time adaptation of the fusion attention.

Paper: "Partition-Then-Adapt: Combating Prediction Bias for Reliable Multi-Modal Test-Time Adaptation", NeurIPS 2025
(spotlight; OpenReview T6RkYsuoMW; the author list is in neither the release nor the abstract available to us: see
the OpenReview page). Upstream: MPI-Lab/PTA at commit ec2ab1dc9656c9c30eb32bf204da78258664d1fd (``TTA/pta.py``,
``models/cav_mae.py``, ``run.py``); spec ``spec/method-pta.md``.

Per batch (spec section 3): multimodal forward keeping the fusion block's attention ``A [B, H, N, N]`` with gradient;
entropy ``H_i``, confidence ``k_i = max softmax(z_i)``; classes predicted less often than average (``n K < B``)
give the positives ``P``, more often (``n K > B``) the negatives ``Nn``. Weights ``w = Q(s_P, desc) Q(k_P)`` (quantile
ranks, ties share their mean rank); ``L_ent = mean_P w H``; MMD with an RBF kernel (median bandwidth, detached)
between the flattened attention maps of ``P`` and ``Nn``. Loss (paper, default) ``L_ent - 0.5 mean_Nn H + MMD`` or
(release) ``1.5 L_ent + MMD``; one Adam step on the fusion ``qkv`` (the references' q/k/v rows); the scored logits
come from a second forward after the update (of the fusion block and head only: the frozen stacks' outputs are reused).

FIX: 1 (lr 1e-4), 2 (per-sample confidence), 3 (no in-place writes into ``A``), 4 (paper loss by default,
``loss="released"`` for the release's), 5 (no valid partition: no update, pre-update logits scored), 6 (errors are
not swallowed), 13 (one fused ``qkv`` trained), 17 (determinism is the worker's). KEEP: 7 (second forward,
``score="pre"`` to score the first), 8 (descending bias rank), 9 (tanh, harmless), 10 (MMD on the full map),
11 (median bandwidth; a zero median drops the MMD term instead of writing NaN), 12, 14, 16 (fp16 logits under
autocast), 15 (batch size is the run's; 64 recommended), 18 (q/k/v as the code).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .base import MethodConfig, TTAMethod
from .losses import softmax_entropy

logger = logging.getLogger(__name__)

__all__ = [
    "PTA",
    "PTAConfig",
    "bias_partition",
    "fusion_attention_forward",
    "mmd_rbf",
    "quantile_rank",
]

_LOSSES = ("paper", "released")


@dataclass(frozen=True, kw_only=True)
class PTAConfig(MethodConfig):
    """Attributes:
    loss: "paper" (FIX 4: ``L_ent - ent_weight mean_Nn H + mmd_weight MMD``) or "released"
        (``L_ent + ent_weight L_ent + mmd_weight MMD``).
    ent_weight: weight of the second entropy term (0.5, hard-coded upstream).
    mmd_weight: weight of the attention MMD (1.0, hard-coded upstream).
    score: "post" (KEEP 7: second forward after the update) or "pre" (the forward used for the loss).
    """

    loss: str = "paper"
    ent_weight: float = 0.5
    mmd_weight: float = 1.0
    score: str = "post"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss not in _LOSSES:
            raise ValueError(f"loss must be one of {_LOSSES}, got {self.loss!r} (adapt/methods/pta.py)")
        if self.score not in ("post", "pre"):
            raise ValueError(f"score must be 'post' or 'pre', got {self.score!r} (adapt/methods/pta.py)")
        for name in ("ent_weight", "mmd_weight"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not value >= 0:
                raise ValueError(f"{name} must be a non-negative number, got {value!r} (adapt/methods/pta.py)")


def fusion_attention_forward(model: nn.Module, tokens: Tensor) -> tuple[Tensor, Tensor]:
    """The fusion block (unified norms) on ``tokens [B, N, D]``, also returning its attention ``[B, H, N, N]``.

    The same computation as the block's timm ``Attention``, written out because the fused kernel does not expose the
    probabilities; like PTA's model, the scale multiplies ``q k^T`` and ``A`` keeps its gradient.
    """
    if len(model.blocks_u) != 1:
        raise ValueError(f"PTA expects one fusion block, the model has {len(model.blocks_u)} (adapt/methods/pta.py)")
    block = model.blocks_u[0]
    attn = block.attn
    if getattr(attn, "gate", None) is not None:
        raise ValueError("PTA: gated fusion attention is not supported (adapt/methods/pta.py)")
    x = tokens
    batch, length, width = x.shape
    heads = attn.num_heads
    qkv = attn.qkv(block.norm1(x)).reshape(batch, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    probs = ((q @ k.transpose(-2, -1)) * attn.scale).softmax(dim=-1)
    out = (probs @ v).transpose(1, 2).reshape(batch, length, width)
    x = x + attn.proj(attn.norm(out))
    x = x + block.mlp(block.norm2(x))
    return x, probs


def quantile_rank(x: Tensor, descending: bool = False) -> Tensor:
    """1-based rank of each element of ``x [n]`` (ties share their mean rank) divided by ``n``, as float32.

    ``descending=True`` gives the largest value rank 1. Computed by pairwise comparison (n is at most the batch).
    """
    n = x.shape[0]
    before = (x.unsqueeze(0) > x.unsqueeze(1)) if descending else (x.unsqueeze(0) < x.unsqueeze(1))
    ties = x.unsqueeze(0) == x.unsqueeze(1)
    # mean of the ranks count_before + 1 .. count_before + count_ties
    rank = before.sum(1).float() + (ties.sum(1).float() + 1) / 2
    return rank / n


def bias_partition(pred: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Bias scores ``tanh(1/K - n_{yhat}/B)`` (float32) and the positive / negative sample indices (spec 3.4).

    ``n_{yhat_i}`` is how many samples share sample i's prediction and ``K`` the number of predicted classes; the
    sets use the exact integer tests ``n K < B`` and ``n K > B`` (equal to the code's float comparisons).
    """
    batch = pred.shape[0]
    same = pred.unsqueeze(0) == pred.unsqueeze(1)
    counts = same.sum(1)
    num_classes = int(torch.unique(pred).numel())
    score = torch.tanh(torch.tensor(1.0 / num_classes, device=pred.device) - counts.float() / batch)
    positive = torch.nonzero(counts * num_classes < batch, as_tuple=True)[0]
    negative = torch.nonzero(counts * num_classes > batch, as_tuple=True)[0]
    return score, positive, negative


def mmd_rbf(samples: Tensor, split: int) -> Tensor | None:
    """Biased MMD^2 between ``samples[:split]`` and ``samples[split:]`` (flattened) with PTA's median-bandwidth RBF.

    Squared distances come from the Gram matrix of the rows centred on their mean (translation-invariant, so the
    same distances as the reference's ``cdist``, without its cancellation and with one matrix product and no
    ``[M, M, features]`` intermediate). Bandwidth ``sigma^2 = (sqrt(m / 2))^2`` with ``m`` torch's lower median of
    the distinct pairs, detached. Returns None when ``m == 0`` (the reference would produce NaN; spec item 11).
    """
    rows = samples.flatten(1).float()
    count = rows.shape[0]
    centred = rows - rows.mean(dim=0, keepdim=True)
    gram = centred @ centred.t()
    diag = gram.diagonal()
    dist2 = (diag.unsqueeze(0) + diag.unsqueeze(1) - 2 * gram).clamp_min(0)
    with torch.no_grad():
        upper = torch.triu_indices(count, count, offset=1, device=rows.device)
        median = torch.median(dist2[upper[0], upper[1]])
        if not median > 0:
            return None
        sigma = torch.sqrt(0.5 * median)
    kernel = torch.exp(-dist2 / sigma**2)
    return kernel[:split, :split].mean() + kernel[split:, split:].mean() - 2 * kernel[:split, split:].mean()


class PTA(TTAMethod):
    """Partition by prediction bias, then rank-weighted entropy + attention MMD on the fusion ``qkv``."""

    name = "pta"
    config_class = PTAConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = {"ks50": {}, "vggsound": {}}

    def trainable_groups(self) -> tuple[str, ...]:
        return ("fusion_qkv",)

    def reset_state(self) -> None:
        self.last_step: dict[str, Any] = {}

    def adaptation_forward(self, audio: Tensor, video: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Multimodal logits, the fusion attention and the fusion block's input tokens (grad mode of the caller)."""
        m = self.model
        with self.autocast():
            a = m.run_stack(m.embed_audio(audio), "a")
            v = m.run_stack(m.embed_video(video), "v")
            tokens = torch.cat((a, v), dim=1)
            x, probs = fusion_attention_forward(m, tokens)
            logits = m.head(m.pool(x, "norm"))
        return logits, probs, tokens.detach()

    @torch.no_grad()
    def fusion_logits(self, tokens: Tensor) -> Tensor:
        """Logits from the fusion block's input tokens: the part of the forward the update changes."""
        m = self.model
        with self.autocast():
            return m.head(m.pool(m.fuse(tokens, "u"), "norm"))

    def forward_and_adapt(self, audio: Tensor, video: Tensor) -> Tensor:
        cfg = self.config
        logits, probs, tokens = self.adaptation_forward(audio, video)
        z = self.loss_input(logits)
        entropy = softmax_entropy(z)
        with torch.no_grad():
            confidence = z.softmax(dim=1).max(dim=1).values
            score, positive, negative = bias_partition(z.argmax(dim=1))
        self.last_step = {"positive": positive, "negative": negative}
        if positive.numel() == 0 or negative.numel() == 0:
            # spec item 5 FIX: every predicted class has the same count; the release crashes here.
            return logits
        with torch.no_grad():
            rank_conf = quantile_rank(confidence[positive])
            rank_bias = quantile_rank(score[positive], descending=True)
            weights = rank_bias * rank_conf
        loss_ent = (weights * entropy[positive]).mean(0)
        if cfg.loss == "paper":
            loss = loss_ent - cfg.ent_weight * entropy[negative].mean(0)
        else:
            loss = loss_ent + cfg.ent_weight * loss_ent
        loss_attn = mmd_rbf(probs[torch.cat((positive, negative))], positive.numel())
        if loss_attn is None:
            logger.warning("PTA: median attention distance is 0; the MMD term is dropped for this batch")
        else:
            loss = loss + cfg.mmd_weight * loss_attn
        self.last_step.update(
            rank_conf=rank_conf, rank_bias=rank_bias, loss_total=loss.detach(),
            loss_attn=None if loss_attn is None else loss_attn.detach(),
        )  # fmt: skip
        self.apply_update(loss)
        if cfg.score == "pre":
            return logits
        # KEEP 7: the reported logits are a forward after the update. Only the fusion qkv changed, so the frozen
        # modality stacks' outputs of the first forward are reused (the same values; half the forward's cost).
        return self.fusion_logits(tokens)
