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

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import MethodConfig, TTAMethod, derive_seed
from .losses import info_nce_bidirectional, soft_cross_entropy
from .source_data import cached_tensors, load_tensors, save_tensors, take_clips

logger = logging.getLogger(__name__)

__all__ = [
    "BriMPR",
    "BriMPRConfig",
    "SourceStats",
    "compute_source_stats",
    "load_reference_source_stats",
    "load_source_stats",
    "save_source_stats",
    "source_stats_cached",
]

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
            raise ValueError(f"{origin}: source statistics lack {missing} (adapt/brimpr.py)")
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
                "(adapt/brimpr.py)"
            )
        if not 0 < self.mask < 1:
            raise ValueError(f"mask must be in (0, 1), got {self.mask} (adapt/brimpr.py)")
        if self.tau <= 0:
            raise ValueError(f"tau must be positive, got {self.tau} (adapt/brimpr.py)")


class BriMPR(TTAMethod):
    """Prompt-based adaptation with feature alignment, masked recombination and cross-modal contrast."""

    name = "brimpr"
    config_class = BriMPRConfig
    needs_source = True

    def __init__(
        self,
        model: nn.Module,
        config: BriMPRConfig | None = None,
        *,
        source_stats: SourceStats | dict[str, Tensor] | None = None,
        source: Iterable | None = None,
    ) -> None:
        config = config or BriMPRConfig()
        if source_stats is None:
            if source is None:
                raise ValueError(
                    "BriMPR needs source_stats= (see source_stats_cached) or source= batches (adapt/brimpr.py)"
                )
            source_stats = compute_source_stats(model, source, num_samples=config.num_samples_source)
        if isinstance(source_stats, dict):
            source_stats = SourceStats.from_dict(source_stats)
        self._stats_in = source_stats
        super().__init__(model, config)

    def init_state(self) -> None:
        cfg = self.config
        depth = min(len(self.model.blocks_a), len(self.model.blocks_v))
        if cfg.prompt_layers > depth:
            raise ValueError(f"prompt_layers {cfg.prompt_layers} exceeds the stack depth {depth} (adapt/brimpr.py)")
        dim = self.model.norm.weight.shape[0]
        stats = self._stats_in.to(self.device)
        del self._stats_in
        for key in ("std_a", "mean_a", "std_v", "mean_v"):
            if tuple(getattr(stats, key).shape) != (len(self.model.blocks_a), dim):
                raise ValueError(
                    f"source statistic {key} has shape {tuple(getattr(stats, key).shape)} (adapt/brimpr.py)"
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
    def _heads(self, tokens: Tensor, selector: str = "u", norm: str = "norm") -> Tensor:
        return self.model.pool(self.model.fuse(tokens, selector=selector), norm=norm)

    def adaptation_forward(self, audio: Tensor, video: Tensor) -> dict[str, Tensor]:
        """The ``mode='all'`` forward of spec 8.2 (grad mode of the caller); draws the two masks."""
        m = self.model
        a0 = m.embed_audio(audio)
        v0 = m.embed_video(video)
        batch = a0.shape[0]
        keep_a = int(a0.shape[1] * (1 - self.config.mask))
        keep_v = int(v0.shape[1] * (1 - self.config.mask))
        noise_a = self.uniform(batch, a0.shape[1]).to(a0.device)
        noise_v = self.uniform(batch, v0.shape[1]).to(v0.device)
        am0 = m.keep_tokens(a0, noise_a, keep_a)
        vm0 = m.keep_tokens(v0, noise_v, keep_v)
        a, feats_a = m.run_stack(a0, "a", prompts=self.prompts_a, layer_features=True)
        am = m.run_stack(am0, "a", prompts=self.prompts_a)
        v, feats_v = m.run_stack(v0, "v", prompts=self.prompts_v, layer_features=True)
        vm = m.run_stack(vm0, "v", prompts=self.prompts_v)

        pooled_u = self._heads(torch.cat((a, v), dim=1).detach())  # teacher: no gradient (8.2 step 4)
        logits = m.mlp_head(pooled_u)
        logits_avm = m.mlp_head(self._heads(torch.cat((a, vm), dim=1)))
        logits_amv = m.mlp_head(self._heads(torch.cat((am, v), dim=1)))
        rep_a = (self._heads(a, "u", "norm") + self._heads(a, "a", "norm_a")) / 2
        rep_v = (self._heads(v, "u", "norm") + self._heads(v, "v", "norm_v")) / 2
        return {
            "logits": logits,
            "logits_avm": logits_avm,
            "logits_amv": logits_amv,
            "rep_a": rep_a,
            "rep_v": rep_v,
            "feats_a": feats_a,
            "feats_v": feats_v,
            "feats_u": pooled_u.unsqueeze(1),
        }

    def forward_logits(self, audio: Tensor, video: Tensor) -> Tensor:
        """Prompted multimodal logits (no masking, no extra passes)."""
        m = self.model
        with self.autocast():
            a = m.run_stack(m.embed_audio(audio), "a", prompts=self.prompts_a)
            v = m.run_stack(m.embed_video(video), "v", prompts=self.prompts_v)
            return m.mlp_head(self._heads(torch.cat((a, v), dim=1)))

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
        a, fa = model.run_stack(model.embed_audio(audio.to(device).float()), "a", layer_features=True)
        v, fv = model.run_stack(model.embed_video(video.to(device).float()), "v", layer_features=True)
        fu = model.pool(model.fuse(torch.cat((a, v), dim=1), selector="u"), norm="norm").unsqueeze(1)
        feats_a.append(fa.float())
        feats_v.append(fv.float())
        feats_u.append(fu.float())
    n = sum(f.shape[0] for f in feats_a)
    if n < 2:
        raise ValueError(f"compute_source_stats needs at least 2 clips, got {n} (adapt/brimpr.py)")
    std_a, mean_a = torch.std_mean(torch.cat(feats_a), dim=0)
    std_v, mean_v = torch.std_mean(torch.cat(feats_v), dim=0)
    std_u, mean_u = torch.std_mean(torch.cat(feats_u), dim=0)
    return SourceStats(std_a, mean_a, std_v, mean_v, std_u, mean_u)


def save_source_stats(path: str | Path, stats: SourceStats, metadata: dict[str, str] | None = None) -> Path:
    """Write source statistics as safetensors (keys ``std_a``, ``mean_a``, ...)."""
    return save_tensors(path, stats.as_dict(), {"kind": "brimpr-source-stats", **(metadata or {})})


def load_source_stats(path: str | Path, device: torch.device | str = "cpu") -> SourceStats:
    """Read statistics written by :func:`save_source_stats`."""
    tensors, _ = load_tensors(path, device)
    return SourceStats.from_dict(tensors, path)


def source_stats_cached(
    model: nn.Module,
    source: Iterable,
    path: str | Path,
    num_samples: int = 32,
    metadata: dict[str, str] | None = None,
) -> SourceStats:
    """Load the statistics at ``path`` or compute them from ``source`` and save them there.

    The caller keys ``path`` by checkpoint and source set; ``metadata`` is stored in the file and checked on load.
    """
    meta = {"kind": "brimpr-source-stats", "num_samples": str(num_samples), **(metadata or {})}
    tensors = cached_tensors(path, lambda: compute_source_stats(model, source, num_samples).as_dict(), meta)
    return SourceStats.from_dict(tensors, path)


def load_reference_source_stats(path: str | Path) -> SourceStats:
    """Read a shipped ``src_stat_<dataset>.pth`` (a ``((std, mean),) * 3`` tuple of CUDA tensors) onto the CPU."""
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    try:
        (std_a, mean_a), (std_v, mean_v), (std_u, mean_u) = obj
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"{path}: expected ((std_a, mean_a), (std_v, mean_v), (std_u, mean_u)) (adapt/brimpr.py)"
        ) from err
    return SourceStats(std_a, mean_a, std_v, mean_v, std_u, mean_u)
