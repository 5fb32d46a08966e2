"""Behaviour of every TTA method on a narrow CAV-MAE (released architecture, width 32): parameter selection,
one-step updates, exact resets, edge-case batches, configuration, generators and the statistics caches."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from avtta.adapt.methods.losses import shuffle_patches
from avtta.adapt.testing import narrow_model, smooth_batch
from avtta.models import create_model

from avtta import adapt

B, C = 3, 50
METHODS = adapt.list_methods()  # the sweep covers the whole registry
# Filters opened wide / recovery disabled, so that every adapting method really updates on the sweep batch.
SWEEP = {
    "eata": {"e_margin": 1.0, "fisher_size": B},
    "sar": {"e_margin": 1.0, "reset_constant": 0.0},
    "deyo": {"deyo_margin": 1.0, "plpd_threshold": -2.0},
    "brimpr": {"num_samples_source": B},
    "dasp": {"delta": 0.0},  # always take an updating branch (at B=3 the redundancy test may choose none)
    "sumi": {"smoothing": False, "uent_thresh": 0.0, "ment_thresh": 100.0},
    "audio_assist": {"threshold": 0.0, "consistency": "off", "loss_tolerance": 0.0},
}
# Filters closed: no sample is reliable.
CLOSED = {
    "eata": {"e_margin": 0.0},
    "sar": {"e_margin": 0.0},
    "deyo": {"deyo_margin": 0.0},
    "sumi": {"ment_thresh": -1.0},
}


def _batch(seed: int, n: int = B) -> tuple[torch.Tensor, torch.Tensor]:
    return smooth_batch(seed, n)


@pytest.fixture(scope="module")
def narrow() -> torch.nn.Module:
    return narrow_model(head_scale=30)


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    return _batch(0)


def _spread_head(model: torch.nn.Module) -> None:
    """Make the random model's predictions differ between clips (PTA partitions a batch by predicted class).

    A random CAV-MAE's pooled features share one large component (the positional embeddings), so every clip gets the
    same argmax: project the classifier rows off the mean feature of the sweep batch.
    """
    with torch.no_grad():
        feats = model(*_batch(0), mode="features")
        mean = feats.mean(0)
        weight = model.get_classifier().weight
        weight -= torch.outer(weight @ mean, mean) / mean.dot(mean)
        weight *= 3.0 / float((feats @ weight.t()).std())  # logits of standard deviation 3: confident, not saturated


PREPARE = {"pta": _spread_head}
# PTA updates only on a batch whose predictions are imbalanced (a class predicted more often than 1/K of the batch):
# the sweep batch with its first clip twice, so that two clips share a prediction and the third differs.
SWEEP_BATCH = {"pta": lambda batch: tuple(x[[0, 0, 1]] for x in batch)}


def _make(name: str, model: torch.nn.Module, **config) -> adapt.TTAMethod:
    PREPARE.get(name, lambda m: None)(model)
    source = [_batch(7)] if adapt.get_method_class(name).source_data is not None else None
    return adapt.create_method(name, model, source=source, **config)


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _state(method: adapt.TTAMethod) -> dict[str, torch.Tensor]:
    out = _params(method.model)
    own = set(out)
    out.update({f"method.{n}": p.detach().clone() for n, p in method.named_params if n not in own})
    return out


@pytest.mark.parametrize("name", METHODS)
def test_step_changes_only_selected_parameters_and_reset_is_exact(name: str, narrow, batch) -> None:
    batch = SWEEP_BATCH.get(name, lambda b: b)(batch)
    model = copy.deepcopy(narrow)
    method = _make(name, model, **SWEEP.get(name, {}))
    selected = {n for n, _ in method.named_params}
    in_model = {n for n, _ in model.named_parameters()}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == selected & in_model
    before = _state(method)
    logits = method.step(*batch)
    assert logits.shape == (B, C) and logits.dtype == torch.float32 and torch.isfinite(logits).all()
    after = _state(method)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    expected = {k if k in before else f"method.{k}" for k in selected}
    assert changed <= expected, f"{name} changed unselected parameters: {sorted(changed - expected)[:5]}"
    assert bool(changed) == method.adapts
    assert all(torch.isfinite(v).all() for v in after.values())

    method.reset()
    assert all(torch.equal(before[k], v) for k, v in _state(method).items()), f"{name}: reset did not restore"
    if method.optimizer is not None:
        assert method.optimizer.state_dict()["state"] == {}
    # after a reset the method repeats its first step exactly (model, optimiser, generator and state restored)
    again = method.step(*batch)
    assert torch.equal(again, logits)
    assert all(torch.equal(after[k], v) for k, v in _state(method).items())


@pytest.mark.parametrize("name", METHODS)
def test_batch_of_one(name: str, narrow) -> None:
    method = _make(name, copy.deepcopy(narrow), **SWEEP.get(name, {}))
    for seed in (1, 2):
        logits = method.step(*_batch(seed, n=1))
        assert logits.shape == (1, C) and torch.isfinite(logits).all()
    assert all(torch.isfinite(p).all() for p in method.params)


@pytest.mark.parametrize("name", sorted(CLOSED))
def test_all_samples_filtered_out(name: str, narrow, batch) -> None:
    model = copy.deepcopy(narrow)
    method = _make(name, model, **CLOSED[name])
    before = _params(model)
    for _ in range(2):
        logits = method.step(*batch)
        assert torch.isfinite(logits).all()
    assert all(torch.equal(before[k], v) for k, v in _params(model).items())
    if name == "eata":
        assert method.model_probs is None
    if name == "sar":
        assert method.ema is None


def test_full_width_parameter_selection() -> None:
    """Spec table 0.4 at the released width (no forward needed)."""
    model = create_model("cav_mae_ft_base", num_classes=50)
    dim = 768
    zeros = adapt.SourceStats(*(torch.zeros(11 if k[-1] in "av" else 1, dim) for k in adapt.methods.brimpr._STAT_KEYS))
    lower = {
        f"{stack}.{i}.{ln}.{kind}"
        for stack in ("blocks_a", "blocks_v")
        for i in range(9)
        for ln in ("norm1", "norm1_a", "norm1_v", "norm2", "norm2_a", "norm2_v")
        for kind in ("weight", "bias")
    }
    expected = {
        "source": (0, 0, set()),
        "t3a": (0, 0, set()),
        "tent": (284, 218_112, None),
        "eata": (284, 218_112, None),
        "sar": (216, 165_888, lower),
        "deyo": (216, 165_888, lower),
        "read": (2, 1_771_776, {"blocks_u.0.attn.qkv.weight", "blocks_u.0.attn.qkv.bias"}),
        "brimpr": (2, 168_960, {"prompts_a", "prompts_v"}),
    }
    all_norms = {
        f"{name}.{kind}"
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.LayerNorm)
        for kind in ("weight", "bias")
    }
    for name, (tensors, values, names) in expected.items():
        extra = {"fisher_alpha": 0.0} if name == "eata" else {}
        method = adapt.create_method(name, model, source_stats=zeros if name == "brimpr" else None, **extra)
        got = [n for n, _ in method.named_params]
        assert len(got) == tensors, name
        assert sum(p.numel() for p in method.params) == values, name
        assert set(got) == (all_norms if names is None else names), name
        if name == "brimpr":
            assert tuple(method.prompts_a.shape) == (11, 10, dim)
            assert not any(p.requires_grad for p in model.parameters())


def test_lr_is_honoured(narrow, batch) -> None:
    model = copy.deepcopy(narrow)
    before = _params(model)
    lr = 3e-4
    adapt.create_method("tent", model, lr=lr).step(*batch)
    # Adam's first step moves each parameter by lr * |g| / (|g| + eps), eps = 1e-8: > 0.9 lr for any |g| > 9e-8 (the
    # largest gradient is orders above that) and never above lr, up to float32 rounding: <= 10 roundings inside Adam
    # (2^-24 of the step each) and half an ulp of the parameter (max |theta| ~ 1 for LayerNorm weights).
    moved = max(float((p.detach() - before[k]).abs().max()) for k, p in model.named_parameters())
    theta = max(float(v.abs().max()) for v in before.values())
    assert 0.9 * lr < moved <= lr * (1 + 10 * 2.0**-24) + float(np.spacing(np.float32(theta)))


def test_precision(narrow, batch) -> None:
    with pytest.raises(ValueError, match="fp16"):
        adapt.create_method("tent", copy.deepcopy(narrow), precision="fp16")
    with pytest.raises(ValueError, match="precision"):
        adapt.create_method("tent", copy.deepcopy(narrow), precision="fp8")
    model = copy.deepcopy(narrow)
    fp32 = adapt.create_method("source", copy.deepcopy(narrow)).step(*batch)
    method = adapt.create_method("tent", model, precision="bf16")
    logits = method.step(*batch)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    # bf16 of the same forward: unit roundoff 2^-9 (0.2 %) per rounding, ~25 roundings in series along the 12-block
    # depth (attention + MLP per block) give <= ~5 % of the logit scale; a wrong forward is off by O(100 %)
    assert float((logits - fp32).abs().max()) < 0.05 * float(fp32.abs().max())
    assert any(not torch.equal(p, narrow.get_parameter(n)) for n, p in method.named_params)
    # the GradScaler path (fp16 on CUDA) runs the same update: exercise it on the CPU with fp32 gradients
    scaled = adapt.create_method("tent", copy.deepcopy(narrow))
    plain = adapt.create_method("tent", copy.deepcopy(narrow))
    scaled.scaler = torch.amp.GradScaler("cpu")
    scaled.step(*batch), plain.step(*batch)
    assert scaled.scaler.get_scale() == 2.0**16
    # scaling the loss by 2^16 and the gradients back by 2^-16 is exact in binary floating point (no overflow or
    # underflow at these magnitudes), and the rest is the same computation: the updates agree bit for bit
    assert all(torch.equal(p, q) for p, q in zip(scaled.params, plain.params, strict=True))


@pytest.mark.parametrize("name", ["deyo", "brimpr"])
def test_generator_seeding(name: str, narrow, batch) -> None:
    config = SWEEP[name] | {"seed": 5}
    runs = []
    for reseed in (100, 100, 101):
        method = _make(name, copy.deepcopy(narrow), **config)
        method.reseed(reseed)
        method.step(*batch)
        runs.append(torch.cat([p.detach().flatten() for p in method.params]))
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_brimpr_prompt_init_is_seeded(narrow) -> None:
    a = _make("brimpr", copy.deepcopy(narrow), num_samples_source=B, seed=1)
    b = _make("brimpr", copy.deepcopy(narrow), num_samples_source=B, seed=1)
    c = _make("brimpr", copy.deepcopy(narrow), num_samples_source=B, seed=2)
    assert torch.equal(a.prompts_a, b.prompts_a) and not torch.equal(a.prompts_a, c.prompts_a)
    # 1e-4: not a float tolerance but the prompt initialisation range (BriMPRConfig.prompt_init: U(-1e-4, 1e-4))
    assert float(a.prompts_v.detach().abs().max()) <= 1e-4 and not torch.equal(a.prompts_a, a.prompts_v)


def test_reset_with_run_seed(narrow, batch) -> None:
    method = _make("brimpr", copy.deepcopy(narrow), num_samples_source=B, seed=1)
    initial = method.prompts_a.detach().clone()
    method.reset(seed=111)
    drawn = method.prompts_a.detach().clone()
    assert not torch.equal(drawn, initial) and float(drawn.abs().max()) <= 1e-4  # the initialisation range
    method.step(*batch)
    method.reset(seed=111)
    assert torch.equal(method.prompts_a, drawn)
    method.reset()
    assert torch.equal(method.prompts_a, initial)
    # the run seed drives the generator: reset(seed) == reseed(seed) on a fresh method
    first = _make("deyo", copy.deepcopy(narrow), **SWEEP["deyo"])
    first.reseed(7)
    second = _make("deyo", copy.deepcopy(narrow), **SWEEP["deyo"])
    second.step(*batch)
    second.reset(seed=7)
    first.step(*batch), second.step(*batch)
    assert all(torch.equal(p, q) for p, q in zip(first.params, second.params, strict=True))


@pytest.mark.parametrize("quirk", [True, False])
def test_sar_recovery(quirk: bool, narrow, batch) -> None:
    model = copy.deepcopy(narrow)
    before = _params(model)
    method = adapt.create_method("sar", model, e_margin=1.0, reset_constant=100.0, ema_quirk=quirk)
    method.step(*batch)
    assert method.recoveries == 1
    assert all(torch.equal(before[k], v) for k, v in _params(model).items())
    assert (method.ema is not None) == quirk


def test_read_scoring(narrow, batch) -> None:
    source = adapt.create_method("source", copy.deepcopy(narrow)).step(*batch)
    pre = adapt.create_method("read", copy.deepcopy(narrow), score="pre")
    post = adapt.create_method("read", copy.deepcopy(narrow))
    assert torch.equal(pre.step(*batch), source)
    runs = {"stack": 0, "head": 0}
    post.model.blocks_v[0].register_forward_hook(lambda *_: runs.__setitem__("stack", runs["stack"] + 1))
    post.model.mlp_head.register_forward_hook(lambda *_: runs.__setitem__("head", runs["head"] + 1))
    scored = post.step(*batch)
    # the frozen stacks run once; only the fusion block and head run again after the update
    assert runs == {"stack": 1, "head": 2}
    assert not torch.equal(scored, source)
    assert torch.equal(scored, post.predict(*batch))  # the second forward sees the updated qkv (and equals a full one)


def test_t3a_support_filter(narrow, batch) -> None:
    keep_all = adapt.create_method("t3a", copy.deepcopy(narrow), filter_K=-1)
    keep_one = adapt.create_method("t3a", copy.deepcopy(narrow), filter_K=1)
    for step in (1, 2):
        keep_all.step(*batch)
        keep_one.step(*batch)
        assert keep_all.supports.shape[0] == C + step * B
    labels = keep_one.labels.argmax(1)
    assert torch.equal(labels, torch.unique(labels))  # one entry per class, classes in order
    # the kept entry of each class is its lowest-entropy one
    full_labels = keep_all.labels.argmax(1)
    for cls, ent in zip(labels.tolist(), keep_one.entropy.tolist(), strict=True):
        # the same model on the same batches computes the same entropies bit for bit: the kept one is a copy
        assert ent == float(keep_all.entropy[full_labels == cls].min())


def test_shuffle_patches() -> None:
    x = torch.arange(2 * 8 * 4, dtype=torch.float32).reshape(2, 8, 4)
    identity = torch.arange(4.0).repeat(2, 1)
    assert torch.equal(shuffle_patches(x, 2, identity), x)
    swap = torch.tensor([[1.0, 0.0, 2.0, 3.0], [3.0, 2.0, 1.0, 0.0]])  # argsort -> [1,0,2,3] and [3,2,1,0]
    out = shuffle_patches(x, 2, swap)
    tiles = x.reshape(2, 2, 4, 2, 2).permute(0, 1, 3, 2, 4)  # [n, row, col, h, w]
    out_tiles = out.reshape(2, 2, 4, 2, 2).permute(0, 1, 3, 2, 4)
    assert torch.equal(out_tiles[0, 0, 0], tiles[0, 0, 1]) and torch.equal(out_tiles[0, 1, 0], tiles[0, 1, 0])
    assert torch.equal(out_tiles[1, 0, 0], tiles[1, 1, 1]) and torch.equal(out_tiles[1, 1, 1], tiles[1, 0, 0])
    with pytest.raises(ValueError, match="divisible"):
        shuffle_patches(torch.zeros(1, 6, 4), 4, torch.rand(1, 16))


def test_statistics_caches(narrow, tmp_path) -> None:
    source = [_batch(7)]

    def exploding():
        raise AssertionError("the cache should have been used")
        yield

    fisher = adapt.fisher_cached(narrow, source, tmp_path / "fisher.safetensors", num_clips=B, metadata={"ckpt": "x"})
    again = adapt.fisher_cached(
        narrow, exploding(), tmp_path / "fisher.safetensors", num_clips=B, metadata={"ckpt": "x"}
    )
    assert list(fisher) == list(again) and all(torch.equal(fisher[k][0], again[k][0]) for k in fisher)
    with pytest.raises(ValueError, match="ckpt"):
        adapt.fisher_cached(narrow, exploding(), tmp_path / "fisher.safetensors", num_clips=B, metadata={"ckpt": "y"})
    stats = adapt.source_stats_cached(narrow, source, tmp_path / "stats.safetensors", num_samples=B)
    loaded = adapt.load_source_stats(tmp_path / "stats.safetensors")
    assert torch.equal(stats.std_a, loaded.std_a) and torch.equal(stats.mean_u, loaded.mean_u)
    # a cached Fisher drives EATA exactly like one computed in place
    outs = []
    for table in (None, adapt.load_fisher(tmp_path / "fisher.safetensors")):
        method = adapt.create_method("eata", copy.deepcopy(narrow), source=source, fisher=table, **SWEEP["eata"])
        method.step(*_batch(0))
        outs.append(torch.cat([p.detach().flatten() for p in method.params]))
    assert torch.equal(outs[0], outs[1])


def test_registry_errors(narrow) -> None:
    assert adapt.list_methods() == METHODS
    assert isinstance(adapt.create_method("None", copy.deepcopy(narrow)), adapt.Source)
    with pytest.raises(ValueError, match="unknown TTA method"):
        adapt.create_method("cotta", narrow)
    with pytest.raises(TypeError, match="e_margin"):
        adapt.create_method("tent", narrow, e_margin=0.3)
    with pytest.raises(ValueError, match="fisher"):
        adapt.create_method("eata", copy.deepcopy(narrow))
    with pytest.raises(ValueError, match="source"):
        adapt.create_method("brimpr", copy.deepcopy(narrow))
    assert adapt.make_config("deyo", patch_len=2).to_dict()["patch_len"] == 2


def test_declarations_are_served(narrow) -> None:
    """What a method needs from the run is declared on the class and resolved generically (no per-class switch)."""
    assert adapt.EATA.source_data.argument == "fisher" and adapt.BriMPR.source_data.argument == "source_stats"
    assert adapt.EATA.source_data.size(adapt.make_config("eata", fisher_size=7)) == 7
    assert adapt.Tent.source_data is None
    # model facts < dataset preset < protocol override
    assert adapt.BriMPR.run_config(narrow) == {"prompt_layers": min(11, narrow.depth)}
    assert adapt.BriMPR.run_config(narrow, protocol="both")["tau"] == 0.25
    assert "tau" not in adapt.BriMPR.run_config(narrow, protocol="video")

    class Preset(adapt.Tent):
        presets = {"ks50": {"lr": 1e-3, "seed": 4}}
        protocol_overrides = {"both": {"lr": 2e-3}}

    assert Preset.run_config(narrow, dataset="ks50", protocol="video") == {"lr": 1e-3, "seed": 4}
    assert Preset.run_config(narrow, dataset="ks50", protocol="both") == {"lr": 2e-3, "seed": 4}
    assert Preset.run_config(narrow, dataset="vgg", protocol="both") == {"lr": 2e-3}
    with pytest.raises(TypeError, match="fisher"):
        adapt.create_method("tent", copy.deepcopy(narrow), fisher={})
    # fisher_alpha = 0 (ETA) declares that it needs no Fisher: no source data asked for
    assert not adapt.EATA.source_data.needed(adapt.make_config("eata", fisher_alpha=0.0))
    assert adapt.create_method("eata", copy.deepcopy(narrow), fisher_alpha=0.0).fisher == []
