"""CAVMAEFT: registry sweep, forward modes, gradients, building blocks, parameter groups."""

from __future__ import annotations

import pytest
import torch
from avtta.models import CAVMAEFT, MODES, Block, create_model, list_models, sincos_pos_embed_2d
from torch import nn

# Base keeps its 11 + 11 + 1 block structure but is narrowed and fed small inputs so the sweep stays fast.
SMALL = {
    "cav_mae_ft_base": {"embed_dim": 16, "num_heads": 2, "audio_length": 32, "img_size": 32},
    "cav_mae_ft_tiny": {"audio_length": 64, "img_size": 64},
    "cav_mae_ft_test": {},
}
LOGIT_MODES = [mode for mode in MODES if mode != "features"]
# Tolerances: ``torch.testing.assert_close`` without arguments uses float32's defaults (rtol 1.3e-6 ~ 11 ulps, atol
# 1e-5). Every such check here compares the same float32 math evaluated in another grouping (a mode against its
# pieces, a block against its formula) on O(1) activations of a width <= 32 model: reductions of <= 4 * 32 terms,
# whose reassociation error is a few ulps of the partial sums, i.e. ~1e-6 at these magnitudes on any kernel.


def inputs(model: CAVMAEFT, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    audio = torch.randn(batch, model.audio_length, model.num_mel_bins, generator=gen)
    video = torch.randn(batch, 3, model.img_size, model.img_size, generator=gen)
    return audio, video


def randomise_norms(model: nn.Module, seed: int = 1) -> None:
    """Make the LayerNorms differ from 1/0 so that using the wrong selector changes the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.copy_(1 + 0.5 * torch.randn(module.weight.shape, generator=gen))
                module.bias.copy_(0.5 * torch.randn(module.bias.shape, generator=gen))


def expected_grad_names(model: CAVMAEFT, mode: str) -> set[str]:
    """Parameters a forward mode uses, written from the spec (section 6), independently of the model code."""
    modality = {"audioonly": "a", "missingaudioonly": "a", "videoonly": "v", "missingvideoonly": "v"}.get(mode, "av")
    selectors = {"audioonly": "a", "videoonly": "v", "missingaudioonly": "ua", "missingvideoonly": "uv"}.get(mode, "u")
    block_norms = {"u": {"norm1", "norm2"}, "a": {"norm1_a", "norm2_a"}, "v": {"norm1_v", "norm2_v"}}
    fusion_parts = {"attn", "mlp"}.union(*(block_norms[s] for s in selectors))
    final_norms = {{"u": "norm", "a": "norm_a", "v": "norm_v"}[s] for s in selectors}
    used = set()
    for name, _ in model.named_parameters():
        top, *rest = name.split(".")
        if top in ("blocks_a", "blocks_v"):
            ok = top[-1] in modality and rest[1] in {"norm1", "norm2", "attn", "mlp"}  # unified norms only
        elif top == "blocks_u":
            ok = rest[1] in fusion_parts
        elif top in ("norm", "norm_a", "norm_v"):
            ok = top in final_norms
        elif top == "mlp_head":
            ok = mode != "features" or rest[0] == "0"
        else:  # modality_x, pos_embed_x, patch_embed_x
            ok = top[-1] in modality
        if ok:
            used.add(name)
    return used


def test_list_models() -> None:
    assert list_models() == ["cav_mae_ft_base", "cav_mae_ft_test", "cav_mae_ft_tiny"]
    with pytest.raises(ValueError, match="registered models"):
        create_model("cav_mae_ft_huge")
    with pytest.raises(ValueError, match="unknown override"):
        create_model("cav_mae_ft_test", dropout=0.1)


@pytest.mark.parametrize("name", list_models())
def test_registry_sweep(name: str) -> None:
    """Every variant: shapes of every mode, and exactly the spec's parameters get gradients per mode."""
    model = create_model(name, num_classes=7, **SMALL[name]).train()
    randomise_norms(model)
    audio, video = inputs(model)
    d = model.embed_dim
    assert model.embed_audio(audio).shape == (2, model.num_audio_patches, d)
    assert model.embed_video(video).shape == (2, model.num_video_patches, d)
    p = model.patch_size
    assert model.num_audio_patches == (model.num_mel_bins // p) * (model.audio_length // p)
    seen: set[str] = set()
    for mode in MODES:
        model.zero_grad(set_to_none=True)
        out = model(audio, video, mode)
        assert out.shape == ((2, d) if mode == "features" else (2, 7)), mode
        assert torch.isfinite(out).all()
        out.square().sum().backward()
        got = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        assert got == expected_grad_names(model, mode), mode
        seen |= got
    # Over all modes, every parameter is trained except the per-modality LayerNorms of the modality-specific
    # stacks (blocks_a/v.*.norm{1,2}_{a,v}), which no forward mode uses (spec section 4).
    unused = {n for n, _ in model.named_parameters() if n.split(".")[0] in ("blocks_a", "blocks_v")
              and n.split(".")[2] in ("norm1_a", "norm1_v", "norm2_a", "norm2_v")}  # fmt: skip
    assert unused and seen == {n for n, _ in model.named_parameters()} - unused
    # Modes needed to reach every other parameter: multimodal + missingaudioonly + missingvideoonly.
    assert seen == set().union(*(expected_grad_names(model, m) for m in LOGIT_MODES[:1] + LOGIT_MODES[3:]))


def test_single_modality_modes_take_one_input() -> None:
    model = create_model("cav_mae_ft_test").eval()
    audio, video = inputs(model)
    with torch.no_grad():
        for mode in ("audioonly", "missingaudioonly"):
            torch.testing.assert_close(model(audio, None, mode), model(audio, video, mode))
        for mode in ("videoonly", "missingvideoonly"):
            torch.testing.assert_close(model(None, video, mode), model(audio, video, mode))
    with pytest.raises(ValueError, match="needs video"):
        model(audio, None, "multimodal")
    with pytest.raises(ValueError, match="needs audio"):
        model(None, video, "audioonly")
    with pytest.raises(ValueError, match="unknown mode"):
        model(audio, video, "both")
    with pytest.raises(ValueError, match=r"\[B, 32, 128\]"):
        model(audio.transpose(1, 2), video)
    with pytest.raises(ValueError, match="video must be"):
        model(audio, video[:, :, :16])


def test_modes_compose_from_building_blocks() -> None:
    """forward == the public pieces (embed, run_stack, fuse, pool, head) assembled as in spec section 6."""
    model = create_model("cav_mae_ft_test").eval()
    randomise_norms(model)
    audio, video = inputs(model, batch=3)
    with torch.no_grad():
        a = model.run_stack(model.embed_audio(audio), "a")
        v = model.run_stack(model.embed_video(video), "v")
        pooled = model.pool(model.fuse(torch.cat((a, v), 1)), "norm")
        torch.testing.assert_close(model(audio, video), model.head(pooled))
        torch.testing.assert_close(model(audio, video, "features"), model.mlp_head[0](pooled))
        only_a, only_v = model.pool(model.fuse(a, "a"), "norm_a"), model.pool(model.fuse(v, "v"), "norm_v")
        torch.testing.assert_close(model(audio, video, "audioonly"), model.head(only_a))
        torch.testing.assert_close(model(audio, video, "videoonly"), model.head(only_v))
        both = (model.pool(model.fuse(v, "u"), "norm") + model.pool(model.fuse(v, "v"), "norm_v")) / 2
        torch.testing.assert_close(model(audio, video, "missingvideoonly"), model.head(both))


def test_block_selectors() -> None:
    torch.manual_seed(0)
    block = Block(8, 2)
    randomise_norms(block)
    x = torch.randn(2, 5, 8)
    for selector, (n1, n2) in {None: ("norm1", "norm2"), "u": ("norm1", "norm2"), "a": ("norm1_a", "norm2_a"),
                               "v": ("norm1_v", "norm2_v")}.items():  # fmt: skip
        h = x + block.attn(getattr(block, n1)(x))
        torch.testing.assert_close(block(x, selector), h + block.mlp(getattr(block, n2)(h)))
    with pytest.raises(ValueError, match="selector"):
        block(x, "av")


def test_attention_and_mlp_follow_the_reference_layout() -> None:
    """qkv rows 0..D-1 are q, D..2D-1 k, 2D.. v; heads in order; scale head_dim^-0.5; exact GELU."""
    torch.manual_seed(0)
    block = Block(8, 2)
    x = torch.randn(2, 5, 8)
    q, k, v = block.attn.qkv(x).split(8, dim=-1)
    heads = [slice(0, 4), slice(4, 8)]
    out = torch.cat([((q[..., h] @ k[..., h].transpose(1, 2)) * 0.5).softmax(-1) @ v[..., h] for h in heads], -1)
    torch.testing.assert_close(block.attn(x), block.attn.proj(out))
    hidden = block.mlp.fc1(x)
    torch.testing.assert_close(block.mlp(x), block.mlp.fc2(0.5 * hidden * (1 + torch.erf(hidden / 2**0.5))))
    assert all(m.eps == 1e-5 for m in block.modules() if isinstance(m, nn.LayerNorm))


def test_audio_tokenisation_layout() -> None:
    """Token m = f * (T/16) + t: a patch of the fbank at time chunk t, frequency band f lands on that token."""
    model = create_model("cav_mae_ft_test", audio_length=48).eval()
    cols = 48 // 16
    audio = torch.zeros(1, 48, 128)
    audio[0, 16:32, 32:48] = 1.0  # time chunk t = 1, frequency band f = 2
    with torch.no_grad():
        tokens = model.embed_audio(audio) - model.pos_embed_a - model.modality_a
    # An untouched token is bias + pos + modality - pos - modality: 4 float32 roundings of values <= 2, <= 4 x half an
    # ulp(2) = 4.8e-7 per channel, <= 7.7e-6 summed over 16 channels (measured 2.9e-7). The patch of ones moves its
    # token by O(1) (measured 15.8). 1e-3 lies orders of magnitude from both.
    changed = (tokens[0] - model.patch_embed_a.proj.bias).abs().sum(-1) > 1e-3
    assert changed.nonzero().flatten().tolist() == [2 * cols + 1]


def test_sincos_first_half_encodes_columns() -> None:
    table = sincos_pos_embed_2d(16, 3, 5)
    assert table.shape == (15, 16) and table.dtype == torch.float32
    # token 1 = (row 0, col 1) differs from token 0 in the first half only; token 5 = (row 1, col 0) in the second.
    assert torch.equal(table[1, 8:], table[0, 8:]) and not torch.equal(table[1, :8], table[0, :8])
    assert torch.equal(table[5, :8], table[0, :8]) and not torch.equal(table[5, 8:], table[0, 8:])
    # e(m) = [sin(j w), cos(j w), sin(i w), cos(i w)], w_k = 10000^(-k/4)
    omega = 1.0 / 10000 ** (torch.arange(4, dtype=torch.float64) / 4)
    i, j = 2, 3
    ref = torch.cat([torch.sin(j * omega), torch.cos(j * omega), torch.sin(i * omega), torch.cos(i * omega)])
    torch.testing.assert_close(table[i * 5 + j], ref.float())  # float64 table cast to float32: defaults (11 ulps)
    model = create_model("cav_mae_ft_test")
    torch.testing.assert_close(model.pos_embed_a[0], sincos_pos_embed_2d(16, 8, 2))


def test_init_is_seeded_and_leaves_global_rng_alone() -> None:
    state = torch.get_rng_state()
    first, second = create_model("cav_mae_ft_test"), create_model("cav_mae_ft_test")
    assert torch.equal(torch.get_rng_state(), state)
    for (name, p1), p2 in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(p1, p2), name
    other = create_model("cav_mae_ft_test", init_seed=1)
    assert not torch.equal(other.blocks_a[0].attn.qkv.weight, first.blocks_a[0].attn.qkv.weight)
    assert all(torch.isfinite(p).all() for p in first.parameters())


# ---------------------------------------------------------------------- prompts, features, masking


def manual_stack(model: CAVMAEFT, x: torch.Tensor, prompts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Deep prompting and layer features written out as in spec methods.md 8.1 / 8.2 step 3."""
    blocks, num_prompts, feats = model.blocks_a, prompts.shape[1], []
    for index, block in enumerate(blocks):
        if index < prompts.shape[0]:
            x = torch.cat((prompts[index].expand(x.shape[0], -1, -1), x), 1)
        x = block(x)
        if index < prompts.shape[0]:
            x = x[:, num_prompts:]
        ln = blocks[index + 1].norm1 if index + 1 < len(blocks) else model.blocks_u[0].norm1
        feats.append(ln(x).mean(1))
    return x, torch.stack(feats, 1)


@pytest.mark.parametrize("layers", [3, 2])
def test_run_stack_prompts_and_layer_features(layers: int) -> None:
    model = create_model("cav_mae_ft_test", depth=3).eval()
    randomise_norms(model)
    audio, _ = inputs(model)
    tokens = model.embed_audio(audio).detach()
    prompts = torch.randn(layers, 4, model.embed_dim, generator=torch.Generator().manual_seed(3), requires_grad=True)
    out, feats = model.run_stack(tokens, "a", prompts=prompts, layer_features=True)
    ref_out, ref_feats = manual_stack(model, tokens, prompts)
    assert out.shape == tokens.shape and feats.shape == (2, 3, model.embed_dim)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(feats, ref_feats)
    # the prompts change the patch tokens by O(1e-2) and more, far outside allclose's defaults (rtol 1e-5, atol 1e-8)
    assert not torch.allclose(out, model.run_stack(tokens, "a"))
    feats.sum().backward()
    assert prompts.grad is not None and prompts.grad.abs().sum() > 0
    # without prompts the layer features are the plain stack's
    plain, plain_feats = model.run_stack(tokens, "a", layer_features=True)
    torch.testing.assert_close(plain, model.run_stack(tokens, "a"))
    torch.testing.assert_close(plain_feats[:, -1], model.blocks_u[0].norm1(plain).mean(1))
    with pytest.raises(ValueError, match="prompts"):
        model.run_stack(tokens, "a", prompts=torch.zeros(4, 2, model.embed_dim))
    with pytest.raises(ValueError, match="modality"):
        model.run_stack(tokens, "u")


def test_keep_tokens() -> None:
    tokens = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)
    noise = torch.tensor([[0.5, 0.1, 0.9, 0.3, 0.7], [0.2, 0.8, 0.05, 0.6, 0.4]])
    kept = CAVMAEFT.keep_tokens(tokens, noise, 3)
    torch.testing.assert_close(kept[0], tokens[0, [1, 3, 0]])  # ascending noise order
    torch.testing.assert_close(kept[1], tokens[1, [2, 0, 4]])
    with pytest.raises(ValueError, match="noise shape"):
        CAVMAEFT.keep_tokens(tokens, noise[:, :4], 3)
    with pytest.raises(ValueError, match="keep"):
        CAVMAEFT.keep_tokens(tokens, noise, 6)


def test_forward_hooks_equal_the_building_blocks() -> None:
    """The prompt and masking hooks of the one composition equal run_stack / keep_tokens assembled by hand."""
    model = create_model("cav_mae_ft_test", depth=3).eval()
    randomise_norms(model)
    audio, video = inputs(model, batch=3)
    gen = torch.Generator().manual_seed(5)
    prompts = {m: torch.randn(2, 4, model.embed_dim, generator=gen) for m in "av"}
    noise = {"a": torch.rand(3, model.num_audio_patches, generator=gen), "v": torch.rand(3, 4, generator=gen)}
    keep = {"a": (noise["a"], 7), "v": (noise["v"], 2)}
    with torch.no_grad():
        a = model.run_stack(model.keep_tokens(model.embed_audio(audio), noise["a"], 7), "a", prompts=prompts["a"])
        v = model.run_stack(model.keep_tokens(model.embed_video(video), noise["v"], 2), "v", prompts=prompts["v"])
        pooled = model.pool(model.fuse(torch.cat((a, v), 1)), "norm")
        # the same operations in the same order: equal to the last bit
        assert torch.equal(model(audio, video, prompts=prompts, keep=keep), model.head(pooled))
        assert torch.equal(model.forward_features(audio, video, prompts=prompts, keep=keep), pooled)
        assert torch.equal(model.encode("a", audio, prompts=prompts["a"], keep=keep["a"]), a)
        missing = (model.pool(model.fuse(a, "u"), "norm") + model.pool(model.fuse(a, "a"), "norm_a")) / 2
        assert torch.equal(model.fuse_pool(a, None, "missingaudioonly"), missing)
        assert torch.equal(model.forward_head(pooled, pre_logits=True), model.mlp_head[0](pooled))
    with pytest.raises(ValueError, match="route"):
        model.fuse_pool(a, v, "features")
    with pytest.raises(ValueError, match="modality"):
        model.encode("u", audio)


def test_contract_of_methods_and_training() -> None:
    model = create_model("cav_mae_ft_test", num_classes=7)
    assert model.get_classifier() is model.mlp_head[1] and model.get_classifier().out_features == model.num_classes
    assert (model.depth, model.embed_dim, model.num_classes) == (2, 16, 7)
    groups = model.param_groups()
    no_decay = model.no_weight_decay()
    assert set(groups["norms"]) | set(groups["embed"]) <= no_decay
    assert {n for n, _ in model.named_parameters() if n.endswith(".bias")} <= no_decay
    assert "blocks_a.0.attn.qkv.weight" not in no_decay and "mlp_head.1.weight" not in no_decay


# ---------------------------------------------------------------------- parameter groups


def test_param_groups_small() -> None:
    model = create_model("cav_mae_ft_test")
    groups = model.param_groups()
    names = [name for name, _ in model.named_parameters()]
    order = {name: index for index, name in enumerate(names)}
    for group, members in groups.items():
        assert members == sorted(members, key=order.__getitem__), group
        assert len(set(members)) == len(members), group
    layer_norms = [name for name, module in model.named_modules() if isinstance(module, nn.LayerNorm)]
    norms = [f"{name}.{p}" for name in layer_norms for p in ("weight", "bias")]
    assert groups["norms"] == norms
    assert groups["norms.blocks_a.1"] == [
        f"blocks_a.1.{n}.{p}" for n in ("norm1", "norm1_a", "norm1_v", "norm2", "norm2_a", "norm2_v")
        for p in ("weight", "bias")
    ]  # fmt: skip
    assert groups["norms.final"] == [f"{n}.{p}" for n in ("norm_a", "norm_v", "norm") for p in ("weight", "bias")]
    assert groups["norms.head"] == ["mlp_head.0.weight", "mlp_head.0.bias"]
    assert groups["fusion_qkv"] == ["blocks_u.0.attn.qkv.weight", "blocks_u.0.attn.qkv.bias"]
    assert groups["head"] == ["mlp_head.0.weight", "mlp_head.0.bias", "mlp_head.1.weight", "mlp_head.1.bias"]
    assert groups["embed"] == names[:8]
    # the top-level groups partition the parameters
    parts = groups["embed"] + groups["blocks_a"] + groups["blocks_v"] + groups["blocks_u"] + groups["norms.final"]
    assert sorted(parts + groups["head"]) == sorted(names)

    selected = model.select_parameters("norms.blocks_a.1", "norms", "fusion_qkv", "norms.blocks_a.0")
    selected_names = [name for name, _ in selected]
    assert selected_names == [n for n in names if n in set(groups["norms"]) | set(groups["fusion_qkv"])]
    params = dict(model.named_parameters())
    assert all(p is params[n] for n, p in selected)
    with pytest.raises(ValueError, match="known groups.*norms.final"):
        model.select_parameters("norms", "layernorms")


def test_base_param_groups_and_counts(base_model: CAVMAEFT) -> None:
    groups = base_model.param_groups()
    assert len(base_model.state_dict()) == 478
    assert sum(p.numel() for p in base_model.parameters()) == 164_540_210
    assert len(groups["norms"]) == 284
    assert sum(base_model.get_parameter(n).numel() for n in groups["norms"]) == 218_112
    assert [len(groups[f"norms.blocks_{s}.{i}"]) for s in "av" for i in range(11)] == [12] * 22
    assert len(groups["norms.blocks_u.0"]) == 12 and "blocks_a.11" not in groups
    assert sum(base_model.get_parameter(n).numel() for n in groups["fusion_qkv"]) == 1_771_776
    sar = [f"norms.blocks_{s}.{i}" for s in "av" for i in range(9)]  # SAR/DeYO selection (methods.md 0.4)
    assert len(base_model.select_parameters(*sar)) == 216
