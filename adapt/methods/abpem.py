"""ABPEM: attention bootstrapping with principal entropy minimisation (adapting the fusion block's q/k/v).

Paper: Y. Zhao et al. (the repository gives no author list), "Attention
Bootstrapping for Multi-Modal Test-Time Adaptation", AAAI 2025. Upstream: YushengZhao/ABPEM @ 0791a37
(``TTA/ABPEM.py``, ``models/cav_mae.py``, ``run_read.py``, ``scripts/ours-*.sh``); spec ``spec/method-abpem.md``.

Per batch: the frozen encoders give the detached token set ``X = concat(A, V)`` ``[B, 708, D]``, appended to a
cache of the last ``max(1, cache_size // B)`` batches; the fusion block and head run on the whole cache (``n``
clips, oldest first) -> logits ``z`` and ``Sbar`` = the head-averaged *pre-softmax* fusion scores ``[n, N, N]``.
Losses: principal entropy ``L_pe = mean_i sum_{c in top-k(p_i)} -p_ic ln(p_ic + 1e-6)``; balance
``L_bal = H(mean_i p_i)``; attention bootstrapping ``L_att`` = Gaussian KL of each cross-modal score block's
(mean, unbiased std) per clip towards the detached statistics of the self block sharing its keys (VA -> AA,
AV -> VV). ``L = w_ent L_pe - w_bal L_bal + w_att L_att``; one Adam step (GradScaler for fp16) on the fusion
``qkv`` (1,771,776 values at full width). Scored: a second no-grad forward of the current batch only (reusing
its encoder output) after the update.

KEEP: post-update scoring (item 2, ``score="post"``; ``"pre"`` scores the current batch's rows of ``z``); the loss
over the whole cache (item 4); ``ln(p + 1e-6)`` in the principal entropy (12); READ's balance term added to the
paper's two terms (13); ``fix_loss_bal`` as all scripts (``False``: READ's softmax-of-sums form).
FIX: ``0 ln 0 = 0`` in the balance term, value and gradient (item 3, ``safe_balance``: the mean probability in
log space; equal to the official value wherever that is finite); a cache of at least one batch (4); the token
split at the model's audio token count instead of the hard-coded 512/196 (5); one fused ``qkv`` trained instead of
q/k/v views (6); no unused work (7: no softmax of ``Sbar``, no host copy of the attention output). Items 1, 8-11
concern the run protocol (the worker).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import MethodConfig, TTAMethod

__all__ = [
    "ABPEM",
    "ABPEMConfig",
    "attention_bootstrap_loss",
    "balance_term",
    "fusion_with_query_key",
    "gaussian_kl",
    "principal_entropy",
]

_PE_EPS = 1e-6  # the official principal entropy's log offset (KEEP item 12)


@dataclass(frozen=True, kw_only=True)
class ABPEMConfig(MethodConfig):
    """Attributes (defaults: ``scripts/ours-ks50-video.sh``):
    cache_size: clips held by the feature cache (``--cache-size``, 32); the cache holds
        ``max(1, cache_size // B)`` batches, ``B`` = the size of the first batch after a reset.
    cache_batches: cache length in batches, overriding ``cache_size // B`` when set.
    prime_ent_k: classes in the principal entropy (``--prime-ent-k``, 8).
    ent_weight: weight of the principal entropy (1).
    bal_weight: weight of the balance term (1).
    attn_weight: weight of the attention bootstrapping term (1; KS50 audio: 5).
    fix_loss_bal: entropy of the mean probability (``--fix-loss-bal``, all scripts) instead of READ's
        entropy of the softmax of summed probabilities.
    safe_balance: ``0 ln 0 = 0`` in the balance term (FIX item 3; False reproduces the official NaN).
    score: "post" (KEEP: second forward after the update) or "pre" (the adaptation forward's current rows).
    """

    cache_size: int = 32
    cache_batches: int | None = None
    prime_ent_k: int = 8
    ent_weight: float = 1.0
    bal_weight: float = 1.0
    attn_weight: float = 1.0
    fix_loss_bal: bool = True
    safe_balance: bool = True
    score: str = "post"

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("cache_size", "prime_ent_k"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r} (adapt/methods/abpem.py)")
        if self.cache_batches is not None and (
            not isinstance(self.cache_batches, int) or isinstance(self.cache_batches, bool) or self.cache_batches < 1
        ):
            raise ValueError(
                f"cache_batches must be None or a positive int, got {self.cache_batches!r} (adapt/methods/abpem.py)"
            )
        for name in ("ent_weight", "bal_weight", "attn_weight"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number, got {value!r} (adapt/methods/abpem.py)")
        if self.score not in ("post", "pre"):
            raise ValueError(f"score must be 'post' or 'pre', got {self.score!r} (adapt/methods/abpem.py)")


def gaussian_kl(mean1: Tensor, std1: Tensor, mean2: Tensor, std2: Tensor) -> Tensor:
    """``KL(N(mean1, std1^2) || N(mean2, std2^2))`` element-wise (the official ``kl_div`` of ``TTA/ABPEM.py``)."""
    return torch.log(std2 / std1) + (std1**2 + (mean1 - mean2) ** 2) / (2 * std2**2) - 0.5


def _attention_with_query_key(attn: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """timm ``Attention`` on ``x`` ``[n, N, D]`` -> (output, ``q``, ``k``) with ``Sbar = q k^T`` ``[n, N, N]``.

    The mean over heads of the scaled scores ``q_h k_h^T d_h^-0.5`` is the full-width product ``Q K^T d_h^-0.5 / H``
    (the per-head dot products sum to the full one): ``q`` is ``Q`` at full width with that factor folded in, so
    the attention output itself can use the fused kernel and ``Sbar`` need never be formed (see
    :func:`attention_bootstrap_loss`).
    """
    n, tokens, _ = x.shape
    heads, head_dim = attn.num_heads, attn.head_dim
    qkv = attn.qkv(x).reshape(n, tokens, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    out = F.scaled_dot_product_attention(q, k, v)
    out = attn.proj(attn.norm(out.transpose(1, 2).reshape(n, tokens, heads * head_dim)))
    q_full = q.transpose(1, 2).reshape(n, tokens, heads * head_dim) * (attn.scale / heads)
    k_full = k.transpose(1, 2).reshape(n, tokens, heads * head_dim)
    return out, q_full, k_full


def fusion_with_query_key(model: nn.Module, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Fusion block(s) with the unified norms, final norm, token mean, head -> (logits, ``q``, ``k``).

    ``q``, ``k`` belong to the last fusion block, scaled so that ``q k^T`` is the official head-averaged pre-softmax
    score map ``Sbar``. The hook a composable model forward should offer: the fusion attention's queries and keys.
    """
    x = tokens
    q = k = None
    for block in model.blocks_u:
        if getattr(block.attn, "gate", None) is not None:
            raise ValueError("ABPEM: gated fusion attention is not supported (adapt/methods/abpem.py)")
        out, q, k = _attention_with_query_key(block.attn, block.norm1(x))
        x = x + out
        x = x + block.mlp(block.norm2(x))
    return model.head(model.pool(x, "norm")), q, k


def _block_stats_scores(q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
    """Per-clip (mean, unbiased std) of the score block ``q k^T`` ``[n, Nq, Nk]``, formed explicitly."""
    std, mean = torch.std_mean(torch.bmm(q, k.transpose(1, 2)).flatten(1), dim=1)
    return mean, std


def _block_stats_moments(q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
    """The same statistics from the first two moments of ``q`` and ``k``, without forming the block.

    With means ``a = mean_i q_i``, ``b = mean_j k_j`` and covariances ``Sq``, ``Sk`` (``[D, D]``): the block mean is
    ``a.b`` and its population variance ``tr(Sq Sk) + a^T Sk a + b^T Sq b`` (a sum of non-negative terms, so no
    cancellation); times ``M / (M - 1)``, ``M = Nq Nk``, for the unbiased form. Evaluated in fp32.
    """
    q, k = q.float(), k.float()
    a, b = q.mean(dim=1), k.mean(dim=1)
    qc, kc = q - a.unsqueeze(1), k - b.unsqueeze(1)
    cov_q = torch.bmm(qc.transpose(1, 2), qc) / q.shape[1]
    cov_k = torch.bmm(kc.transpose(1, 2), kc) / k.shape[1]
    var = (cov_q * cov_k).sum(dim=(1, 2))
    var = var + torch.einsum("nd,nde,ne->n", a, cov_k, a) + torch.einsum("nd,nde,ne->n", b, cov_q, b)
    count = q.shape[1] * k.shape[1]
    return (a * b).sum(dim=1), torch.sqrt(var * (count / (count - 1)))


def attention_bootstrap_loss(q: Tensor, k: Tensor, num_audio: int, via: str = "auto") -> Tensor:
    """``L_att`` of the score map ``q k^T``: cross-modal blocks pulled to the detached self blocks sharing their keys.

    Per clip (spec 3.2.4): ``KL(VA || AA) + KL(AV || VV)`` of the blocks' Gaussians (mean, unbiased std), the self
    blocks detached. ``via``: "scores" forms the blocks (``N^2 D`` work), "moments" uses their moments (``N D^2``,
    no ``N x N`` tensor), "auto" the cheaper one (moments below width ``N / 2``: the narrow test models).
    """
    if via == "auto":
        via = "moments" if 2 * q.shape[2] < q.shape[1] else "scores"
    if via not in ("scores", "moments"):
        raise ValueError(f"via must be 'auto', 'scores' or 'moments', got {via!r} (adapt/methods/abpem.py)")
    stats = _block_stats_moments if via == "moments" else _block_stats_scores
    q_a, q_v, k_a, k_v = q[:, :num_audio], q[:, num_audio:], k[:, :num_audio], k[:, num_audio:]
    with torch.no_grad():  # the anchors carry no gradient (the official code detaches them)
        mean_aa, std_aa = stats(q_a, k_a)
        mean_vv, std_vv = stats(q_v, k_v)
    mean_av, std_av = stats(q_a, k_v)  # audio queries, video keys
    mean_va, std_va = stats(q_v, k_a)  # video queries, audio keys
    return gaussian_kl(mean_va, std_va, mean_aa, std_aa).mean() + gaussian_kl(mean_av, std_av, mean_vv, std_vv).mean()


def principal_entropy(probs: Tensor, k: int) -> Tensor:
    """``mean_i sum_{c in top-k(p_i)} -p_ic ln(p_ic + 1e-6)`` (the selection carries no gradient)."""
    terms = -probs * torch.log(probs + _PE_EPS)
    index = torch.topk(probs.detach(), min(k, probs.shape[1]), dim=1).indices
    return torch.gather(terms, 1, index).sum(dim=1).mean()


def balance_term(logits: Tensor, fixed: bool = True, safe: bool = True) -> Tensor:
    """Balance term of ``[n, C]`` logits: the entropy of the mean probability ``pbar`` (``fixed``), else READ's form.

    ``safe`` (FIX item 3) takes ``pbar`` in log space (``logsumexp`` of the log-softmaxes minus ``ln n``): a class
    whose mean probability underflows to 0 then contributes 0 to the value *and* to the gradient (``xlogy`` alone
    would keep the NaN gradient of ``ln 0``). Unsafe: the official ``-sum pbar ln pbar`` (NaN at ``pbar_c = 0``).
    """
    if not fixed:
        summed = logits.softmax(dim=1).sum(dim=0)
        return -(summed.softmax(0) * summed.log_softmax(0)).sum()
    if safe:
        log_mean = torch.logsumexp(logits.log_softmax(dim=1), dim=0) - math.log(logits.shape[0])
        return -(log_mean.exp() * log_mean).sum()
    mean = logits.softmax(dim=1).mean(dim=0)
    return -(mean * mean.log()).sum()


class ABPEM(TTAMethod):
    """Fusion q/k/v adapted by principal entropy, balance and attention bootstrapping over a feature cache."""

    name = "abpem"
    config_class = ABPEMConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "ks50": {},  # scripts/ours-ks50-video.sh (batch 8)
        "vggsound": {"cache_size": 128, "prime_ent_k": 28},  # ours-vgg-video.sh (batch 32)
        "ks50_audio": {"prime_ent_k": 7, "attn_weight": 5.0},  # ours-ks50-audio.sh (batch 8)
        "vggsound_audio": {"cache_size": 64, "prime_ent_k": 30},  # ours-vgg-audio.sh (batch 32)
    }

    # how L_att's block statistics are computed (same numbers): "auto", "scores" or "moments"
    attention_stats: str = "auto"

    def init_state(self) -> None:
        self._cache: deque[Tensor] = deque()
        self._cache_len: int | None = None
        self.last_stats: dict[str, Tensor] = {}

    def reset_state(self) -> None:
        self._cache.clear()
        self._cache_len = None
        self.last_stats = {}

    def trainable_groups(self) -> tuple[str, ...]:
        return ("fusion_qkv",)

    @property
    def cache_length(self) -> int | None:
        """Batches the cache holds (fixed by the first batch after a reset; None before it)."""
        return self._cache_len

    def encode(self, audio: Tensor, video: Tensor) -> Tensor:
        """Frozen encoders -> detached ``concat(A, V)`` ``[B, Na + Nv, D]`` (no gradient can reach them, spec 1.2)."""
        model = self.model
        with torch.no_grad(), self.autocast():
            a = model.run_stack(model.embed_audio(audio), "a")
            v = model.run_stack(model.embed_video(video), "v")
            return torch.cat((a, v), dim=1)

    def forward_and_adapt(self, audio: Tensor, video: Tensor) -> Tensor:
        cfg = self.config
        feats = self.encode(audio, video)
        batch = feats.shape[0]
        if self._cache_len is None:
            self._cache_len = cfg.cache_batches or max(1, cfg.cache_size // batch)  # FIX item 4: >= 1 batch
        self._cache.append(feats)
        while len(self._cache) > self._cache_len:
            self._cache.popleft()
        tokens = torch.cat(tuple(self._cache), dim=0) if len(self._cache) > 1 else feats
        with self.autocast():
            logits, q, k = fusion_with_query_key(self.model, tokens)
        z = self.loss_input(logits)
        loss_pe = principal_entropy(z.softmax(dim=-1), cfg.prime_ent_k)
        loss_bal = balance_term(z, cfg.fix_loss_bal, cfg.safe_balance)
        if self.precision == "bf16":
            q, k = q.float(), k.float()
        loss_att = attention_bootstrap_loss(q, k, self.model.num_audio_patches, self.attention_stats)
        loss = cfg.ent_weight * loss_pe - cfg.bal_weight * loss_bal + cfg.attn_weight * loss_att
        self.last_stats = {
            "adapt_logits": logits.detach(),
            "losses": torch.stack([loss_pe.detach(), loss_bal.detach(), loss_att.detach()]).float(),
        }
        if cfg.ent_weight or cfg.bal_weight or cfg.attn_weight:
            self.apply_update(loss)
        else:
            self.optimizer.zero_grad(set_to_none=True)
        if cfg.score == "pre":
            return logits[-batch:]
        model = self.model
        with torch.no_grad(), self.autocast():  # the current batch only, its stored encoder output (spec 3.2.7)
            return model.head(model.pool(model.fuse(feats, "u"), "norm"))
