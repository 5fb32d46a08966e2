"""SuMi: sample identification (range smoothing + unimodal assistance) and mutual information sharing.

Paper: Z. Guo, T. Jin, "Smoothing the Shift: Towards Stable Test-Time Adaptation under Complex Multimodal Noises",
ICLR 2025. Upstream: zrguo/SuMi @ d0c08a8 (``src/sumi.py``, ``train.py``, ``main.py``, ``models/cav_mae.py``);
spec ``spec/method-sumi.md``.

Per batch ``t`` of a pass of ``iters`` batches (``r = t / iters``): the encoders give ``A`` ``[B, Na, D]`` and
``V`` ``[B, Nv, D]``; three heads: ``z_m`` (multimodal), ``z_a`` (``A`` plus one zero token, fusion with the audio
norms, ``norm_a``), ``z_v`` (``Na + 1 - Nv`` zero tokens first, then ``V``; video norms, ``norm_v``). Range filter
on ``f = concat(mean A, mean V)`` (detached): per dimension the batch range's quarter points widened by
``1.5 r`` half-ranges, a clip passes with at least ``2D (0.6 + 0.4 r)`` dimensions inside. Entropy filter:
``(H_a + mu H_v) / (1 + mu) >= tau_u`` and ``H_m <= tau_m``. On the selected clips: weights
``c = exp(E0 - H_m)`` (detached), mutual information ``M = KL((p_v + p_m)/2 || p_a) + KL((p_a + p_m)/2 || p_v)``;
loss ``mean c (H_m + lambda M)`` while ``t < iters / 2``, then ``mean(H_m) mean(c)``; minus READ's balance term.
One Adam step (GradScaler for fp16) on every LayerNorm (284 tensors); nothing if no clip is selected. Scored: a
second no-grad multimodal forward of the whole batch after the update (skipped when nothing was selected: it would
recompute the first forward's logits).

KEEP: ImageNet thresholds (item 1); the "IQR" as the middle half of the batch range (2); the schedule over a known
``iters`` (3, a config field); the second-half loss switch (4) and its ``mean(H) mean(c)`` weighting (5,
``late_per_clip=True`` gives ``mean(c H)``); READ's balance form (6); zero-token padding (7); post-update scoring
(11, ``score="pre"`` scores ``z_m``).
FIX: no update of parameters without a gradient (8, torch >= 2.0 semantics); the mixtures' log-probabilities in
log space, so zero probabilities give no NaN gradient (9, ``kl_log_space``; equal to the official values where
those are finite); one fused ``qkv`` (10); unused pieces dropped (15). Items 12-14 concern the run protocol.
Deviation (speed, same numbers): each encoder runs once per adaptation step and feeds both its unimodal pass and
the multimodal pass (the official code runs each twice with identical results; the gradients add up the same).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import MethodConfig, TTAMethod
from .losses import balance_entropy, softmax_entropy

logger = logging.getLogger(__name__)

__all__ = ["SuMi", "SuMiConfig", "mutual_information", "range_filter"]

_IMAGENET_MARGIN = math.log(1000) / 2 - 1  # the official constructor defaults (KEEP item 1)


@dataclass(frozen=True, kw_only=True)
class SuMiConfig(MethodConfig):
    """Attributes (defaults: the ``SuMi`` constructor and ``main.py``):
    iters: batches in the pass (``len(loader)``: KS50 2466 clips at batch 32 -> 78; VGGSound 14046 -> 439). Set it
        to the real stream length: the range filter and the loss switch are scheduled on ``t / iters``.
    uent_thresh: unimodal entropy threshold ``tau_u`` (e/10).
    ment_thresh: multimodal entropy threshold ``tau_m`` (ln(1000)/2 - 1).
    e_margin: ``E0`` of the weights ``exp(E0 - H_m)`` (ln(1000)/2 - 1).
    umu: weight ``mu`` of the video entropy in the unimodal mean (1).
    lamda: weight ``lambda`` of the mutual-information term (5).
    smoothing: apply the range filter (False: an ablation without it; the entropy filter alone selects).
    late_per_clip: second half with per-clip weights ``mean(c H)`` instead of the official ``mean(H) mean(c)``.
    kl_log_space: mixtures formed in log space (FIX item 9); False: the official probability-space ``kl_div``.
    score: "post" (KEEP: second forward after the update) or "pre" (the adaptation forward's ``z_m``).
    """

    iters: int = 78
    uent_thresh: float = math.e / 10
    ment_thresh: float = _IMAGENET_MARGIN
    e_margin: float = _IMAGENET_MARGIN
    umu: float = 1.0
    lamda: float = 5.0
    smoothing: bool = True
    late_per_clip: bool = False
    kl_log_space: bool = True
    score: str = "post"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.iters, int) or isinstance(self.iters, bool) or self.iters < 1:
            raise ValueError(
                f"iters must be a positive int (batches per pass), got {self.iters!r} (adapt/methods/sumi.py)"
            )
        for name in ("uent_thresh", "ment_thresh", "e_margin", "lamda"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number, got {value!r} (adapt/methods/sumi.py)")
        if not (isinstance(self.umu, int | float) and math.isfinite(self.umu) and self.umu >= 0):
            raise ValueError(f"umu must be a finite non-negative number, got {self.umu!r} (adapt/methods/sumi.py)")
        if self.score not in ("post", "pre"):
            raise ValueError(f"score must be 'post' or 'pre', got {self.score!r} (adapt/methods/sumi.py)")


def range_filter(feats: Tensor, progress: float) -> Tensor:
    """Boolean ``[B]``: clips with at least ``F (0.6 + 0.4 r)`` of their ``F`` features inside the widened range.

    Per feature: the quarter points ``Q1, Q3`` of the batch range ``[min, max]`` and ``IQR = Q3 - Q1``; bounds
    ``Q1 - 1.5 r IQR`` and ``Q3 + 1.5 r IQR`` (inclusive), ``r = t / iters`` (KEEP item 2: not quantiles).
    """
    high, low = feats.max(dim=0).values, feats.min(dim=0).values
    q1 = low + 0.25 * (high - low)
    q3 = low + 0.75 * (high - low)
    iqr = q3 - q1
    # the official expression 3 t IQR / (2 iters), with progress = t / iters
    lower, upper = q1 - 1.5 * progress * iqr, q3 + 1.5 * progress * iqr
    inside = ((feats >= lower) & (feats <= upper)).sum(dim=1)
    return inside >= feats.shape[1] * (0.6 + 0.4 * progress)


def _kl_to(log_target: Tensor, target: Tensor, log_p: Tensor) -> Tensor:
    """Per-row ``sum_c q_c (ln q_c - ln p_c)`` with ``0 ln 0 = 0``."""
    return (target * (log_target - log_p)).sum(dim=1)


def mutual_information(logits_a: Tensor, logits_m: Tensor, logits_v: Tensor, log_space: bool = True) -> Tensor:
    """Per clip ``KL((p_v + p_m)/2 || p_a) + KL((p_a + p_m)/2 || p_v)`` (spec 3.4.3; nothing detached).

    ``log_space`` forms ``ln((p_x + p_m)/2)`` as ``logaddexp`` of the log-softmaxes minus ln 2, so a mixture entry
    that underflows to 0 contributes 0 with a zero gradient (FIX item 9); otherwise the official ``kl_div`` on
    the probability-space mixture (NaN target gradient at exactly 0).
    """
    log_a, log_m, log_v = logits_a.log_softmax(1), logits_m.log_softmax(1), logits_v.log_softmax(1)
    if log_space:
        log_q_vm = torch.logaddexp(log_v, log_m) - math.log(2.0)
        log_q_am = torch.logaddexp(log_a, log_m) - math.log(2.0)
        return _kl_to(log_q_vm, log_q_vm.exp(), log_a) + _kl_to(log_q_am, log_q_am.exp(), log_v)
    p_a, p_m, p_v = logits_a.softmax(1), logits_m.softmax(1), logits_v.softmax(1)
    kl_1 = F.kl_div(log_a, (p_v + p_m) / 2, reduction="none").sum(-1)
    kl_2 = F.kl_div(log_v, (p_a + p_m) / 2, reduction="none").sum(-1)
    return kl_1 + kl_2


class SuMi(TTAMethod):
    """LayerNorm adaptation on clips selected by range smoothing and unimodal entropies, with mutual information."""

    name = "sumi"
    config_class = SuMiConfig
    # main.py sets only the class count; iters = len(loader) at the default batch 32.
    presets: ClassVar[dict[str, dict[str, Any]]] = {"ks50": {"iters": 78}, "vggsound": {"iters": 439}}

    @classmethod
    def config_for_stream(cls, batches: int) -> dict[str, Any]:
        """``iters`` is the pass length: the run gives the real number of batches of its test stream."""
        return {"iters": int(batches)}

    def init_state(self) -> None:
        self.t = 0
        self.last_stats: dict[str, Tensor] = {}
        self._warned = False

    def reset_state(self) -> None:
        self.t = 0
        self.last_stats = {}
        self._warned = False

    def trainable_groups(self) -> tuple[str, ...]:
        return ("norms",)

    def _unimodal_logits(self, tokens: Tensor, modality: str) -> Tensor:
        """Fusion pass of one modality padded with zero tokens to ``Na + 1`` tokens (spec 1), modality norms."""
        model = self.model
        batch, count, dim = tokens.shape
        # the official paddings: 1 zero token after the audio, 317 = 512 + 1 - 196 before the video
        pad = 1 if modality == "a" else max(0, model.num_audio_patches + 1 - count)
        zeros = tokens.new_zeros(batch, pad, dim)
        x = torch.cat((tokens, zeros) if modality == "a" else (zeros, tokens), dim=1)
        return model.head(model.pool(model.fuse(x, modality), f"norm_{modality}"))

    def forward_and_adapt(self, audio: Tensor, video: Tensor) -> Tensor:
        cfg = self.config
        model = self.model
        t, iters = self.t, cfg.iters
        self.t += 1
        if t >= iters and not self._warned:
            self._warned = True
            logger.warning(
                "SuMi: batch %d is past iters=%d: the range filter now rejects every clip; set iters to the "
                "stream length (adapt/methods/sumi.py)", t, iters
            )  # fmt: skip
        with self.autocast():
            a = model.run_stack(model.embed_audio(audio), "a")
            v = model.run_stack(model.embed_video(video), "v")
            logits_a = self._unimodal_logits(a, "a")
            logits_m = model.head(model.pool(model.fuse(torch.cat((a, v), dim=1), "u"), "norm"))
            logits_v = self._unimodal_logits(v, "v")
        feats = torch.cat((a.detach().mean(dim=1), v.detach().mean(dim=1)), dim=1).float()
        smooth = range_filter(feats, t / iters) if cfg.smoothing else torch.ones_like(feats[:, 0], dtype=torch.bool)
        z_a, z_m, z_v = (self.loss_input(z) for z in (logits_a, logits_m, logits_v))
        ent_a, ent_v = softmax_entropy(z_a).detach(), softmax_entropy(z_v).detach()
        ent_m = softmax_entropy(z_m)
        uni = (ent_a + cfg.umu * ent_v) / (1 + cfg.umu)
        keep = smooth & (uni >= cfg.uent_thresh) & (ent_m <= cfg.ment_thresh)
        selected = torch.nonzero(keep, as_tuple=True)[0]
        self.last_stats = {"selected": selected.detach()}
        # one host sync per step: whether to back-propagate (the official code intersects the ids on the host)
        if selected.numel() > 0:
            ent_s = ent_m[selected]
            coeff = torch.exp(cfg.e_margin - ent_s.detach())  # = 1 / exp(H - E0)
            balance = balance_entropy(z_m[selected].softmax(dim=-1))
            if t < 0.5 * iters:
                info = mutual_information(z_a[selected], z_m[selected], z_v[selected], cfg.kl_log_space)
                loss = (coeff * (ent_s + cfg.lamda * info)).mean()
            elif cfg.late_per_clip:
                loss = (coeff * ent_s).mean()
            else:
                loss = ent_s.mean() * coeff.mean()  # KEEP item 5: the official mean(H) * mean(c)
            self.apply_update(loss - balance)
        if cfg.score == "pre" or selected.numel() == 0:
            return logits_m  # without an update the second forward would recompute these logits (spec 3.5)
        with torch.no_grad():
            return self.forward_logits(audio, video)
