"""Loss pieces shared by the TTA methods: entropies, sample filters, SAM steps, patch shuffling.

Everything here is a pure function of its tensor arguments (no module state, no global RNG), so the
methods stay short and the pieces can be tested on their own. Formulas follow spec/methods.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "balance_entropy",
    "confidence_term",
    "entropy_weights",
    "info_nce_bidirectional",
    "reliable",
    "sam_ascent",
    "sam_restore",
    "shuffle_patches",
    "soft_cross_entropy",
    "softmax_entropy",
]


def softmax_entropy(logits: Tensor) -> Tensor:
    """Per-sample entropy ``-sum_c softmax(z)_c log_softmax(z)_c`` of ``[B, C]`` logits, in their dtype.

    Evaluated in the logits' own dtype on purpose: the references take it on fp16 logits under AMP.
    """
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1)


def reliable(entropy: Tensor, margin: float) -> Tensor:
    """Indices of the samples whose entropy is below ``margin`` (EATA Eqn. 3, SAR Eqn. 2, DeYO Eqn. 8)."""
    return torch.nonzero(entropy < margin, as_tuple=True)[0]


def entropy_weights(entropy: Tensor, margin: float) -> Tensor:
    """EATA/DeYO re-weighting ``1 / exp(e - E0)`` on detached entropies (EATA Eqn. 6)."""
    return 1.0 / torch.exp(entropy.detach() - margin)


def balance_entropy(probs: Tensor) -> Tensor:
    """READ's balance term: entropy of the softmax of the class-wise *summed* probabilities (spec item 19)."""
    summed = probs.sum(dim=0)
    return -(summed.softmax(0) * summed.log_softmax(0)).sum()


def confidence_term(probs: Tensor, gamma: float) -> Tensor:
    """READ's confidence-aware term ``mean_i pmax_i (1 - ln pmax_i + ln gamma)``."""
    pmax = probs.max(dim=1).values
    log_gamma = torch.log(torch.full_like(pmax, gamma))
    return (pmax * (1 - pmax.log() + log_gamma)).mean()


def soft_cross_entropy(student: Tensor, teacher: Tensor, temperature: Tensor | float) -> Tensor:
    """Per-sample ``-sum_c softmax(teacher / T)_c log_softmax(student)_c`` (BriMPR's recombination loss)."""
    return -((teacher / temperature).softmax(1) * student.log_softmax(1)).sum(1)


def info_nce_bidirectional(audio_rep: Tensor, video_rep: Tensor, tau: float) -> Tensor:
    """Symmetric InfoNCE over a batch: column-wise log-softmax of ``a_i . v_j / tau``, both directions averaged."""
    a = F.normalize(audio_rep, dim=-1)
    v = F.normalize(video_rep, dim=-1)
    sim = a @ v.t() / tau
    nce_av = -torch.diagonal(sim.log_softmax(dim=0)).mean()
    nce_va = -torch.diagonal(sim.t().log_softmax(dim=0)).mean()
    return (nce_av + nce_va) / 2


@torch.no_grad()
def sam_ascent(params: list[nn.Parameter], rho: float) -> list[Tensor | None]:
    """SAM's first step: move every parameter with a gradient to ``theta + rho g / (||g|| + 1e-12)``.

    The norm is taken over the concatenation of all gradients (non-adaptive SAM, Foret et al. 2021).
    Returns the original values (None for parameters without a gradient) for :func:`sam_restore`.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return [None] * len(params)
    norm = torch.norm(torch.stack([g.norm(p=2) for g in grads]), p=2)
    scale = rho / (norm + 1e-12)
    saved: list[Tensor | None] = []
    for p in params:
        if p.grad is None:
            saved.append(None)
            continue
        saved.append(p.detach().clone())
        p.add_(p.grad * scale.to(p))
    return saved


@torch.no_grad()
def sam_restore(params: list[nn.Parameter], saved: list[Tensor | None]) -> None:
    """SAM's second step, first half: put back the values saved by :func:`sam_ascent`."""
    for p, old in zip(params, saved, strict=True):
        if old is not None:
            p.copy_(old)


def shuffle_patches(x: Tensor, grid: int, noise: Tensor) -> Tensor:
    """Permute a ``grid x grid`` tiling of the last two axes independently per sample (DeYO's patch augmentation).

    Args:
        x: ``[n, ..., H, W]`` with H and W divisible by ``grid`` (DeYO's resizes are identities then).
        grid: tiles per side (DeYO's ``patch_len``).
        noise: ``[n, grid * grid]`` uniform draws; the permutation of each sample is their argsort.
    """
    n, height, width = x.shape[0], x.shape[-2], x.shape[-1]
    if height % grid or width % grid:
        raise ValueError(
            f"shuffle_patches: size {height}x{width} is not divisible by grid {grid} (adapt/methods/losses.py)"
        )
    lead = x.shape[1:-2]
    h, w = height // grid, width // grid
    # [n, C, grid*h, grid*w] -> [n, grid*grid, C, h, w], tiles in row-major order (as DeYO's rearrange).
    flat = x.reshape(n, -1, grid, h, grid, w).permute(0, 2, 4, 1, 3, 5).reshape(n, grid * grid, -1, h, w)
    perm = torch.argsort(noise, dim=-1).to(x.device)
    flat = flat[torch.arange(n, device=x.device).unsqueeze(-1), perm]
    out = flat.reshape(n, grid, grid, -1, h, w).permute(0, 3, 1, 4, 2, 5).reshape(n, *lead, height, width)
    return out
