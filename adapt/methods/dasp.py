"""DASP: decoupling stability and plasticity (redundancy-diagnosed asymmetric adapters) for multimodal TTA.

Paper: Y. He, Z. Guo, T. Jin, "Decoupling Stability and Plasticity for Multi-Modal Test-Time Adaptation", CVPR 2026
(arXiv:2603.00574). Upstream: he4cs/DASP @ f43db39556d9bf14e96b83ea783bb41194a6e97b (``methods/dasp.py``,
``methods/base.py``, ``models/cav_mae.py``; spec/method-dasp.md).

Per batch (spec 3): frozen encoder tokens ``Z_a``, ``Z_v``; pooled unimodal embeddings ``h = mean(norm(U(Z)))``
(fusion block, unified norms, fused final norm); redundancy scores ``r_a``, ``r_v`` (RMS off-diagonal uncentred
cosine between feature columns, low-variance dimensions dropped). If ``|r_a - r_v| <= delta`` nothing is adapted or
updated. Otherwise the more redundant modality m gets ``Y = sg(Z_m + IA_m(Z_m))``, ``Z'_m = Y + EA_m(Y)`` (plastic
external adapter trained) and the other modality o gets ``Z'_o = Z_o + IA_o(Z_o)`` (stable internal adapter trained,
kept near its unadapted prediction by ``KL(softmax Dec(Z_o) || softmax Dec(Z'_o))``). Scored logits
``o = Dec([Z'_a; Z'_v])`` (before the update); loss ``sum pbar ln pbar + lambda_ent mean H(o) + lambda_kl KL``;
one Adam step on the tensors in the graph (Adam counts zero-gradient steps, which sets later bias corrections).

Adapters (``internal_adapter_{a,v}``: ``down [r, D]``, ``up [D, r]``; ``external_adapter_{a,v}`` ``[D, D]``; no
biases) start as zero maps; ``down`` is drawn from ``self.generator`` with the reference constructor's draws in its
order (``config.seed = 1`` with the official run's seed reproduces its values), and ``reset(seed)`` redraws them.

FIX: item 1 (width from the model, rank configurable), item 3 (the discarded multimodal pass is skipped; ``Dec(Z_o)``
reuses the no-grad embedding ``h_o``, the same operations), item 12 (no tkinter). KEEP: items 4-11 and 15 (see the
spec); the redundancy scores are computed in fp32 even under autocast (rounding only: a branch decision should not
hinge on fp16 noise). Item 2 (placement): adapters live on the model's device, names as upstream.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .adapters import (
    LowRankAdapter,
    decode,
    encode,
    linear_default_init_,
    pooled_embedding,
    redundancy_scores,
    width_of,
)
from .base import MethodConfig, TTAMethod
from .losses import softmax_entropy

logger = logging.getLogger(__name__)

__all__ = ["DASP", "DASPConfig"]


@dataclass(frozen=True, kw_only=True)
class DASPConfig(MethodConfig):
    """Attributes (defaults: DASP's ``cfgs/ks50_c/dasp.yaml``):
    delta: minimum gap ``|r_a - r_v|`` for an adapted, updating step (``DASP.DELTA``, 0.05).
    lambda_ent: weight of the mean entropy (``DASP.LAMBDA_ENT``, 0.5; VGGSound 0.8).
    lambda_kl: weight of the stability KL term (``DASP.LAMBDA_KL``, 1.0).
    rank: rank r of the internal adapters (32, a literal upstream).
    std_ratio: feature dimensions with std <= std_ratio x the largest are ignored by the redundancy (0.05).
    prob_eps: clamp of the probabilities in the diversity term (1e-7).
    """

    delta: float = 0.05
    lambda_ent: float = 0.5
    lambda_kl: float = 1.0
    rank: int = 32
    std_ratio: float = 0.05
    prob_eps: float = 1e-7

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("delta", "lambda_ent", "lambda_kl"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r} (adapt/methods/dasp.py)")
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 1:
            raise ValueError(f"rank must be a positive int, got {self.rank!r} (adapt/methods/dasp.py)")
        if not (isinstance(self.std_ratio, int | float) and 0 <= self.std_ratio < 1):
            raise ValueError(f"std_ratio must be in [0, 1), got {self.std_ratio!r} (adapt/methods/dasp.py)")
        if not (isinstance(self.prob_eps, int | float) and 0 <= self.prob_eps < 0.5):
            raise ValueError(f"prob_eps must be in [0, 0.5), got {self.prob_eps!r} (adapt/methods/dasp.py)")


class DASP(TTAMethod):
    """Asymmetric adaptation of the modality diagnosed as shifted (plastic) and of the other one (stable)."""

    name = "dasp"
    config_class = DASPConfig
    # DASP's cfgs/<dataset>_c/dasp.yaml over conf.py (spec 4); batch 64 in both.
    presets: ClassVar[dict[str, dict[str, Any]]] = {"ks50": {}, "vggsound": {"lambda_ent": 0.8}}

    def init_state(self) -> None:
        dim = width_of(self.model)
        if self.config.rank > dim:
            raise ValueError(f"rank {self.config.rank} exceeds the model width {dim} (adapt/methods/dasp.py)")

        def external() -> nn.Linear:
            return nn.Linear(dim, dim, bias=False, device="meta").to_empty(device=self.device)

        # Registration order of the reference (add_module: external a, v, internal a, v): names as upstream.
        self.adapters = nn.ModuleDict(
            {
                "external_adapter_a": external(),
                "external_adapter_v": external(),
                "internal_adapter_a": LowRankAdapter(dim, self.config.rank, self.device),
                "internal_adapter_v": LowRankAdapter(dim, self.config.rank, self.device),
            }
        )
        self._draw_adapters()

    @torch.no_grad()
    def _draw_adapters(self) -> None:
        """Initial adapters from ``self.generator``: the reference constructor's draws, in its order (spec 1)."""
        ad = self.adapters
        ad["internal_adapter_a"].init_(self.generator)
        ad["internal_adapter_v"].init_(self.generator)
        for key in ("external_adapter_a", "external_adapter_v"):
            # nn.Linear's default init is drawn (and thrown away) before zeroing, as upstream; keeps the stream.
            linear_default_init_(torch.empty(ad[key].weight.shape), self.generator)
            ad[key].weight.zero_()

    def reset(self, seed: int | None = None) -> None:
        """Restore the initial state; with a run ``seed``, draw fresh initial adapters from it (like construction)."""
        super().reset(seed)
        if seed is not None:
            self._draw_adapters()

    def extra_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return list(self.adapters.named_parameters())

    def reset_state(self) -> None:
        self.last: dict[str, Any] = {}  # diagnostics of the last step

    # ------------------------------------------------------------------ forwards
    def branch(self, r_a: float, r_v: float) -> str | None:
        """The modality treated as shifted ("a" or "v"), or None when the gap is at most ``delta`` (no update)."""
        if abs(r_a - r_v) > self.config.delta:
            return "a" if r_a > r_v else "v"
        return None

    def _features(self, audio: Tensor, video: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        with self.autocast(), torch.no_grad():  # frozen encoder and unimodal embeddings: no graph
            z_a, z_v = encode(self.model, audio, video)
            return z_a, z_v, pooled_embedding(self.model, z_a), pooled_embedding(self.model, z_v)

    def _adapted_forward(
        self, z_a: Tensor, z_v: Tensor, h_a: Tensor, h_v: Tensor, shifted: str
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(o, l_ref, l_ply)`` of a branch (grad mode of the caller); ``shifted`` is the redundant modality."""
        ad = self.adapters
        tokens = {"a": z_a, "v": z_v}
        stable = "v" if shifted == "a" else "a"
        with self.autocast():
            z_s = tokens[shifted]
            with torch.no_grad():  # the shifted modality's internal adapter is applied, not trained (sg)
                y = z_s + ad[f"internal_adapter_{shifted}"](z_s)
            tokens[shifted] = y + ad[f"external_adapter_{shifted}"](y)
            # Dec(Z_stable) = head(h_stable): the same operations as the reference's forward_decoder(z), no grad.
            logits_ref = self.model.head(h_v if stable == "v" else h_a)
            z_o = tokens[stable]
            tokens[stable] = z_o + ad[f"internal_adapter_{stable}"](z_o)
            logits_ply = decode(self.model, tokens[stable])
            logits = decode(self.model, torch.cat((tokens["a"], tokens["v"]), dim=1))  # audio tokens first
        return logits, logits_ref, logits_ply

    def _losses(self, logits: Tensor, logits_ref: Tensor | None, logits_ply: Tensor | None) -> dict[str, Tensor]:
        cfg = self.config
        o = self.loss_input(logits)
        loss_ent = softmax_entropy(o).mean()
        p_mean = o.softmax(1).clamp(cfg.prob_eps, 1 - cfg.prob_eps).mean(0)
        loss_div = (p_mean * p_mean.log()).sum()
        if logits_ref is None:
            loss_kl = torch.zeros((), device=o.device, dtype=loss_div.dtype)
        else:
            log_ply = self.loss_input(logits_ply).log_softmax(1)
            loss_kl = F.kl_div(log_ply, self.loss_input(logits_ref).softmax(1), reduction="batchmean")
        total = loss_div + cfg.lambda_ent * loss_ent + cfg.lambda_kl * loss_kl
        return {"div": loss_div, "ent": loss_ent, "kl": loss_kl, "total": total}

    def forward_logits(self, audio: Tensor, video: Tensor) -> Tensor:
        """Scored logits of the current adapters for this batch's branch, without updating."""
        z_a, z_v, h_a, h_v = self._features(audio, video)
        shifted = self.branch(*redundancy_scores(h_a.float(), h_v.float(), self.config.std_ratio))
        with torch.no_grad():
            if shifted is None:
                with self.autocast():
                    return decode(self.model, torch.cat((z_a, z_v), dim=1))
            return self._adapted_forward(z_a, z_v, h_a, h_v, shifted)[0]

    def forward_and_adapt(self, audio: Tensor, video: Tensor) -> Tensor:
        z_a, z_v, h_a, h_v = self._features(audio, video)
        r_a, r_v = redundancy_scores(h_a.float(), h_v.float(), self.config.std_ratio)
        shifted = self.branch(r_a, r_v)
        if shifted is None:  # item 6 KEEP: no adapter at all, no update
            with self.autocast(), torch.no_grad():
                logits = decode(self.model, torch.cat((z_a, z_v), dim=1))
                losses = self._losses(logits, None, None)
            self.last = {"r_a": r_a, "r_v": r_v, "branch": None, **{k: v.detach() for k, v in losses.items()}}
            return logits
        logits, logits_ref, logits_ply = self._adapted_forward(z_a, z_v, h_a, h_v, shifted)
        losses = self._losses(logits, logits_ref, logits_ply)
        self.last = {
            "r_a": r_a,
            "r_v": r_v,
            "branch": shifted,
            "logits_ref": logits_ref.detach(),
            "logits_ply": logits_ply.detach(),
            **{k: v.detach() for k, v in losses.items()},
        }
        self.apply_update(losses["total"])
        return logits
