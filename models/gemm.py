"""The transformer blocks' linear layers with their fp32 CPU products computed by oneDNN.

On a CPU, ``nn.Linear`` computes its fp32 products with the BLAS PyTorch was built with (MKL in the x86 wheels).
MKL chooses its kernels by CPU vendor: on AMD processors it runs its AVX2 code even where the CPU has AVX-512
(measured on a 2-vCPU AMD EPYC guest, one thread: 25-34 GFLOP/s for the blocks' shapes, against 60-75 with oneDNN,
which picks its kernels by the instruction sets present; benchmarks/README.md, "Adaptation steps"). PyTorch routes
fp32 ``addmm`` to oneDNN only on AArch64, so :class:`Linear` calls oneDNN's linear primitive
(``torch.ops.mkldnn._linear_pointwise``, the op PyTorch's own compiler emits for CPU linears) for the forward and
for both products of the backward. The weights stay ordinary dense parameters (state dicts, optimisers, copies and
CUDA are untouched); anything other than fp32 on a CPU outside autocast takes ``nn.Linear``'s path.

The two back-ends round differently (their sums are blocked differently): about 1e-6 of the output's scale at width
768, the size of the AVX-512 / AVX2 differences the golden tolerances (1e-4) already cover. For fixed shapes and
thread count oneDNN's results are reproducible run to run.

:func:`set_cpu_gemm` picks the back-end for the whole process (``"onednn"``, the default where available, or
``"aten"``, plain ``nn.Linear``); :func:`cpu_gemm` is the context-manager form the benchmarks use to time both.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["BACKENDS", "Linear", "cpu_gemm", "get_cpu_gemm", "onednn_available", "set_cpu_gemm", "to_gemm_linear"]

BACKENDS = ("onednn", "aten")


def onednn_available() -> bool:
    """Whether this PyTorch build has oneDNN and its dense-tensor linear primitive."""
    return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_linear_pointwise")


_STATE = {"backend": "onednn" if onednn_available() else "aten"}


def set_cpu_gemm(backend: str) -> None:
    """Use ``backend`` (``"onednn"`` or ``"aten"``) for the fp32 CPU products of every :class:`Linear`."""
    if backend not in BACKENDS:
        raise ValueError(f"set_cpu_gemm: backend must be one of {BACKENDS}, got {backend!r} (models/gemm.py)")
    if backend == "onednn" and not onednn_available():
        raise ValueError("set_cpu_gemm: this PyTorch build has no oneDNN linear primitive; use 'aten' (models/gemm.py)")
    _STATE["backend"] = backend


def get_cpu_gemm() -> str:
    """The back-end in use (``"onednn"`` or ``"aten"``)."""
    return _STATE["backend"]


@contextlib.contextmanager
def cpu_gemm(backend: str) -> Iterator[None]:
    """:func:`set_cpu_gemm` for the ``with`` block, restored afterwards."""
    previous = get_cpu_gemm()
    set_cpu_gemm(backend)
    try:
        yield
    finally:
        _STATE["backend"] = previous


def _onednn(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``x @ weight.T + bias`` by oneDNN (``weight`` ``[N, K]``, any strides)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class _OneDNNLinear(torch.autograd.Function):
    """``F.linear`` with oneDNN products: ``dx = dy W`` and ``dW = dy^T x``; ``x`` is kept only if ``W`` trains."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:  # noqa: ANN001
        ctx.save_for_backward(x if weight.requires_grad else None, weight)
        ctx.has_bias = bias is not None
        return _onednn(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:  # noqa: ANN001
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()  # e.g. the stride-0 gradient of a mean
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _onednn(grad, weight.t(), None)
        rows = grad.reshape(-1, grad.shape[-1])
        if ctx.needs_input_grad[1]:
            grad_w = _onednn(rows.t(), x.reshape(-1, x.shape[-1]).t(), None)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = rows.sum(dim=0)
        return grad_x, grad_w, grad_b


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, names and initialisation) whose fp32 CPU products go through oneDNN."""

    def forward(self, x: Tensor) -> Tensor:
        weight, bias = self.weight, self.bias
        if (
            _STATE["backend"] != "onednn"
            or x.device.type != "cpu"
            or x.dtype != torch.float32
            or weight.dtype != torch.float32
            or torch.is_autocast_enabled("cpu")
        ):
            return F.linear(x, weight, bias)
        if torch.is_grad_enabled() and (
            x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
        ):
            return _OneDNNLinear.apply(x, weight, bias)
        return _onednn(x, weight, bias)


def to_gemm_linear(linear: nn.Linear) -> Linear:
    """A :class:`Linear` of ``linear``'s shape, device and dtype sharing nothing with it (weights uninitialised)."""
    return Linear(
        linear.in_features, linear.out_features, bias=linear.bias is not None, device=linear.weight.device,
        dtype=linear.weight.dtype,
    )  # fmt: skip
