"""Adapters, routers and model pieces shared by TSA and DASP (both follow the he4cs/DASP code base).

The DASP repository (he4cs/DASP @ f43db39) splits the CAV-MAE classifier into an *encoder* (tokenisation and the
11 audio / 11 video blocks with the unified LayerNorms) and a *decoder* (fusion block with the unified norms, the
fused final ``norm``, token mean, ``mlp_head``) and adapts the tokens in between. This module composes both from the
model's public pieces (``embed_audio``, ``embed_video``, ``run_stack``, ``fuse``, ``pool``, ``head``) and holds the
trainable pieces the two methods add there: TSA's residual full-rank adapters and Gumbel-softmax router, DASP's
low-rank and full adapters, and DASP's redundancy score. Everything is torch-only and draws randomness from an
explicit generator.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "LowRankAdapter",
    "decode",
    "encode",
    "gumbel_softmax_soft",
    "linear_default_init_",
    "pooled_embedding",
    "redundancy_scores",
    "residual_adapt",
    "width_of",
]


def width_of(model: nn.Module) -> int:
    """Token width D of a CAV-MAE classifier (the final norm's size; spec bugs TSA 6 / DASP 1 FIX: never 768)."""
    return int(model.norm.weight.shape[0])


def encode(model: nn.Module, audio: Tensor, video: Tensor) -> tuple[Tensor, Tensor]:
    """DASP's ``forward_encoder``: audio tokens ``[B, Na, D]`` and video tokens ``[B, Nv, D]`` after the two stacks."""
    return model.run_stack(model.embed_audio(audio), "a"), model.run_stack(model.embed_video(video), "v")


def pooled_embedding(model: nn.Module, tokens: Tensor) -> Tensor:
    """Fusion block(s) with the unified norms, the fused final ``norm``, token mean -> ``[B, D]`` (any token set)."""
    return model.pool(model.fuse(tokens, "u"), "norm")


def decode(model: nn.Module, tokens: Tensor) -> Tensor:
    """DASP's ``forward_decoder``: logits ``[B, C]`` of the fusion path on ``tokens`` ``[B, N, D]``."""
    return model.head(pooled_embedding(model, tokens))


# ---------------------------------------------------------------------- TSA
def residual_adapt(tokens: Tensor, adapter: Tensor, eye: Tensor) -> Tensor:
    """TSA's residual full-rank adapter ``x (A + I)`` applied to every token (row vector times matrix, item 7).

    Computed as one product with ``A + I`` (not ``x + x A``) because that is the reference's rounding.
    """
    return torch.matmul(tokens, adapter + eye)


def gumbel_softmax_soft(logits: Tensor, batch: int, tau: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Soft Gumbel-softmax of router ``logits`` ``[K]`` broadcast to ``batch`` samples.

    Draws ``Exp(1)`` on a ``[batch, K]`` CPU tensor from ``generator`` (row-major, the same stream as
    ``torch.nn.functional.gumbel_softmax`` on the global generator), so seeding reproduces the reference's noise.

    Returns:
        ``(y, g)``: router outputs ``softmax((logits + g) / tau)`` ``[batch, K]`` and the Gumbel noise ``g``.
    """
    exponentials = torch.empty(batch, logits.shape[-1]).exponential_(generator=generator)
    gumbels = (-exponentials.log()).to(device=logits.device, dtype=logits.dtype)
    return ((logits + gumbels) / tau).softmax(dim=-1), gumbels


# ---------------------------------------------------------------------- DASP
class LowRankAdapter(nn.Module):
    """DASP's internal adapter ``IA(z) = W_up ReLU(W_down z)`` (token-wise, no biases; ``down``, ``up`` as upstream).

    Built on ``device`` with uninitialised weights: call :meth:`init_` (DASP's recipe) before use.
    """

    def __init__(self, dim: int, rank: int, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.down = nn.Linear(dim, rank, bias=False, device="meta").to_empty(device=device or "cpu")
        self.up = nn.Linear(rank, dim, bias=False, device="meta").to_empty(device=device or "cpu")

    @torch.no_grad()
    def init_(self, generator: torch.Generator) -> None:
        """DASP's initialisation, drawing what the reference constructor draws, in its order.

        ``nn.Linear`` default init of ``down`` then ``up`` (thrown away), then ``kaiming_uniform_(a = sqrt 3)`` of
        ``down`` (``U(-sqrt(1.5 / D), sqrt(1.5 / D))``) and ``up = 0``: the adapter starts as the zero map.
        """
        down = linear_default_init_(torch.empty(self.down.weight.shape), generator)
        linear_default_init_(torch.empty(self.up.weight.shape), generator)
        nn.init.kaiming_uniform_(down, a=math.sqrt(3), generator=generator)
        self.down.weight.copy_(down)
        self.up.weight.zero_()

    def forward(self, x: Tensor) -> Tensor:
        return self.up(F.relu(self.down(x)))


def linear_default_init_(weight: Tensor, generator: torch.Generator) -> Tensor:
    """``nn.Linear``'s default weight init (``kaiming_uniform_(a = sqrt 5)``) from ``generator``, in place."""
    return nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)


def _rms_off_diagonal_cosine(embed: Tensor) -> float:
    normed = F.normalize(embed, p=2, dim=0)  # every feature column over the batch, not centred (DASP item 5)
    sim = normed.t() @ normed
    off = sim[~torch.eye(sim.shape[0], dtype=torch.bool, device=sim.device)]
    return float(torch.sqrt((off**2).mean()))


@torch.no_grad()
def redundancy_scores(h_a: Tensor, h_v: Tensor, std_ratio: float = 0.05) -> tuple[float, float]:
    """DASP's redundancy scores ``(r_a, r_v)`` of the pooled unimodal embeddings ``[B, D]`` (spec 3.2).

    Feature dimensions whose unbiased std over the joint ``[2B, D]`` batch is at most ``std_ratio`` times the largest
    are dropped; ``r`` is the RMS of the off-diagonal cosines between the remaining feature columns. Fewer than two
    active dimensions give ``(0, 0)`` (no update).
    """
    std = torch.cat((h_a, h_v), dim=0).std(dim=0)
    active = std > std.max() * std_ratio
    if int(active.sum()) < 2:
        return 0.0, 0.0
    return _rms_off_diagonal_cosine(h_a[:, active]), _rms_off_diagonal_cosine(h_v[:, active])
