"""Multi-Sinkhorn-Knopp structure preservation (models/structure.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from avtta.models.structure import (
    CHECKPOINT_PREFIX,
    SK_GUARD,
    StructureConfig,
    StructurePreserver,
    assignment_cost,
    assignments,
    minmax_rows,
    multi_sinkhorn,
    sinkhorn_target,
)

# float32 sums of a few hundred terms in [0, 1] are exact to ~1e-7 relative; the Sinkhorn guard (every scaling
# divides by sum + 1e-5) moves the fixed point by up to ~1e-5 relative. So a converged marginal is met to:
CONVERGED = 2 * SK_GUARD


def _marginal_errors(copies: torch.Tensor, counts: torch.Tensor) -> tuple[float, float, float]:
    """Max relative violation of: rows of every copy = 1; columns of every copy = N / K; sum over copies = 1."""
    _, n, k = copies.shape
    rows = (copies.sum(2) - 1).abs().max()
    cols = (copies.sum(1) / (n / k) - 1).abs().max()
    over = ((copies * counts.view(-1, 1, 1)).sum(0) - 1).abs().max()
    return float(rows), float(cols), float(over)


def _hand_case() -> tuple[torch.Tensor, torch.Tensor]:
    """4 rows, 2 anchors; every row prefers anchor 0, by margins d = s0 - s1 = 0.8, 0.6, 0.4, 0.2."""
    d = torch.tensor([0.8, 0.6, 0.4, 0.2])
    return torch.stack((d / 2, -d / 2), dim=1), d


def test_multi_sinkhorn_marginals_on_a_mild_case_at_the_official_20_iterations():
    # K = 2 anchors -> 2 copies (scales 0.25 and 1). Score margins of at most 0.8 against epsilon 0.07 make a
    # well-conditioned kernel: measured, the copy-sum error is 6e-3 after 5 iterations and at the float floor after
    # 20 (a geometric rate below 0.5 per iteration), so the official 20 iterations reach the CONVERGED floor.
    scores, _ = _hand_case()
    counts = torch.tensor([1.0, 1.0])
    copies = multi_sinkhorn(scores, torch.tensor([0.25, 1.0]), counts, epsilon=0.07, iterations=20)
    assert copies.shape == (2, 4, 2)
    rows, cols, over = _marginal_errors(copies, counts)
    assert rows <= 1e-6  # the final row normalisation: exact up to rounding of a 2-term sum
    assert cols <= CONVERGED and over <= CONVERGED


def test_multi_sinkhorn_marginals_on_a_realistic_case_converge_geometrically():
    # 300 random unit embeddings x 8 anchors (cosines), K = 8 copies, 4 at scale 0.25 and 4 at 1. The official 20
    # iterations do not fully converge here (copy-sum error ~6e-3, recorded in the docs), but each further block of
    # iterations must shrink the errors and enough iterations must reach the guard floor.
    g = torch.Generator().manual_seed(0)
    scores = assignments(torch.randn(300, 16, generator=g), torch.randn(8, 16, generator=g))
    scales, counts = torch.tensor([0.25, 1.0]), torch.tensor([4.0, 4.0])
    errors = [_marginal_errors(multi_sinkhorn(scores, scales, counts, 0.07, t), counts) for t in (5, 10, 20, 200)]
    for rows, _, _ in errors:
        assert rows <= 8 * 2**-24 * 4  # final normalisation: rounding of an 8-term sum (and its division)
    cols, overs = [e[1] for e in errors], [e[2] for e in errors]
    assert cols == sorted(cols, reverse=True) and overs == sorted(overs, reverse=True)
    assert overs[2] < 0.05 and cols[2] < 1e-3  # what 20 iterations reach (measured 5.7e-3, 1.3e-4)
    assert cols[3] <= CONVERGED and overs[3] <= CONVERGED


def test_grouped_copies_equal_upstreams_k_copies():
    # Upstream keeps K explicit copies (K - R scaled 0.25, R unscaled); identical copies stay identical, so keeping
    # one per scale with its multiplicity must give the same matrices (to float summation order).
    g = torch.Generator().manual_seed(1)
    k, r = 6, 3
    scores = assignments(torch.randn(40, 5, generator=g), torch.randn(k, 5, generator=g))
    scale = torch.tensor([0.25] * (k - r) + [1.0] * r).view(-1, 1, 1)
    q = torch.exp(scale * scores.unsqueeze(0) / 0.07)
    q = q / q.sum()
    cols = torch.full((1, 1, k), 40 / k)
    for _ in range(20):
        q = q * (cols / (q.sum(1, keepdim=True) + SK_GUARD))
        q = q / (q.sum(0, keepdim=True) + SK_GUARD)
        q = q / (q.sum(2, keepdim=True) + SK_GUARD)
    q = q / q.sum(2, keepdim=True)
    grouped = multi_sinkhorn(scores, torch.tensor([0.25, 1.0]), torch.tensor([float(k - r), float(r)]), 0.07, 20)
    # float32 results of the same arithmetic in another summation order: a few ulps of values <= 1, amplified by
    # 20 iterations of division; 1e-5 absolute is far below any meaningful difference.
    torch.testing.assert_close(grouped[0], q[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(grouped[1], q[-1], rtol=0, atol=1e-5)
    target = minmax_rows(q[-r:].sum(0))
    torch.testing.assert_close(sinkhorn_target(scores, StructureConfig(num_anchors=k)), target, rtol=0, atol=1e-4)


def test_hand_computed_target():
    # K = 2, R = 1: copies must sum to 1 entry-wise, so A_1 = 1 - A_0 and, with x = A_0[n, 0], the fixed point
    # A_m = a_m(n) b_m(k) c(n, k) exp(scale_m s / eps) gives ((1 - x) / x)^2 = C exp(0.75 d_n / eps), i.e.
    # A_1[n, 0] = sigmoid(c + 0.375 d_n / eps); columns of A_1 sum to N/K = 2 -> c = -0.375 mean(d) / eps for
    # margins symmetric around their mean. So A_1[:, 0] = sigmoid(0.375 * (d - 0.5) / 0.07) =
    # [0.833, 0.631, 0.369, 0.167], and the min-max target is one-hot: rows 0, 1 -> anchor 0; rows 2, 3 -> anchor 1
    # although every row's raw score prefers anchor 0 (the balancing moves the two weakest rows).
    scores, d = _hand_case()
    copies = multi_sinkhorn(scores, torch.tensor([0.25, 1.0]), torch.tensor([1.0, 1.0]), 0.07, 20)
    expected = torch.sigmoid(0.375 * (d - d.mean()) / 0.07)
    torch.testing.assert_close(copies[1, :, 0], expected, rtol=0, atol=CONVERGED)
    target = sinkhorn_target(scores, StructureConfig(num_anchors=2))
    assert target.tolist() == [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]


def test_minmax_rows_constant_row_is_zero_not_nan():
    out = minmax_rows(torch.tensor([[0.2, 0.2, 0.2], [0.0, 0.5, 1.0]]))
    assert out.tolist() == [[0.0, 0.0, 0.0], [0.0, 0.5, 1.0]]


def test_cost_is_minimal_where_the_assignments_agree():
    # The official cost uses exp(s / 0.1) as logits; where sigmoid(exp(s / 0.1)) equals the target (possible for
    # targets > 0.5) the gradient is zero and the loss is the target's binary entropy, its minimum.
    target = torch.tensor([[0.6, 0.9], [0.75, 0.99]])
    scores = (0.1 * torch.log(torch.logit(target))).requires_grad_()  # sigmoid(exp(s / 0.1)) = target
    loss = assignment_cost(scores, target)
    entropy = -(target * target.log() + (1 - target) * (1 - target).log()).mean()
    torch.testing.assert_close(loss, entropy, rtol=1e-5, atol=0)
    (grad,) = torch.autograd.grad(loss, scores)
    assert grad.abs().max() < 1e-5  # float32 sigmoid(exp(.)) - target, rescaled by d exp / ds
    for delta in (-0.01, 0.01):
        assert assignment_cost(scores.detach() + delta, target) > loss
    # Targets <= 0.5 cannot be matched: the infimum is log 2 (logits -> 0+, scores -> -inf).
    assert math.isclose(float(assignment_cost(torch.full((1, 2), -5.0), torch.zeros(1, 2))), math.log(2), rel_tol=1e-4)


def _features(b: int, d: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, d, generator=g).requires_grad_() for _ in range(4)]


def test_gradients_reach_the_anchors_and_the_inputs():
    cfg = StructureConfig(num_anchors=4, queue_size=0)
    module = StructurePreserver(cfg, in_dims=(6, 6), out_dim=5, seed=0)
    in_a, in_v = _features(8, 6, 1)[:2]
    out_a, out_v = _features(8, 5, 2)[:2]
    loss, terms = module(in_a, in_v, out_a, out_v)
    assert sorted(terms) == sorted(cfg.pair_weights) and loss > 0
    loss.backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    for x in (in_a, in_v, out_a, out_v):
        assert x.grad is not None and x.grad.abs().sum() > 0


def test_loss_waits_for_full_queues_and_the_queue_is_fifo():
    cfg = StructureConfig(num_anchors=4, queue_size=10)
    module = StructurePreserver(cfg, in_dims=(6, 6), out_dim=6, seed=0)
    losses = []
    for step in range(4):
        feats = _features(4, 6, 10 + step)
        loss, terms = module(*feats)
        losses.append((float(loss.detach()), bool(terms)))
        last = F.normalize(feats[0].detach(), dim=1)
    # 4 + 4 = 8 < 10 after two steps -> no loss at steps 0, 1, 2 (12 >= 10 only after step 2's enqueue).
    assert [t for _, t in losses] == [False, False, False, True] and losses[3][0] > 0
    torch.testing.assert_close(module.queue_in_a[-4:], last)
    assert int(module.queue_count) == 10


def test_weights_scale_the_terms():
    feats = _features(6, 4, 3)
    one = StructurePreserver(StructureConfig(num_anchors=3, queue_size=0), (4, 4), 4, seed=5)
    weights = {k: (2.0 if k == "in_vv" else 0.0) for k in StructureConfig().pair_weights}
    two = StructurePreserver(StructureConfig(num_anchors=3, queue_size=0, weight=0.5, pair_weights=weights),
                             (4, 4), 4, seed=5)  # fmt: skip
    loss_one, terms_one = one(*feats)
    loss_two, terms_two = two(*feats)
    assert list(terms_two) == ["in_vv"]
    torch.testing.assert_close(loss_two, torch.tensor(terms_one["in_vv"]), rtol=1e-6, atol=0)
    expected = sum(StructureConfig().pair_weights[k] * v for k, v in terms_one.items())
    torch.testing.assert_close(loss_one, torch.tensor(expected), rtol=1e-5, atol=0)


def test_checkpoint_tensors_round_trip_under_the_prefix():
    cfg = StructureConfig(num_anchors=4, queue_size=6)
    module = StructurePreserver(cfg, (6, 6), 6, seed=0)
    module(*_features(6, 6, 4))
    anchors = module.checkpoint_tensors()
    assert sorted(anchors) == [f"{CHECKPOINT_PREFIX}anchors_{s}_{m}" for s in ("in", "out") for m in ("a", "v")]
    state = module.state_tensors()
    assert all(k.startswith(CHECKPOINT_PREFIX) for k in state) and f"{CHECKPOINT_PREFIX}queue_count" in state
    other = StructurePreserver(cfg, (6, 6), 6, seed=1)
    other.load_tensors({**state, "blocks_a.0.norm1.weight": torch.ones(3)})  # foreign keys are ignored
    for k, v in other.state_tensors().items():
        assert torch.equal(v, state[k]), k
    fresh = StructurePreserver(cfg, (6, 6), 6, seed=1)
    fresh.load_tensors(anchors)  # anchors only: queues stay empty, the loss waits for them again
    assert not fresh.ready and torch.equal(fresh.anchors_in_a, module.anchors_in_a)
    with pytest.raises(ValueError, match="do not fit"):
        StructurePreserver(StructureConfig(num_anchors=5, queue_size=6), (6, 6), 6).load_tensors(
            state, "ck.safetensors"
        )


def test_bad_config_and_inputs():
    with pytest.raises(ValueError, match="pair_weights"):
        StructureConfig(pair_weights={"in_aa": 1.0})
    with pytest.raises(ValueError, match="required_fraction"):
        StructureConfig(num_anchors=2, required_fraction=0.2)
    module = StructurePreserver(StructureConfig(num_anchors=3, queue_size=0), (4, 4), 4)
    with pytest.raises(ValueError, match="in_v features"):
        module(torch.zeros(2, 4), torch.zeros(3, 4), torch.zeros(2, 4), torch.zeros(2, 4))
