"""Checkpoints: the released layout (strict, clear errors), READ/BriMPR extras, our safetensors + JSON pair."""

from __future__ import annotations

import collections
import json
import logging

import pytest
import torch
from avtta.models import (
    CAVMAEFT,
    checkpoint_filter_fn,
    create_model,
    load_checkpoint,
    read_checkpoint_config,
    save_checkpoint,
)

NORMS = ("norm1", "norm1_a", "norm1_v", "norm2", "norm2_a", "norm2_v")


def released_layout(dim: int = 768, classes: int = 50, depth: int = 11, na: int = 512, nv: int = 196) -> dict:
    """Key -> shape of a released checkpoint, written from the spec's table (model-cav-mae.md section 7)."""
    layout = {"modality_a": (1, 1, dim), "modality_v": (1, 1, dim), "pos_embed_a": (1, na, dim),
              "pos_embed_v": (1, nv, dim), "patch_embed_a.proj.weight": (dim, 1, 16, 16),
              "patch_embed_a.proj.bias": (dim,), "patch_embed_v.proj.weight": (dim, 3, 16, 16),
              "patch_embed_v.proj.bias": (dim,)}  # fmt: skip
    blocks = [f"blocks_a.{i}" for i in range(depth)] + [f"blocks_v.{i}" for i in range(depth)] + ["blocks_u.0"]
    for block in blocks:
        for norm in NORMS:
            layout |= {f"{block}.{norm}.weight": (dim,), f"{block}.{norm}.bias": (dim,)}
        layout |= {f"{block}.attn.qkv.weight": (3 * dim, dim), f"{block}.attn.qkv.bias": (3 * dim,),
                   f"{block}.attn.proj.weight": (dim, dim), f"{block}.attn.proj.bias": (dim,),
                   f"{block}.mlp.fc1.weight": (4 * dim, dim), f"{block}.mlp.fc1.bias": (4 * dim,),
                   f"{block}.mlp.fc2.weight": (dim, 4 * dim), f"{block}.mlp.fc2.bias": (dim,)}  # fmt: skip
    for norm in ("norm_a", "norm_v", "norm", "mlp_head.0"):
        layout |= {f"{norm}.weight": (dim,), f"{norm}.bias": (dim,)}
    return layout | {"mlp_head.1.weight": (classes, dim), "mlp_head.1.bias": (classes,)}


def random_released(layout: dict, seed: int = 0) -> collections.OrderedDict:
    gen = torch.Generator().manual_seed(seed)
    return collections.OrderedDict((f"module.{k}", torch.rand(shape, generator=gen)) for k, shape in layout.items())


def small_released(model: CAVMAEFT) -> collections.OrderedDict:
    layout = released_layout(model.embed_dim, model.num_classes, model.depth, model.num_audio_patches,
                             model.num_video_patches)  # fmt: skip
    return random_released(layout)


def test_released_layout_loads_into_base(base_model: CAVMAEFT) -> None:
    layout = released_layout()
    assert len(layout) == 478
    assert sum(torch.Size(s).numel() for s in layout.values()) == 164_540_210
    state = random_released(layout)
    base_model.load_state_dict(checkpoint_filter_fn(state, base_model), strict=True)
    for key in ("module.pos_embed_a", "module.blocks_u.0.attn.qkv.weight", "module.mlp_head.1.bias"):
        assert torch.equal(base_model.state_dict()[key.removeprefix("module.")], state[key])
    nine = released_layout(classes=309)
    assert sum(torch.Size(s).numel() for s in nine.values()) == 164_739_381


