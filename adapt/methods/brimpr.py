"""BriMPR: bridging modalities via progressive re-alignment (prompt-based multimodal test-time adaptation).

Paper: "Bridging Modalities via Progressive Re-alignment for Multimodal Test-Time Adaptation", AAAI 2026.
Upstream: Luchicken/BriMPR ``TTA/BriMPR.py``, ``models/vapt.py`` (spec methods.md section 8).

Deep prompts ``prompts_a``, ``prompts_v`` ``[prompt_layers, num_prompts, D]`` are prepended to the tokens of the
first ``prompt_layers`` blocks of each modality stack (the model is frozen). Per batch (8.2), under the configured
precision: embed; masked copies keeping the ``int(L (1 - mask))`` lowest draws of ``rand(B, La)`` then
``rand(B, Lv)`` from ``self.generator``; both stacks on the full and masked tokens with the same prompts, layer
features ``F^a, F^v [B, L, D]`` from the full streams; teacher = fusion of the *detached* full tokens -> ``z``
(scored) and ``F^u``; students ``z_avm`` (audio + masked video) and ``z_amv``; unimodal representations ``c_a``,
``c_v`` (unified + modality-specific fusion passes averaged).
Losses (8.3): alignment ``mean_l D^a_l + mean_l D^v_l`` between source and test (std, mean) with
``pairwise_distance`` (eps 1e-6); temperature ``T = 1 + a / (1 + exp(b - mean D^u))``; recombination
``lambda_a CE_T(z_amv, z) + lambda_v CE_T(z_avm, z)`` with ``lambda_a = Dv / (Da + Dv)``; bidirectional InfoNCE
of ``c_a``/``c_v`` at ``tau``. One Adam step on the prompts (GradScaler for fp16). Source statistics (8.5):
fp32, no prompts, unbiased ``std_mean`` over ``num_samples_source`` clips.

KEEP (item 20): eps in the distance, unbiased std, tau 0.07 (one modality corrupted; use 0.25 for both).
KEEP (item 21): masked tokens stay in ascending-noise order.
Deviations: ``reset()`` restores the prompts drawn at construction (``U(-1e-4, 1e-4)`` from a generator seeded with
``(config.seed, "prompts")``), and ``reset(seed)`` draws them from ``(seed, "prompts")``, instead of drawing from the
CUDA RNG, so resets are exact and reproducible on any device; a batch of one sample has no unbiased std, so it is
scored but not adapted (the references would write NaN prompts).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import MethodConfig, SourceData, TTAMethod, derive_seed, take_clips
from .losses import info_nce_bidirectional, soft_cross_entropy

logger = logging.getLogger(__name__)

__all__ = ["BriMPR", "BriMPRConfig", "SourceStats", "compute_source_stats", "load_reference_source_stats"]

_STAT_KEYS = ("std_a", "mean_a", "std_v", "mean_v", "std_u", "mean_u")


@dataclass(frozen=True)
class SourceStats:
    """Source (std, mean) of the layer features: ``*_a``, ``*_v`` ``[L, D]``, ``*_u`` ``[1, D]`` (spec 8.5)."""

    std_a: Tensor
    mean_a: Tensor
    std_v: Tensor
    mean_v: Tensor
    std_u: Tensor
    mean_u: Tensor

    def to(self, device: torch.device | str) -> SourceStats:
        return SourceStats(*(getattr(self, k).to(device, torch.float32) for k in _STAT_KEYS))

    def as_dict(self) -> dict[str, Tensor]:
        return {k: getattr(self, k) for k in _STAT_KEYS}

    @classmethod
    def from_dict(cls, tensors: dict[str, Tensor], origin: object = "dict") -> SourceStats:
        missing = [k for k in _STAT_KEYS if k not in tensors]
        if missing:
            raise ValueError(f"{origin}: source statistics lack {missing} (adapt/methods/brimpr.py)")
        return cls(*(tensors[k] for k in _STAT_KEYS))


@dataclass(frozen=True, kw_only=True)
class BriMPRConfig(MethodConfig):
    """Attributes:
    num_prompts: prompt tokens per layer and modality (10).
    prompt_layers: number of prompted blocks per stack, from the first (11).
    prompt_init: prompts are drawn from U(-prompt_init, prompt_init) (1e-4).
    mask: token mask ratio of the masked copies (0.5).
    a: amplitude of the adaptive temperature (0.2).
    b: offset of the adaptive temperature (5).
    tau: InfoNCE temperature (0.07 one modality corrupted, 0.25 both).
    num_samples_source: source clips for the statistics (32).
    """

    num_prompts: int = 10
    prompt_layers: int = 11
    prompt_init: float = 1e-4
    mask: float = 0.5
    a: float = 0.2
    b: float = 5.0
    tau: float = 0.07
    num_samples_source: int = 32

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_prompts < 1 or self.prompt_layers < 1:
            raise ValueError(
                f"num_prompts and prompt_layers must be >= 1, got {self.num_prompts}, {self.prompt_layers} "
                "(adapt/methods/brimpr.py)"
            )
        if not 0 < self.mask < 1:
            raise ValueError(f"mask must be in (0, 1), got {self.mask} (adapt/methods/brimpr.py)")
        if self.tau <= 0:
            raise ValueError(f"tau must be positive, got {self.tau} (adapt/methods/brimpr.py)")


# ---------------------------------------------------------------------- source statistics
@torch.no_grad()
def compute_source_stats(model: nn.Module, source: Iterable, num_samples: int = 32) -> SourceStats:
    """BriMPR's source statistics (spec 8.5): fp32, no prompts, unbiased ``std_mean`` over the first clips.

    Args:
        model: the frozen classifier.
        source: iterable of ``(audio, video, ...)`` batches of clean source clips.
        num_samples: clips used (``num_samples_source``, 32); at least 2.
    """
    device = next(model.parameters()).device
    feats_a, feats_v, feats_u = [], [], []
    for audio, video in take_clips(source, num_samples):
        a, fa = model.encode("a", audio.to(device).float(), layer_features=True)
        v, fv = model.encode("v", video.to(device).float(), layer_features=True)
        fu = model.fuse_pool(a, v).unsqueeze(1)
        feats_a.append(fa.float())
        feats_v.append(fv.float())
        feats_u.append(fu.float())
    n = sum(f.shape[0] for f in feats_a)
    if n < 2:
        raise ValueError(f"compute_source_stats needs at least 2 clips, got {n} (adapt/methods/brimpr.py)")
    std_a, mean_a = torch.std_mean(torch.cat(feats_a), dim=0)
    std_v, mean_v = torch.std_mean(torch.cat(feats_v), dim=0)
    std_u, mean_u = torch.std_mean(torch.cat(feats_u), dim=0)
    return SourceStats(std_a, mean_a, std_v, mean_v, std_u, mean_u)


class BriMPR(TTAMethod):
    """Prompt-based adaptation with feature alignment, masked recombination and cross-modal contrast."""

    name = "brimpr"
    config_class = BriMPRConfig
    source_data = SourceData(
        argument="source_stats", cache_key="brimpr-stats", kind="brimpr-source-stats", size_field="num_samples_source",
        size_key="num_samples", compute=compute_source_stats, to_tensors=SourceStats.as_dict,
        from_tensors=SourceStats.from_dict,
    )  # fmt: skip
    protocol_overrides = {"both": {"tau": 0.25}}  # run_both.py's contrastive temperature (spec methods.md 8)

    @classmethod
    def config_for_model(cls, model: nn.Module) -> dict[str, Any]:
        """Prompts in every modality-specific block: 11 for the released architecture, fewer on small variants."""
        return {"prompt_layers": min(BriMPRConfig.prompt_layers, model.depth)}

    def init_state(self) -> None:
        cfg = self.config
        depth, dim = self.model.depth, self.model.embed_dim
        if cfg.prompt_layers > depth:
            raise ValueError(
                f"prompt_layers {cfg.prompt_layers} exceeds the stack depth {depth} (adapt/methods/brimpr.py)"
            )
        stats, self.source_value = self.source_value, None
        stats = (SourceStats.from_dict(stats) if isinstance(stats, dict) else stats).to(self.device)
        for key in ("std_a", "mean_a", "std_v", "mean_v"):
            if tuple(getattr(stats, key).shape) != (depth, dim):
                raise ValueError(
                    f"source statistic {key} has shape {tuple(getattr(stats, key).shape)} (adapt/methods/brimpr.py)"
                )
        self.source_stats = stats
        shape = (cfg.prompt_layers, cfg.num_prompts, dim)
        self.prompts_a = nn.Parameter(torch.empty(shape, device=self.device))
        self.prompts_v = nn.Parameter(torch.empty(shape, device=self.device))
        self._draw_prompts(cfg.seed)

    @torch.no_grad()
    def _draw_prompts(self, seed: int) -> None:
        """Prompts i.i.d. ``U(-prompt_init, prompt_init)`` from a generator seeded with ``(seed, "prompts")``."""
        init = torch.Generator().manual_seed(derive_seed(seed, "brimpr", "prompts"))
        bound = self.config.prompt_init
        for prompts in (self.prompts_a, self.prompts_v):
            prompts.copy_(torch.empty(prompts.shape).uniform_(-bound, bound, generator=init))

    def reset(self, seed: int | None = None) -> None:
        """Restore the initial state; with a run ``seed``, also draw fresh initial prompts from it (spec 8.4)."""
        super().reset(seed)
        if seed is not None:
            self._draw_prompts(seed)

    def extra_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [("prompts_a", self.prompts_a), ("prompts_v", self.prompts_v)]

    def reset_state(self) -> None:
        self.last_losses: dict[str, float] = {}

    # ------------------------------------------------------------------ forwards
    def adaptation_forward(self, audio: Tensor, video: Tensor) -> dict[str, Tensor]:
        """The ``mode='all'`` forward of spec 8.2 (grad mode of the caller); draws the two masks."""
        m = self.model
        batch = audio.shape[0]
        noise_a = self.uniform(batch, m.num_audio_patches).to(audio.device)
        noise_v = self.uniform(batch, m.num_video_patches).to(video.device)
        keep_a = (noise_a, int(m.num_audio_patches * (1 - self.config.mask)))
        keep_v = (noise_v, int(m.num_video_patches * (1 - self.config.mask)))
        # the full and the masked stream of a modality start from the same patch tokens: embedded once
        tokens_a, tokens_v = m.embed_audio(audio), m.embed_video(video)
        a, feats_a = m.run_stack(tokens_a, "a", prompts=self.prompts_a, layer_features=True)
        am = m.run_stack(m.keep_tokens(tokens_a, *keep_a), "a", prompts=self.prompts_a)
        v, feats_v = m.run_stack(tokens_v, "v", prompts=self.prompts_v, layer_features=True)
        vm = m.run_stack(m.keep_tokens(tokens_v, *keep_v), "v", prompts=self.prompts_v)

        pooled_u = m.fuse_pool(a.detach(), v.detach())  # teacher: no gradient (8.2 step 4)
        return {
            "logits": m.forward_head(pooled_u),
            "logits_avm": m.forward_head(m.fuse_pool(a, vm)),
            "logits_amv": m.forward_head(m.fuse_pool(am, v)),
            "rep_a": m.fuse_pool(a, None, "missingaudioonly"),  # (unified + audio-norm fusion passes) / 2
            "rep_v": m.fuse_pool(None, v, "missingvideoonly"),
            "feats_a": feats_a,
            "feats_v": feats_v,
            "feats_u": pooled_u.unsqueeze(1),
        }

    def forward_logits(self, audio: Tensor, video: Tensor) -> Tensor:
        """Prompted multimodal logits (no masking, no extra passes)."""
        with self.autocast():
            return self.model(audio, video, prompts={"a": self.prompts_a, "v": self.prompts_v})

    def forward_and_adapt(self, audio: Tensor, video: Tensor) -> Tensor:
        cfg = self.config
        with self.autocast():
            out = self.adaptation_forward(audio, video)
        logits = out["logits"]
        if logits.shape[0] < 2:
            logger.debug(
                "BriMPR: batch of %d sample(s) has no unbiased std; scored without adaptation", logits.shape[0]
            )
            return logits
        src = self.source_stats
        std_a, mean_a = torch.std_mean(out["feats_a"], dim=0)
        std_v, mean_v = torch.std_mean(out["feats_v"], dim=0)
        std_u, mean_u = torch.std_mean(out["feats_u"], dim=0)
        dist_a = F.pairwise_distance(src.std_a, std_a) + F.pairwise_distance(src.mean_a, mean_a)
        dist_v = F.pairwise_distance(src.std_v, std_v) + F.pairwise_distance(src.mean_v, mean_v)
        dist_u = F.pairwise_distance(src.std_u, std_u) + F.pairwise_distance(src.mean_u, mean_u)
        loss_align = dist_a.mean() + dist_v.mean()

        # adaptive temperature from the detached fused distance (8.3); float32 like the reference's tensor(b)
        temperature = 1 + cfg.a / (1 + torch.exp(torch.tensor(cfg.b) - dist_u.mean().item()))
        teacher = self.loss_input(logits).clone().detach()
        loss_amv = soft_cross_entropy(self.loss_input(out["logits_amv"]), teacher, temperature.to(teacher.device))
        loss_avm = soft_cross_entropy(self.loss_input(out["logits_avm"]), teacher, temperature.to(teacher.device))
        da, dv = dist_a.mean().item(), dist_v.mean().item()
        loss_cons = dv / (da + dv) * loss_amv.mean(0) + da / (da + dv) * loss_avm.mean(0)

        loss_ctr = info_nce_bidirectional(out["rep_a"], out["rep_v"], cfg.tau)
        loss = loss_align + loss_cons + loss_ctr
        self.last_losses = {
            "align": float(loss_align.detach()),
            "consistency": float(loss_cons.detach()),
            "contrastive": float(loss_ctr.detach()),
            "temperature": float(temperature),
        }
        self.apply_update(loss)
        return logits


def load_reference_source_stats(path: str | Path) -> SourceStats:
    """Read a shipped ``src_stat_<dataset>.pth`` (a ``((std, mean),) * 3`` tuple of CUDA tensors) onto the CPU."""
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    try:
        (std_a, mean_a), (std_v, mean_v), (std_u, mean_u) = obj
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"{path}: expected ((std_a, mean_a), (std_v, mean_v), (std_u, mean_u)) (adapt/methods/brimpr.py)"
        ) from err
    return SourceStats(std_a, mean_a, std_v, mean_v, std_u, mean_u)
