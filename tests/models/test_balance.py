"""Balanced training pieces (models/balance.py) on the unit-test CAV-MAE."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from avtta.models import create_model
from avtta.models.balance import (
    Valuation,
    epoch_plan,
    plan_batches,
    plan_path,
    planned_logits,
    prepare_epoch_plan,
    schedule_position,
    structure_forward,
    valuate,
)
from avtta.models.resample import DROP_AUDIO, DROP_NONE, DROP_VIDEO, ResampleConfig, sample_level_plan
from avtta.models.structure import StructureConfig, StructurePreserver


@pytest.fixture
def model():
    return create_model("cav_mae_ft_test", num_classes=5, init_seed=0)


def _batch(b: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 32, 128, generator=g), torch.randn(b, 3, 32, 32, generator=g)


def test_planned_logits_are_the_per_row_forwards(model):
    audio, video = _batch(5)
    drop = np.array([DROP_NONE, DROP_VIDEO, DROP_AUDIO, DROP_NONE, DROP_VIDEO])
    logits = planned_logits(model, audio, video, drop)
    modes = {DROP_NONE: "multimodal", DROP_VIDEO: "missingaudioonly", DROP_AUDIO: "missingvideoonly"}
    for i, code in enumerate(drop.tolist()):
        expected = model(audio[i : i + 1], video[i : i + 1], modes[code])
        # The same row through the same layers in a batch of another size: equal up to kernel blocking (float32
        # matmuls of width 16 reorder a few additions, ~1e-6 of values of order 1).
        torch.testing.assert_close(logits[i : i + 1], expected, rtol=1e-5, atol=1e-5)
    logits.sum().backward()
    assert model.patch_embed_a.proj.weight.grad is not None and model.patch_embed_v.proj.weight.grad is not None
    with pytest.raises(ValueError, match="drop codes"):
        planned_logits(model, audio, video, np.full(5, 7))


def test_structure_forward_and_gradients_reach_the_anchors_and_the_encoders(model):
    audio, video = _batch(6, 1)
    logits, feats = structure_forward(model, audio, video)
    # Same operations as the multimodal forward, pooled in two halves then averaged by token count.
    torch.testing.assert_close(logits, model(audio, video, "multimodal"), rtol=1e-5, atol=1e-5)
    assert {k: tuple(v.shape) for k, v in feats.items()} == dict.fromkeys(("in_a", "in_v", "out_a", "out_v"), (6, 16))
    preserver = StructurePreserver(StructureConfig(num_anchors=4, queue_size=0), (16, 16), 16, seed=0)
    loss, _ = preserver(feats["in_a"], feats["in_v"], feats["out_a"], feats["out_v"])
    loss.backward()
    for name, p in preserver.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    for name in ("blocks_a.0.attn.qkv.weight", "blocks_v.0.attn.qkv.weight", "blocks_u.0.mlp.fc1.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_valuate_matches_the_formula_and_restores_the_mode(model):
    audio, video = _batch(7, 2)
    label = torch.tensor([0, 1, 2, 3, 4, 0, 1])
    batches = [{"audio": audio[:4], "video": video[:4], "label": label[:4], "key": list("abcd")},
               {"audio": audio[4:], "video": video[4:], "label": label[4:], "key": list("efg")}]  # fmt: skip
    model.train()
    got = valuate(model, batches)
    assert model.training and got.keys == list("abcdefg")
    with torch.no_grad():
        model.eval()
        right = [(model(audio, video, m).argmax(1) == label).double().numpy() for m in
                 ("multimodal", "missingaudioonly", "missingvideoonly")]  # fmt: skip
    np.testing.assert_array_equal(got.phi_a, (right[1] + 2 * right[0] - right[2]) / 2)
    np.testing.assert_array_equal(got.phi_v, (right[2] + 2 * right[0] - right[1]) / 2)


def test_prepare_epoch_plan_writes_once_and_resumes_from_the_file(tmp_path):
    cfg = ResampleConfig(method="sample", warmup=2)
    phis = Valuation(np.array([0.0, 0.5, 1.0, -0.5]), np.array([1.0, 0.5, 1.0, 0.5]), [])
    calls = []

    def fn():
        calls.append(1)
        return phis

    assert prepare_epoch_plan(tmp_path, cfg, 3, 1, 4, fn) is None and not calls  # warm-up epoch: plain
    plan = prepare_epoch_plan(tmp_path, cfg, 3, 2, 4, fn)
    assert plan == epoch_plan(phis, cfg, 3, 2) and plan_path(tmp_path, 2).exists() and len(calls) == 1
    assert prepare_epoch_plan(tmp_path, cfg, 3, 2, 4, fn) == plan and len(calls) == 1  # resumed: read, no valuation
    with pytest.raises(ValueError, match="another run"):
        prepare_epoch_plan(tmp_path, cfg, 4, 2, 4, fn)
    with pytest.raises(ValueError, match="covers 4 samples"):
        prepare_epoch_plan(tmp_path / "other", cfg, 3, 2, 5, fn)


def test_plan_batches_and_schedule_position():
    plan = sample_level_plan(np.array([0.0, 1.0, 1.0]), np.array([1.0, 1.0, 0.5]), 0, 5)  # 3 + 2 + 1 rows
    batches = plan_batches(plan, 4)
    assert [len(i) for i, _ in batches] == [4, 2] and [len(d) for _, d in batches] == [4, 2]
    assert sum((i for i, _ in batches), []) == plan.index.tolist()
    assert [len(i) for i, _ in plan_batches(plan, 4, drop_last=True)] == [4]
    assert schedule_position(2, 3, 10, 10) == 23.0  # a plain epoch: the usual step counter
    assert schedule_position(2, 15, 20, 10) == 27.5  # twice as many batches: half-steps over the same stretch
    with pytest.raises(ValueError, match="outside"):
        schedule_position(0, 5, 5, 10)
