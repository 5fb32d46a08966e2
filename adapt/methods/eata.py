"""EATA: efficient anti-forgetting test-time adaptation.

Paper: S. Niu, J. Wu, Y. Zhang, Y. Chen, S. Zheng, P. Zhao, M. Tan, "Efficient Test-Time Model Adaptation without
Forgetting", ICML 2022. Upstream: mr-eggplant/EATA; as adapted in Luchicken/BriMPR ``TTA/EATA.py``
(spec methods.md section 4).

Per batch: entropies ``e`` of the pre-update logits; reliable set ``e < E0`` (``E0 = e_margin * ln C``); then the
non-redundant ones (``|cos(m, p_i)| < d_margin`` against the moving average ``m`` of probabilities, skipped while
``m`` is None); ``m`` is updated with those probabilities (momentum 0.9); loss ``mean w_i e_i`` with
``w_i = 1 / exp(e_i - E0)`` plus the EWC term ``fisher_alpha * sum F (theta - theta*)^2``; one Adam step only if
some sample survived. Trains every LayerNorm (group ``norms``).

Fisher (4.1): mean over batches of squared gradients of the *batch-mean* cross-entropy against the model's own
argmax, fp32, from the first ``fisher_size`` source clips; ``theta*`` = the values at that time.
:func:`compute_fisher` returns an entry for every trained tensor (zeros where the forward gives no gradient, like
the shipped multi-GPU pickles; numerically the same loss as the single-GPU dict without them).

KEEP (item 16): batch-mean Fisher, ``fisher_alpha = 1``, ``d_margin = 0.1`` (configurable). FIX (item 7): exact
reset. Reset clears ``m``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import MethodConfig, SourceData, TTAMethod, take_clips
from .losses import entropy_weights, reliable, softmax_entropy

__all__ = ["EATA", "EATAConfig", "FisherTable", "compute_fisher", "fisher_from_tensors", "fisher_to_tensors"]

FisherTable = dict[str, tuple[Tensor, Tensor]]  # parameter name -> (F, theta*)

PARAM_GROUPS = ("norms",)


@dataclass(frozen=True, kw_only=True)
class EATAConfig(MethodConfig):
    """Attributes:
    e_margin: entropy margin E0 in units of ln C (0.4).
    d_margin: redundancy threshold on |cosine| (0.1 in the comparison; original EATA 0.05).
    fisher_alpha: EWC weight (1.0 in the comparison; original EATA 2000); 0 disables EWC (= ETA).
    fisher_size: source clips used for the Fisher information (2000).
    momentum: moving-average momentum of the probability vector (0.9).
    """

    e_margin: float = 0.4
    d_margin: float = 0.1
    fisher_alpha: float = 1.0
    fisher_size: int = 2000
    momentum: float = 0.9

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.fisher_alpha < 0:
            raise ValueError(f"fisher_alpha must be >= 0, got {self.fisher_alpha} (adapt/methods/eata.py)")
        if self.fisher_size <= 0:
            raise ValueError(f"fisher_size must be positive, got {self.fisher_size} (adapt/methods/eata.py)")


def compute_fisher(
    model: nn.Module,
    source: Iterable,
    num_clips: int = 2000,
    groups: tuple[str, ...] = PARAM_GROUPS,
) -> FisherTable:
    """EATA's diagonal Fisher (spec 4.1): ``F = mean_b (grad of mean_i CE(z_i, argmax z_i))^2``, fp32, no autocast.

    Args:
        model: the (unadapted) classifier; its ``requires_grad`` flags and gradients are restored afterwards.
        source: iterable of ``(audio, video, ...)`` batches of clean source clips.
        num_clips: use the first ``num_clips`` clips (EATA's ``fisher_size``).
        groups: model parameter groups to compute it for (EATA trains ``norms``).

    Returns:
        ``{name: (F, theta*)}`` for every selected tensor (``F`` all-zero where the forward gives no gradient).
    """
    named = list(model.select_parameters(*groups))
    device = next(model.parameters()).device
    flags = {id(p): p.requires_grad for p in model.parameters()}
    sums = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in named}
    batches = 0
    try:
        model.requires_grad_(False)
        for _, p in named:
            p.requires_grad_(True)
            p.grad = None
        with torch.enable_grad():
            for audio, video in take_clips(source, num_clips):
                logits = model(audio.to(device).float(), video.to(device).float(), mode="multimodal")
                loss = F.cross_entropy(logits, logits.argmax(1))
                loss.backward()
                for n, p in named:
                    if p.grad is not None:
                        sums[n] += p.grad.detach().float() ** 2
                        p.grad = None
                batches += 1
    finally:
        for p in model.parameters():
            p.requires_grad_(flags[id(p)])
            p.grad = None
    if batches == 0:
        raise ValueError("compute_fisher: the source iterable yielded no batch (adapt/methods/eata.py)")
    return {n: (sums[n] / batches, p.detach().clone().float()) for n, p in named}


def fisher_to_tensors(fisher: FisherTable) -> dict[str, Tensor]:
    """Flat ``fisher/<name>`` and ``anchor/<name>`` tensors of a table (the cache file's keys)."""
    return {f"{k}/{n}": t for n, pair in fisher.items() for k, t in zip(("fisher", "anchor"), pair, strict=True)}


def fisher_from_tensors(tensors: dict[str, Tensor], path: object = "tensors") -> FisherTable:
    """The table of flat ``fisher/<name>`` + ``anchor/<name>`` tensors (names sorted)."""
    names = sorted(k.split("/", 1)[1] for k in tensors if k.startswith("fisher/"))
    if not names or any(f"anchor/{n}" not in tensors for n in names):
        raise ValueError(f"{path}: not an EATA Fisher file (fisher/<name> + anchor/<name>) (adapt/methods/eata.py)")
    return {n: (tensors[f"fisher/{n}"], tensors[f"anchor/{n}"]) for n in names}


class EATA(TTAMethod):
    """Reliable, non-redundant, re-weighted entropy minimisation with an EWC anchor."""

    name = "eata"
    config_class = EATAConfig
    source_data = SourceData(
        argument="fisher", cache_key="fisher", kind="eata-fisher", size_field="fisher_size", size_key="num_clips",
        compute=compute_fisher, to_tensors=fisher_to_tensors, from_tensors=fisher_from_tensors,
        needed=lambda config: config.fisher_alpha > 0,  # fisher_alpha = 0 is ETA: no EWC term, no Fisher
    )  # fmt: skip

    def trainable_groups(self) -> tuple[str, ...]:
        return PARAM_GROUPS

    def init_state(self) -> None:
        self.e_margin = self.config.e_margin * math.log(self.num_classes)
        self.fisher: list[tuple[nn.Parameter, Tensor, Tensor]] = []
        table, self.source_value = self.source_value, None
        params = dict(self.model.named_parameters())
        for name, (fisher, anchor) in (table or {}).items():
            if name not in params:
                raise ValueError(f"Fisher entry {name!r} is not a model parameter (adapt/methods/eata.py)")
            p = params[name]
            if fisher.shape != p.shape or anchor.shape != p.shape:
                raise ValueError(f"Fisher entry {name!r} has shape {tuple(fisher.shape)}, expected {tuple(p.shape)}")
            self.fisher.append((p, fisher.to(p.device, torch.float32), anchor.to(p.device, torch.float32)))

    def reset_state(self) -> None:
        self.model_probs: Tensor | None = None

    def forward_and_adapt(self, audio: Tensor, video: Tensor) -> Tensor:
        cfg = self.config
        logits = self.forward_logits(audio, video)
        z = self.loss_input(logits)
        entropy = softmax_entropy(z)
        ids1 = reliable(entropy, self.e_margin)
        probs1 = z[ids1].softmax(1)
        if self.model_probs is not None:
            cosine = F.cosine_similarity(self.model_probs.unsqueeze(0), probs1, dim=1)
            ids2 = torch.nonzero(cosine.abs() < cfg.d_margin, as_tuple=True)[0]
        else:
            ids2 = torch.arange(ids1.numel(), device=ids1.device)
        selected_probs = probs1[ids2].detach()
        if selected_probs.shape[0] > 0:
            mean = selected_probs.mean(0)
            m = self.model_probs
            self.model_probs = mean if m is None else cfg.momentum * m + (1 - cfg.momentum) * mean
        if ids2.numel() == 0:
            return logits  # nothing reliable and new: no update (the loss would be NaN)
        selected = entropy[ids1][ids2]
        loss = (selected * entropy_weights(selected, self.e_margin)).mean(0)
        if cfg.fisher_alpha > 0:
            for p, fisher, anchor in self.fisher:
                loss = loss + cfg.fisher_alpha * (fisher * (p - anchor) ** 2).sum()
        self.apply_update(loss)
        return logits
