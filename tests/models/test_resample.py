"""Valuation-based re-sampling plans (models/resample.py)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from avtta.models.resample import (
    DROP_AUDIO,
    DROP_NONE,
    DROP_VIDEO,
    ResampleConfig,
    ResamplePlan,
    load_plan,
    modality_level_plan,
    sample_level_copies,
    sample_level_plan,
    save_plan,
)


def test_sample_level_thresholds_at_and_around_each_boundary():
    # Bands: phi >= 1: 0; [0.4, 1): 1; [-0.1, 0.4): 2; < -0.1: 3. Each boundary, and values just either side of it.
    eps = 1e-9
    phi = np.array([1.5, 1.0 + eps, 1.0, 1.0 - eps, 0.4 + eps, 0.4, 0.4 - eps, -0.1 + eps, -0.1, -0.1 - eps, -0.5])
    expected = [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3]
    assert sample_level_copies(phi).tolist() == expected
    # The values the 0/1/2 valuation can produce, and what the official strict bands give them (same).
    assert sample_level_copies(np.array([-0.5, 0.0, 0.5, 1.0, 1.5])).tolist() == [3, 2, 1, 0, 0]


def _official_sample_level_rows(phi_a, phi_v):
    """The official dataset construction (AV_KS_Dataset_sample_level.__init__), transcribed from its logic."""
    rows = [(i, 0) for i in range(len(phi_a))]
    for i, (ca, cv) in enumerate(zip(phi_a, phi_v, strict=True)):
        for c, drop in ((ca, 2), (cv, 1)):
            k = 1 if 0.4 < c < 1 else 2 if -0.1 < c < 0.4 else 3 if c < -0.1 else 0
            rows.extend([(i, drop)] * k)
    return rows


def test_sample_level_modality_choice_matches_the_official_construction():
    # Every reachable (fused, audio, video) correctness triple -> phis; the official rows as a multiset.
    triples = [(f, a, v) for f in (0, 1) for a in (0, 1) for v in (0, 1)]
    phi_a = np.array([(a + 2 * f - v) / 2 for f, a, v in triples])
    phi_v = np.array([(v + 2 * f - a) / 2 for f, a, v in triples])
    plan = sample_level_plan(phi_a, phi_v, seed=3, epoch=7)
    got = sorted(zip(plan.index.tolist(), plan.drop.tolist(), strict=True))
    assert got == sorted(_official_sample_level_rows(phi_a.tolist(), phi_v.tolist()))
    # Spot checks: fused wrong, audio right, video wrong -> phi_a 0.5 (1 copy, video dropped), phi_v -0.5 (3 copies,
    # audio dropped); everything right -> no copy.
    i = triples.index((0, 1, 0))
    mine = [(d, c) for j, d, c in zip(plan.index, plan.drop, plan.copy, strict=True) if j == i]
    assert sorted(mine) == [(DROP_NONE, 0), (DROP_AUDIO, 2), (DROP_AUDIO, 3), (DROP_AUDIO, 4), (DROP_VIDEO, 1)]
    assert (plan.index == triples.index((1, 1, 1))).sum() == 1


def test_plan_without_copies_is_the_plain_epoch_order():
    # All phis 1 -> no copies: the rows must be IndexedLoader.order()'s permutation of range(n).
    n, seed, epoch = 37, 5, 2
    plan = sample_level_plan(np.ones(n), np.ones(n), seed, epoch)
    order = list(range(n))
    random.Random(f"{seed}:{epoch}:order").shuffle(order)
    assert plan.index.tolist() == order and not plan.drop.any() and not plan.copy.any()


def test_plans_are_deterministic_in_seed_and_epoch():
    rng = np.random.default_rng(0)
    phi_a = rng.choice([-0.5, 0.0, 0.5, 1.0, 1.5], 200)
    phi_v = rng.choice([-0.5, 0.0, 0.5, 1.0, 1.5], 200)
    cfg = ResampleConfig(method="modality")
    for make in (lambda s, e: sample_level_plan(phi_a, phi_v, s, e),
                 lambda s, e: modality_level_plan(phi_a, phi_v, s, e, cfg)):  # fmt: skip
        assert make(1, 6) == make(1, 6)
        assert make(1, 6).index.tolist() != make(1, 7).index.tolist()
        assert make(1, 6).index.tolist() != make(2, 6).index.tolist()
    # The sample level's rows as a multiset depend on the valuation only; the order on (seed, epoch).
    a, b = sample_level_plan(phi_a, phi_v, 1, 6), sample_level_plan(phi_a, phi_v, 2, 9)
    key = lambda p: sorted(zip(p.index.tolist(), p.drop.tolist(), p.copy.tolist(), strict=True))  # noqa: E731
    assert key(a) == key(b)


def test_modality_level_count_on_a_hand_example():
    # 10 samples, whole set as the subset (part_ratio 1: no randomness in the means).
    # phi_a: five 0.0 and five 0.5 -> mean 0.25; phi_v: all 1.0 -> mean 1.0. gap_a = 0.75 > gap_v = 0.0:
    # audio is the weaker modality -> drop video. d = 0.75 / 3 * 2 = 0.5 -> int(0.5 * 10) = 5 extra rows.
    phi_a = np.array([0.0] * 5 + [0.5] * 5)
    phi_v = np.ones(10)
    plan = modality_level_plan(phi_a, phi_v, 0, 5, ResampleConfig(method="modality", part_ratio=1.0))
    assert len(plan) == 15
    assert (plan.drop == DROP_VIDEO).sum() == 5 and (plan.drop == DROP_AUDIO).sum() == 0
    assert plan.stats["subset_phi_a_mean"] == 0.25 and plan.stats["difference"] == 0.5
    # Swapped phis: video weaker -> the audio is dropped. alpha 0.5 halves the count (int(2.5) = 2).
    swapped = modality_level_plan(phi_v, phi_a, 0, 5, ResampleConfig(method="modality", part_ratio=1.0, alpha=0.5))
    assert (swapped.drop == DROP_AUDIO).sum() == 2 and (swapped.drop == DROP_VIDEO).sum() == 0
    # Equal means: no extra rows.
    assert len(modality_level_plan(phi_a, phi_a, 0, 5, ResampleConfig(method="modality", part_ratio=1.0))) == 10


def test_modality_level_subset_is_a_seeded_fifth():
    phi_a = np.linspace(-0.5, 1.5, 100)
    plan = modality_level_plan(phi_a, 1.5 - phi_a, 4, 6)
    assert plan.stats["subset_size"] == 20
    again = modality_level_plan(phi_a, 1.5 - phi_a, 4, 6)
    other = modality_level_plan(phi_a, 1.5 - phi_a, 4, 8)
    assert again.stats == plan.stats and other.stats["subset_phi_a_mean"] != plan.stats["subset_phi_a_mean"]
    # Tiny sets: at least one sample is drawn (the official int(N * 0.2) = 0 divides by zero).
    assert modality_level_plan(np.zeros(3), np.ones(3), 0, 5).stats["subset_size"] == 1


def test_plan_json_round_trip(tmp_path):
    phi_a = np.array([0.0, 0.5, 1.0, -0.5, 1.5])
    plan = sample_level_plan(phi_a, 1.0 - phi_a, 11, 5)
    path = save_plan(plan, tmp_path / "plans" / "epoch_0005.json")
    back = load_plan(path, seed=11, epoch=5, method="sample", num_samples=5)
    assert back == plan and back.drop_names() == plan.drop_names()
    assert back.to_columns()["index"].dtype == np.int64
    with pytest.raises(ValueError, match="another run"):
        load_plan(path, epoch=6)
    data = json.loads(path.read_text())
    data["copy"][0] = 5 if data["copy"][0] == 0 else 0  # break the one-copy-0-row-per-sample rule
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="copy-0"):
        load_plan(path)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json"):
        load_plan(tmp_path / "bad.json")


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="one length"):
        sample_level_plan(np.zeros(3), np.zeros(4), 0, 5)
    with pytest.raises(ValueError, match="NaN"):
        sample_level_plan(np.array([np.nan]), np.zeros(1), 0, 5)
    with pytest.raises(ValueError, match="method"):
        ResampleConfig(method="both")
    with pytest.raises(ValueError, match="warmup"):
        ResampleConfig(method="sample", warmup=0)
    assert not ResampleConfig(method="sample").active(4) and ResampleConfig(method="sample").active(5)
    assert isinstance(sample_level_plan(np.zeros(2), np.zeros(2), 0, 5), ResamplePlan)
