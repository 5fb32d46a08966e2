"""Modality-structure preservation with multi-assignment Sinkhorn-Knopp (Multi-SK).

Paper: S. Swetha, M. N. Rizve, N. Shvetsova, H. Kuehne, M. Shah, "Preserving Modality Structure Improves
Multi-Modal Learning", ICCV 2023. Upstream: Swetha5/Multi_Sinkhorn_Knopp, ``everything_at_once/loss/
combinatorial_loss.py`` (``multi_sinkhorn``, ``calculate_sk``, ``calculate_cost``, ``AncSimilarityLoss``) and
``everything_at_once/model/fusion_model.py`` (``ClusterAssignments``, ``TransformerPerModalityModel2``).

Each modality ``m`` (here audio ``a`` and video ``v``) has learnable anchors in its **input** space and in the
**transformed** space. An assignment is the cosine of an L2-normalised embedding with the L2-normalised anchors
(``[B, K]``). Targets come from Multi-SK over the scores of ``[queue; batch]`` (no gradient), and the loss asks
the input-space assignments to match transformed-space targets and vice versa, for every pair of modalities::

    IN[m, n]  = cost(in_m . A_in_m,   SK(out_n . A_out_m))     anchors of m, embedding of n
    OUT[m, n] = cost(out_n . A_out_m, SK(in_m . A_in_m))
    loss = weight * sum over (m, n) of w_IN[m, n] * IN[m, n] + w_OUT[m, n] * OUT[m, n]

``cost(s, t) = BCE_with_logits(exp(s / 0.1), t)`` (mean over ``B x K``), as upstream. The pair weights default to
the official config's video/audio entries (``c_loss_2_2 = c_loss_5_2 = 1`` for video-video, 0.1 for every pair
with audio). What the spaces are in CAV-MAE, and every official quirk kept or fixed: docs/faithfulness.md (balance).

State: the anchors are parameters (train them with the model), the queues are buffers (FIFO of the last
``queue_size`` normalised embeddings per modality and space; the loss is 0 until they are full, as upstream).
Everything is saved under the prefix :data:`CHECKPOINT_PREFIX` (``structure.``): the anchors with the model
(:meth:`StructurePreserver.checkpoint_tensors`), anchors and queues in the resume state
(:meth:`StructurePreserver.state_tensors`). A model loader must drop that prefix.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "CHECKPOINT_PREFIX",
    "MODALITIES",
    "OFFICIAL_PAIR_WEIGHTS",
    "StructureConfig",
    "StructurePreserver",
    "assignment_cost",
    "assignments",
    "minmax_rows",
    "multi_sinkhorn",
    "sinkhorn_target",
]

CHECKPOINT_PREFIX = "structure."
MODALITIES = ("a", "v")
# Upstream's additive guard in every scaling step (``min_val_eps``): it also bounds how exactly marginals are met.
SK_GUARD = 1e-5
# Keys "<side>_<anchor modality><embedding modality>". Upstream (text=1, video=2, audio=3): IN[m, n] is
# c_loss_<m>_<n>, OUT[m, n] is c_loss_<3+n>_<m>; configs/pretraining/resnet_tva.yaml restricted to video and audio.
OFFICIAL_PAIR_WEIGHTS = {
    "in_aa": 0.1,  # c_loss_3_3
    "in_av": 0.1,  # c_loss_3_2
    "in_va": 0.1,  # c_loss_2_3
    "in_vv": 1.0,  # c_loss_2_2
    "out_aa": 0.1,  # c_loss_6_3
    "out_av": 0.1,  # c_loss_5_3 (video embedding, audio anchors)
    "out_va": 0.1,  # c_loss_6_2 (audio embedding, video anchors)
    "out_vv": 1.0,  # c_loss_5_2
}


@dataclass(frozen=True)
class StructureConfig:
    """Structure-preserving loss (defaults: the official ``resnet_tva.yaml``).

    Attributes:
        weight: multiplier of the whole loss (upstream ``beta_loss``, 1.0); ``avtta train --structure-loss``.
        num_anchors: anchors per modality and space, K (upstream ``anc_len_*`` 64). Also the number of
            Sinkhorn copies, as upstream (the three marginals are only compatible with K copies).
        queue_size: embeddings kept per modality and space (upstream ``queue_len`` 5500); 0 = batch only.
        epsilon: Sinkhorn temperature (upstream ``eps`` 0.07).
        iterations: Sinkhorn iterations (upstream ``niters`` 20).
        required_fraction: share of the K copies at full scale; the others are scaled by ``low_scale``, and the
            target sums the full-scale ones (upstream ``required_properties`` 0.5, the 0.25 of ``multi_sinkhorn``).
        low_scale: score scale of the other copies (upstream 0.25, hard-coded).
        cost_temperature: the 0.1 of upstream ``calculate_cost`` (``exp(s / 0.1)`` as logits).
        pair_weights: weight of each term, keys as :data:`OFFICIAL_PAIR_WEIGHTS`.
    """

    weight: float = 1.0
    num_anchors: int = 64
    queue_size: int = 5500
    epsilon: float = 0.07
    iterations: int = 20
    required_fraction: float = 0.5
    low_scale: float = 0.25
    cost_temperature: float = 0.1
    pair_weights: Mapping[str, float] = field(default_factory=lambda: dict(OFFICIAL_PAIR_WEIGHTS))

    def __post_init__(self) -> None:
        if not self.weight >= 0:
            raise ValueError(f"structure weight must be >= 0, got {self.weight!r}")
        if self.num_anchors < 2:
            raise ValueError(f"structure num_anchors must be >= 2, got {self.num_anchors!r}")
        if self.queue_size < 0:
            raise ValueError(f"structure queue_size must be >= 0, got {self.queue_size!r}")
        if not (self.epsilon > 0 and self.cost_temperature > 0 and self.low_scale > 0):
            raise ValueError(f"structure epsilon, cost_temperature and low_scale must be > 0, got {self}")
        if self.iterations < 1:
            raise ValueError(f"structure iterations must be >= 1, got {self.iterations!r}")
        if not 1 <= self.required_copies <= self.num_anchors:
            raise ValueError(f"structure required_fraction {self.required_fraction!r} gives "
                             f"{self.required_copies} of {self.num_anchors} copies (need at least 1)")  # fmt: skip
        if set(self.pair_weights) != set(OFFICIAL_PAIR_WEIGHTS) or any(w < 0 for w in self.pair_weights.values()):
            keys = sorted(OFFICIAL_PAIR_WEIGHTS)
            raise ValueError(f"structure pair_weights must give a weight >= 0 for each of {keys}, got "
                             f"{dict(self.pair_weights)!r}")  # fmt: skip

    @property
    def required_copies(self) -> int:
        """R, the full-scale copies (upstream ``int(K * required_properties)``)."""
        return int(self.num_anchors * self.required_fraction)


# ------------------------------------------------------------------------------------------------- pure functions


def assignments(embeddings: Tensor, anchors: Tensor) -> Tensor:
    """Cosine scores ``[B, K]`` of embeddings ``[B, D]`` with anchors ``[K, D]`` (both L2-normalised here)."""
    return F.normalize(embeddings, dim=1) @ F.normalize(anchors, dim=1).t()


def multi_sinkhorn(
    scores: Tensor, scales: Tensor, counts: Tensor, epsilon: float = 0.07, iterations: int = 20
) -> Tensor:
    """Multi-assignment Sinkhorn-Knopp over ``sum(counts)`` copies of ``scores`` (upstream ``multi_sinkhorn``).

    Copy ``m`` is ``exp(scales[m] * scores / epsilon)``. Upstream makes K copies, K-R of them scaled 0.25 and R
    unscaled; identical copies stay identical through every step, so each distinct scale is kept once with its
    multiplicity ``counts`` (the same numbers up to float summation order). Each iteration scales, in order:
    every copy's columns to ``N / K``; the entries summed over all copies to 1; every copy's rows to 1 (each step
    divides by ``sum + 1e-5`` as upstream). Finally every copy's rows are normalised to sum to 1.

    Args:
        scores: ``[N, K]``.
        scales: ``[S]`` distinct copy scales.
        counts: ``[S]`` multiplicities (upstream: ``[K - R, R]`` for scales ``[0.25, 1]``).

    Returns:
        ``[S, N, K]``, one matrix per distinct copy.
    """
    if scores.dim() != 2 or scales.shape != counts.shape or scales.dim() != 1:
        raise ValueError(f"multi_sinkhorn: scores must be [N, K] and scales, counts [S], got "
                         f"{tuple(scores.shape)}, {tuple(scales.shape)}, {tuple(counts.shape)}")  # fmt: skip
    n, k = scores.shape
    scores = scores.float()
    counts = counts.to(scores).view(-1, 1, 1)
    q = torch.exp(scales.to(scores).view(-1, 1, 1) * scores.unsqueeze(0) / epsilon)
    if not torch.isfinite(q).all():
        raise ValueError(f"multi_sinkhorn: exp(scores / {epsilon}) overflows (scores must be cosines, max "
                         f"{float(scores.abs().max()):.3g})")  # fmt: skip
    q = q / (q * counts).sum()  # the sum over all K copies, as upstream's Q /= torch.sum(Q)
    columns = torch.full((1, 1, k), n / k, dtype=q.dtype, device=q.device)  # uniform class_dist * N
    for _ in range(iterations):
        q = q * (columns / (q.sum(dim=1, keepdim=True) + SK_GUARD))
        q = q / ((q * counts).sum(dim=0, keepdim=True) + SK_GUARD)
        q = q / (q.sum(dim=2, keepdim=True) + SK_GUARD)
    return q / q.sum(dim=2, keepdim=True)


def minmax_rows(x: Tensor) -> Tensor:
    """Per row ``(x - min) / (max - min)`` (upstream ``normalize_matrix``); a constant row becomes 0, not NaN."""
    lo = x.min(dim=1, keepdim=True).values
    hi = x.max(dim=1, keepdim=True).values
    return (x - lo) / (hi - lo).clamp_min(torch.finfo(x.dtype).tiny)


def sinkhorn_target(scores: Tensor, cfg: StructureConfig) -> Tensor:
    """Soft targets ``[N, K]`` in [0, 1] (upstream ``calculate_sk``): Multi-SK, the full-scale copies summed,
    each row min-max normalised. No gradient."""
    k = scores.shape[1]
    if k != cfg.num_anchors:
        raise ValueError(f"sinkhorn_target: scores have {k} columns, the config {cfg.num_anchors} anchors")
    r = cfg.required_copies
    with torch.no_grad():
        if r == k:  # every copy at full scale
            scales, counts = torch.tensor([1.0]), torch.tensor([float(k)])
        else:
            scales, counts = torch.tensor([cfg.low_scale, 1.0]), torch.tensor([float(k - r), float(r)])
        copies = multi_sinkhorn(scores.detach(), scales, counts, cfg.epsilon, cfg.iterations)
        # Sum of the R identical full-scale copies = R * one of them; min-max normalisation removes the factor R.
        return minmax_rows(copies[-1] * r)


def assignment_cost(scores: Tensor, target: Tensor, temperature: float = 0.1) -> Tensor:
    """Upstream ``calculate_cost``: ``BCE_with_logits(exp(scores / temperature), target)``, mean over entries.

    The logits ``exp(.)`` are positive, so every predicted probability is above 0.5: the minimum over the scores
    is not 0 but the mean binary entropy of the target where ``target > 0.5`` and ``log 2`` where it is not (zero
    gradient where ``sigmoid(exp(s / T)) = target``).
    """
    return F.binary_cross_entropy_with_logits((scores.float() / temperature).exp(), target.float())


# ------------------------------------------------------------------------------------------------- the module


class StructurePreserver(nn.Module):
    """Anchors and queues of the structure-preserving loss; ``forward`` is the loss of one batch.

    Args:
        cfg: the loss configuration.
        in_dims: input-space width of audio and of video.
        out_dim: transformed-space width (both modalities).
        seed: anchor initialisation seed (standard normal entries, as upstream's ``nn.init.normal_``).
    """

    def __init__(self, cfg: StructureConfig, in_dims: tuple[int, int], out_dim: int, seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        generator = torch.Generator().manual_seed(random.Random(f"{seed}:structure:anchors").getrandbits(62))
        k = cfg.num_anchors
        dims = {"in": dict(zip(MODALITIES, in_dims, strict=True)), "out": dict.fromkeys(MODALITIES, out_dim)}
        for space in ("in", "out"):
            for m in MODALITIES:
                d = dims[space][m]
                self.register_parameter(f"anchors_{space}_{m}", nn.Parameter(torch.randn(k, d, generator=generator)))
                self.register_buffer(f"queue_{space}_{m}", torch.zeros(cfg.queue_size, d))
        # Embeddings enqueued so far (capped at queue_size): the loss starts once the queue holds no empty row.
        self.register_buffer("queue_count", torch.zeros((), dtype=torch.long))

    def anchors(self, space: str, modality: str) -> Tensor:
        return getattr(self, f"anchors_{space}_{modality}")

    def queue(self, space: str, modality: str) -> Tensor:
        return getattr(self, f"queue_{space}_{modality}")

    @property
    def ready(self) -> bool:
        """Whether the queues are full (upstream: no loss before ``queue_size`` embeddings were seen)."""
        return int(self.queue_count) >= self.cfg.queue_size

    @torch.no_grad()
    def _enqueue(self, embeddings: dict[tuple[str, str], Tensor]) -> None:
        size = self.cfg.queue_size
        if size == 0:
            return
        for (space, m), z in embeddings.items():
            queue = self.queue(space, m)
            b = min(z.shape[0], size)
            queue.copy_(torch.cat((queue[b:], z[-b:].to(queue.dtype)), dim=0))  # FIFO: oldest rows leave first
        self.queue_count.fill_(min(size, int(self.queue_count) + next(iter(embeddings.values())).shape[0]))

    def _target(self, z: Tensor, anchors: Tensor, queue: Tensor) -> Tensor:
        """SK target of the batch rows ``z``: the scores of ``[queue; z]`` against ``anchors``, last B rows."""
        rows = torch.cat((queue, z), dim=0) if self.cfg.queue_size else z
        return sinkhorn_target(rows @ F.normalize(anchors.detach(), dim=1).t(), self.cfg)[-z.shape[0] :]

    def forward(self, in_a: Tensor, in_v: Tensor, out_a: Tensor, out_v: Tensor) -> tuple[Tensor, dict[str, float]]:
        """The weighted structure-preserving loss of one batch, then the batch enters the queues.

        Args:
            in_a, in_v: input-space features ``[B, D_in]`` of audio and video (any scale: normalised here).
            out_a, out_v: transformed-space features ``[B, D_out]``.

        Returns:
            ``(loss, terms)``: the scalar loss (``cfg.weight`` applied; a zero tensor while the queues fill) and
            each unweighted term as a float (empty while the queues fill).
        """
        feats = {("in", "a"): in_a, ("in", "v"): in_v, ("out", "a"): out_a, ("out", "v"): out_v}
        b = in_a.shape[0]
        for (space, m), x in feats.items():
            anchors = self.anchors(space, m)
            if x.dim() != 2 or x.shape[0] != b or x.shape[1] != anchors.shape[1]:
                raise ValueError(f"structure loss: {space}_{m} features must be [{b}, {anchors.shape[1]}], got "
                                 f"{tuple(x.shape)}")  # fmt: skip
        z = {key: F.normalize(x.float(), dim=1) for key, x in feats.items()}
        ready = self.ready
        loss = in_a.new_zeros((), dtype=torch.float32)
        terms: dict[str, float] = {}
        if ready:
            cfg = self.cfg
            for m in MODALITIES:
                anchors_in = F.normalize(self.anchors("in", m), dim=1)
                pred_in = z[("in", m)] @ anchors_in.t()
                target_in = self._target(z[("in", m)].detach(), self.anchors("in", m), self.queue("in", m))
                for n in MODALITIES:
                    anchors_out = F.normalize(self.anchors("out", m), dim=1)
                    pred_out = z[("out", n)] @ anchors_out.t()
                    target_out = self._target(z[("out", n)].detach(), self.anchors("out", m), self.queue("out", n))
                    for side, pred, target in (("in", pred_in, target_out), ("out", pred_out, target_in)):
                        key = f"{side}_{m}{n}"
                        weight = float(cfg.pair_weights[key])
                        if weight > 0:
                            term = assignment_cost(pred, target, cfg.cost_temperature)
                            terms[key] = float(term.detach())
                            loss = loss + weight * term
            loss = cfg.weight * loss
        self._enqueue({key: value.detach() for key, value in z.items()})
        return loss, terms

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_tensors(self) -> dict[str, Tensor]:
        """The anchors, keyed ``structure.anchors_<space>_<m>``: what goes into ``model.safetensors``."""
        return {f"{CHECKPOINT_PREFIX}{name}": p.detach().cpu().contiguous() for name, p in self.named_parameters()}

    def state_tensors(self) -> dict[str, Tensor]:
        """Anchors, queues and the fill count, keyed ``structure.*``: what goes into the resume state."""
        return {f"{CHECKPOINT_PREFIX}{k}": v.detach().cpu().contiguous() for k, v in self.state_dict().items()}

    def load_tensors(self, tensors: Mapping[str, Tensor], source: str = "checkpoint") -> None:
        """Load :meth:`state_tensors` (or only the anchors of :meth:`checkpoint_tensors`, queues left empty) from a
        mapping that may hold other keys too; the ``structure.`` keys must fit exactly."""
        mine = {k[len(CHECKPOINT_PREFIX) :]: v for k, v in tensors.items() if k.startswith(CHECKPOINT_PREFIX)}
        params = {name for name, _ in self.named_parameters()}
        state = self.state_dict()
        missing = sorted(params - set(mine))
        unknown = sorted(set(mine) - set(state))
        wrong = sorted(k for k in mine if k in state and mine[k].shape != state[k].shape)
        if missing or unknown or wrong:
            raise ValueError(f"{source}: structure tensors do not fit (missing {missing}, unknown {unknown}, "
                             f"wrong shape {wrong})")  # fmt: skip
        with torch.no_grad():
            for k, v in mine.items():
                state[k].copy_(v)
            if not any(k.startswith("queue_") for k in mine):
                self.queue_count.zero_()
