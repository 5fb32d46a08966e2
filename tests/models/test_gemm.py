"""The oneDNN linear of the transformer blocks (models/gemm.py) against ``nn.Linear``: values, gradients, fallbacks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from avtta.models import cpu_gemm, create_model, get_cpu_gemm, set_cpu_gemm
from avtta.models.gemm import Linear, onednn_available

pytestmark = pytest.mark.skipif(not onednn_available(), reason="this PyTorch build has no oneDNN linear primitive")

# Both back-ends sum the K products of a dot product in fp32, in different blocked orders: each rounds to about
# sqrt(K) * 2^-24 of the scale (K = 48 here -> ~4e-7); 1e-5 of the largest value leaves a 25x margin on AVX-512 and
# AVX2 alike and still fails for any real difference (a wrong transpose or a missing term is O(1)).
RTOL = 1e-5


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _run(layer: Linear, x: torch.Tensor, backend: str) -> tuple[torch.Tensor, ...]:
    x = x.detach().requires_grad_(True)
    layer.zero_grad(set_to_none=True)
    with cpu_gemm(backend):
        y = layer(x)
        # mean over tokens: its gradient reaches the layer with stride 0 (the backward must make it contiguous)
        (y.tanh().mean(dim=1) * torch.arange(y.shape[-1])).sum().backward()
    return y.detach(), x.grad, layer.weight.grad, layer.bias.grad


def test_values_and_gradients_match_nn_linear() -> None:
    gen = torch.Generator().manual_seed(0)
    layer = Linear(48, 80)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(80, 48, generator=gen) / 7)
        layer.bias.copy_(torch.randn(80, generator=gen))
    x = torch.randn(5, 3, 48, generator=gen).transpose(0, 1)  # non-contiguous input [3, 5, 48]
    ours = _run(layer, x, "onednn")
    plain = _run(layer, x, "aten")
    for name, a, b in zip(("output", "input grad", "weight grad", "bias grad"), ours, plain, strict=True):
        assert a.shape == b.shape, name
        assert _rel(a, b) < RTOL, name
    with cpu_gemm("onednn"):
        y = layer(x.detach().requires_grad_(True))
    assert type(y.grad_fn).__name__ == "_OneDNNLinearBackward"  # the oneDNN path really ran


def test_frozen_weight_keeps_no_input_and_inference_paths() -> None:
    layer = Linear(16, 24).requires_grad_(False)
    x = torch.randn(2, 7, 16, requires_grad=True)
    with cpu_gemm("onednn"):
        y = layer(x)
        y.sum().backward()
        assert layer.weight.grad is None and x.grad is not None
        with torch.no_grad():
            assert layer(x).grad_fn is None
        assert layer(torch.zeros(0, 16)).shape == (0, 24)  # an empty batch


def test_falls_back_outside_fp32_cpu() -> None:
    layer = Linear(16, 24).double()
    x = torch.randn(3, 16, dtype=torch.float64)
    with cpu_gemm("onednn"):
        assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))  # float64: nn.Linear's own path
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = Linear(16, 24)(torch.randn(3, 16))
        assert out.dtype == torch.bfloat16  # autocast decides the dtype, as for nn.Linear


def test_model_same_names_same_logits_reproducible() -> None:
    model = create_model("cav_mae_ft_test", num_classes=5, init_seed=0)
    keys = list(model.state_dict())
    assert "blocks_a.0.attn.qkv.weight" in keys and "blocks_u.0.mlp.fc2.bias" in keys
    assert isinstance(model.blocks_v[1].mlp.fc1, Linear)
    gen = torch.Generator().manual_seed(1)
    audio, video = torch.randn(3, 32, 128, generator=gen), torch.randn(3, 3, 32, 32, generator=gen)
    with torch.no_grad():
        with cpu_gemm("onednn"):
            first, second = model(audio, video), model(audio, video)
        with cpu_gemm("aten"):
            plain = model(audio, video)
    assert torch.equal(first, second)  # byte-identical run to run
    assert _rel(first, plain) < RTOL


def test_backend_switch_validates() -> None:
    before = get_cpu_gemm()
    with pytest.raises(ValueError, match="backend must be one of"):
        set_cpu_gemm("mkl")
    with cpu_gemm("aten"):
        assert get_cpu_gemm() == "aten"
    assert get_cpu_gemm() == before
