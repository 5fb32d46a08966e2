"""DeYO: destroy your object, entropy minimisation filtered by pseudo-label probability difference.

Paper: J. Lee, D. Jung, S. Lee, J. Park, J. Shin, U. Hwang, S. Yoon, "Entropy is not Enough for Test-Time
Adaptation: From the Perspective of Disentangled Factors", ICLR 2024. Upstream: Jhyun17/DeYO; as adapted in
Luchicken/BriMPR ``TTA/DeYO.py`` (spec methods.md section 6).

Per batch: entropies of the pre-update logits; ``R1 = {e < deyo_margin * ln C}``; for R1 only, an augmented copy
whose audio (``[1024, 128]`` as a 1-channel image) and frame are each cut into ``patch_len x patch_len`` tiles and
permuted per sample (permutation = argsort of ``rand(n, patch_len**2)`` from ``self.generator``, audio first then
video); no-grad forward of the copy; PLPD ``d = p[c] - p'[c]`` at the original argmax ``c``;
``R2 = {i in R1: d_i > plpd_threshold}``; loss ``mean w_i e_i`` over R2 with
``w_i = 1 / exp(e_i - e_margin * ln C) + 1 / exp(-d_i)`` (detached); one Adam step (GradScaler for fp16).
Trains the same LayerNorms as SAR (216 tensors at full width).

KEEP (item 18): audio tiles are 256 frames x 32 mel bins; the references' resizes are identities for these shapes
(inputs whose size is not a multiple of ``patch_len`` are rejected instead of resized).
KEEP (item 15): parameter selection as SAR. FIX (item 7): exact reset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .base import MethodConfig, TTAMethod
from .losses import reliable, shuffle_patches, softmax_entropy
from .sar import lower_block_norm_groups

__all__ = ["DeYO", "DeYOConfig"]


@dataclass(frozen=True, kw_only=True)
class DeYOConfig(MethodConfig):
    """Attributes:
    deyo_margin: entropy threshold tau_Ent in units of ln C (0.5).
    e_margin: re-weighting margin Ent_0 in units of ln C (0.4; the reference's ``deyo_margin_e0``).
    plpd_threshold: PLPD threshold tau_PLPD (0.2).
    patch_len: tiles per side of the patch-shuffling augmentation (4).
    """

    deyo_margin: float = 0.5
    e_margin: float = 0.4
    plpd_threshold: float = 0.2
    patch_len: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.patch_len < 1:
            raise ValueError(f"patch_len must be >= 1, got {self.patch_len} (adapt/methods/deyo.py)")


class DeYO(TTAMethod):
    """Entropy minimisation on samples that are confident and whose prediction depends on object shape."""

    name = "deyo"
    config_class = DeYOConfig

    def trainable_groups(self) -> tuple[str, ...]:
        return lower_block_norm_groups(self.model)

    def init_state(self) -> None:
        log_c = math.log(self.num_classes)
        self.deyo_margin = self.config.deyo_margin * log_c
        self.e_margin = self.config.e_margin * log_c

    def reset_state(self) -> None:
        self.last_counts = (0, 0)  # |R1|, |R2| of the last batch (diagnostics)

    def augment(self, audio: Tensor, video: Tensor) -> tuple[Tensor, Tensor]:
        """Patch-shuffled copies; draws ``rand(n, P*P)`` for audio, then for video, from ``self.generator``."""
        grid = self.config.patch_len
        n = audio.shape[0]
        noise_a = self.uniform(n, grid * grid)
        noise_v = self.uniform(n, grid * grid)
        audio_aug = shuffle_patches(audio.detach(), grid, noise_a)
        video_aug = shuffle_patches(video.detach(), grid, noise_v)
        return audio_aug, video_aug

    def forward_and_adapt(self, audio: Tensor, video: Tensor) -> Tensor:
        cfg = self.config
        logits = self.forward_logits(audio, video)
        z = self.loss_input(logits)
        entropy = softmax_entropy(z)
        ids1 = reliable(entropy, self.deyo_margin)
        self.last_counts = (ids1.numel(), 0)
        if ids1.numel() == 0:
            return logits
        audio_aug, video_aug = self.augment(audio[ids1], video[ids1])
        with torch.no_grad():
            z_aug = self.loss_input(self.forward_logits(audio_aug, video_aug))
        probs = z[ids1].softmax(1)
        cls = probs.argmax(dim=1, keepdim=True)
        plpd = (torch.gather(probs, 1, cls) - torch.gather(z_aug.softmax(1), 1, cls)).reshape(-1)
        ids2 = torch.nonzero(plpd > cfg.plpd_threshold, as_tuple=True)[0]
        self.last_counts = (ids1.numel(), ids2.numel())
        if ids2.numel() == 0:
            return logits
        selected = entropy[ids1][ids2]
        plpd = plpd[ids2].detach()
        weights = 1.0 / torch.exp(selected.detach() - self.e_margin) + 1.0 / torch.exp(-1.0 * plpd)
        loss = (selected * weights).mean(0)
        self.apply_update(loss)
        return logits