def test_filter_errors_name_the_key() -> None:
    model = create_model("cav_mae_ft_test")
    good = small_released(model)
    model.load_state_dict(checkpoint_filter_fn(good, model), strict=True)

    bad = collections.OrderedDict(good)
    bad["module.blocks_v.1.mlp.fc1.weight"] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match=r"my.pth .*wrong shapes: blocks_v\.1\.mlp\.fc1\.weight \(3, 3\)"):
        checkpoint_filter_fn(bad, model, source="my.pth")
    bad = collections.OrderedDict(good)
    del bad["module.norm_v.bias"]
    bad["module.blocks_u.0.attn.gate.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"unknown keys: blocks_u\.0\.attn\.gate\.weight; missing keys: norm_v\.bias"):
        checkpoint_filter_fn(bad, model)
    with pytest.raises(TypeError, match="'module.norm.weight' is a str"):
        checkpoint_filter_fn({**good, "module.norm.weight": "x"}, model)
    # a head for another class count is a wrong shape
    with pytest.raises(ValueError, match=r"mlp_head\.1\.weight \(50, 16\) \(model expects \(9, 16\)\)"):
        checkpoint_filter_fn(good, create_model("cav_mae_ft_test", num_classes=9))


def test_read_brimpr_qkv_copies_are_dropped(caplog: pytest.LogCaptureFixture) -> None:
    model = create_model("cav_mae_ft_test")
    state = small_released(model)
    qkv_w, qkv_b = state["module.blocks_u.0.attn.qkv.weight"], state["module.blocks_u.0.attn.qkv.bias"]
    d = model.embed_dim
    for index, part in enumerate("qkv"):  # views of qkv's rows, as after READ/BriMPR's first fused forward
        state[f"module.blocks_u.0.attn.{part}.weight"] = qkv_w[index * d : (index + 1) * d]
        state[f"module.blocks_u.0.attn.{part}.bias"] = qkv_b[index * d : (index + 1) * d]
    with caplog.at_level(logging.WARNING, logger="avtta.models.checkpoint"):
        filtered = checkpoint_filter_fn(state, model)
    assert not caplog.records and len(filtered) == len(model.state_dict())
    state["module.blocks_u.0.attn.k.weight"] = torch.zeros(d, d)  # never-used random copy: qkv wins, with a warning
    with caplog.at_level(logging.WARNING, logger="avtta.models.checkpoint"):
        filtered = checkpoint_filter_fn(state, model)
    assert "blocks_u.0.attn.k.weight differs" in caplog.text
    assert torch.equal(filtered["blocks_u.0.attn.qkv.weight"], qkv_w)


def test_released_pth_file(tmp_path) -> None:
    source = create_model("cav_mae_ft_test", num_classes=9)
    state = small_released(source)
    torch.save(state, tmp_path / "released.pth")
    model = create_model("cav_mae_ft_test", checkpoint=tmp_path / "released.pth")
    assert model.num_classes == 9  # inferred from mlp_head.1.weight
    assert torch.equal(model.blocks_a[1].mlp.fc2.weight, state["module.blocks_a.1.mlp.fc2.weight"])
    with pytest.raises(ValueError, match="wrong shapes"):
        create_model("cav_mae_ft_test", checkpoint=tmp_path / "released.pth", num_classes=4)


class NotATensor:
    pass


def test_loading_never_unpickles_objects(tmp_path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"module.norm.weight": NotATensor()}, path)
    with pytest.raises(ValueError, match="evil.pth: not a readable tensor state dict"):
        create_model("cav_mae_ft_test", checkpoint=path)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        create_model("cav_mae_ft_test", checkpoint=tmp_path / "missing.pth")
    (tmp_path / "weights.npz").write_bytes(b"")
    with pytest.raises(ValueError, match="unknown checkpoint type"):
        create_model("cav_mae_ft_test", checkpoint=tmp_path / "weights.npz")


def test_own_checkpoint_round_trip(tmp_path) -> None:
    model = create_model("cav_mae_ft_test", num_classes=5, depth=3, init_seed=4).eval()
    path = save_checkpoint(model, tmp_path / "run" / "model.safetensors")
    assert path.is_file() and not list(tmp_path.glob("run/*.tmp"))
    config = json.loads((tmp_path / "run" / "model.json").read_text())
    assert config["model"] == "cav_mae_ft_test" and config["arch"]["depth"] == 3 and config["arch"]["num_classes"] == 5

    for where in (path, tmp_path / "run"):  # the file, or the directory holding model.safetensors
        loaded = create_model("cav_mae_ft_test", checkpoint=where).eval()
        assert loaded.depth == 3 and loaded.num_classes == 5
        audio, video = torch.randn(2, 32, 128), torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(loaded(audio, video), model(audio, video), rtol=0, atol=0)

    with pytest.raises(ValueError, match=r"depth=2 \(checkpoint: 3\)"):
        create_model("cav_mae_ft_test", checkpoint=path, depth=2)
    with pytest.raises(ValueError, match="holds a 'cav_mae_ft_test' model, not 'cav_mae_ft_tiny'"):
        create_model("cav_mae_ft_tiny", checkpoint=path)
    # the config travels inside the safetensors header too
    (tmp_path / "run" / "model.json").unlink()
    assert read_checkpoint_config(path)["arch"] == config["arch"]
    # strict: loading into a different architecture names the problem
    with pytest.raises(ValueError, match="missing keys: blocks_a.3"):
        load_checkpoint(create_model("cav_mae_ft_test", num_classes=5, depth=4), path)
    with pytest.raises(ValueError, match="must end in .safetensors"):
        save_checkpoint(model, tmp_path / "model.pt")
