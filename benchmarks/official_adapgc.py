"""The official side of the AdaPGC benchmark (``avtta.adapt.methods.adapgc`` against XuJinglinn/AdaPGC).

Official side: a checkout of XuJinglinn/AdaPGC outside this repository (e.g. ``git --git-dir=/work/.mirror/
XuJinglinn+AdaPGC/repo archive HEAD TTA models utilities | tar -x -C /tmp/official/AdaPGC``) and ``torch_ema`` 0.3
installed (the library it imports; not an avtta dependency). Run-time adjustments, as the golden harness
(golden/more/adapgc.md), none of them editing the checkout: (P1) the Gaussians, hard-coded on ``cuda:1``, are built on
the CPU; (P2) the model's fp16 logits buffer is cast to the values' dtype when written (fp32 here); (P3) the fusion
q/k/v Linears multiply by a copy of their weights, so the LayerNorm backward after the q/k/v step sees the pre-step
weights as under CUDA autocast; (P4) a stub for the unused ``sklearn`` import. With ``ema_init="loaded"`` (default,
our default) a no-grad forward links q/k/v to ``qkv`` before the EMA is created (the golden's ``adapgc_emafix``).

Driven by ``bench_methods.py --official adapgc=DIR``, or ``official_adapgc.py DIR [bench_methods.py's options]`` for
AdaPGC alone. Earlier measurements: docs/faithfulness-adapgc.md, "Speed".
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import types
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from official_common import load_weights, official_imports, timed_steps  # noqa: E402

__all__ = ["load_official", "run_official"]

QKV_NAMES = ("blocks_u.0.attn.qkv.weight", "blocks_u.0.attn.qkv.bias")


class _TorchForModel(types.ModuleType):
    """``torch`` as the official model module sees it: ``index_put`` casts the buffer to the values' dtype (P2)."""

    def __init__(self) -> None:
        super().__init__("torch")

    def __getattr__(self, name: str):
        return getattr(torch, name)

    @staticmethod
    def index_put(buffer, indices, values, accumulate=False):
        return torch.index_put(buffer.to(values.dtype), indices, values, accumulate)


def _linear_on_weight_copy(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, self.weight.clone(), None if self.bias is None else self.bias.clone())


def load_official(official: Path) -> tuple[types.ModuleType, type]:
    """The official ADAPGC module (P1, P4 applied) and its CAVMAEFT class (P2 applied)."""
    if "sklearn.decomposition" not in sys.modules:
        try:
            import sklearn.decomposition  # noqa: F401
        except ImportError:  # P4: only ``PCA`` is imported, and never used
            sys.modules["sklearn"] = types.ModuleType("sklearn")
            sys.modules["sklearn.decomposition"] = types.SimpleNamespace(PCA=None)
    with official_imports(official, ("models", "TTA")):
        cav_mae = importlib.import_module("models.cav_mae")
        method = importlib.import_module("TTA.ADAPGC")
    cav_mae.torch = _TorchForModel()
    base_gmm = method.IncrementalGMM

    class CpuGMM(base_gmm):  # P1
        def __init__(self, *args, device=None, **kwargs) -> None:
            super().__init__(*args, device=torch.device("cpu"), **kwargs)

    method.IncrementalGMM = CpuGMM
    return method, cav_mae.CAVMAEFT


def run_official(
    official_dir: Path,
    model: torch.nn.Module,
    batches: list,
    *,
    w_c: float = 0.01,
    w_g: float = 1.0,
    gamma: float = 1.0,
    ema_init: str = "loaded",
) -> dict:
    """Run the official AdaPGC for ``len(batches)`` online steps from ``model``'s weights.

    Returns ``{"times", "logits", "params"}``: seconds per step, the scored logits (``outputs[1]``), and the trained
    tensors under our names (the q/k/v rows as the fused ``qkv``; every LayerNorm).
    """
    adapgc, official_cls = load_official(Path(official_dir).resolve())
    ref = load_weights(official_cls, model, (".attn.q.", ".attn.k.", ".attn.v."))
    attn = ref.blocks_u[0].attn
    for linear in (attn.q, attn.k, attn.v):
        linear.forward = types.MethodType(_linear_on_weight_copy, linear)  # P3
    wrapped = torch.nn.DataParallel(ref)
    args = types.SimpleNamespace(testmode="multimodal", w_c=w_c, w_g=w_g, gamma=gamma)
    with warnings.catch_warnings(), contextlib.redirect_stdout(open(os.devnull, "w")):
        warnings.simplefilter("ignore")  # CUDA autocast / GradScaler disabled without CUDA
        if ema_init == "loaded":
            with torch.no_grad():  # links q/k/v to qkv before the EMA copies them (spec bug 1 fix)
                ref.forward_eval(a=batches[0][0][:1], v=batches[0][1][:1], mode="multimodal")
        wrapped = adapgc.configure_model(wrapped)
        params, _ = adapgc.collect_params(wrapped)
        optimizer = torch.optim.Adam([{"params": params, "lr": 1e-4}], weight_decay=0.0, betas=(0.9, 0.999))
        method = adapgc.ADAPGC(wrapped, optimizer, torch.device("cpu"), args)
        method.eval()
        times, logits = timed_steps(lambda batch: method(batch, adapt_flag=True)[0][1], batches)
    trained = {
        QKV_NAMES[0]: torch.cat([attn.q.weight, attn.k.weight, attn.v.weight]).detach().clone(),
        QKV_NAMES[1]: torch.cat([attn.q.bias, attn.k.bias, attn.v.bias]).detach().clone(),
    }
    for name, module in ref.named_modules():
        if isinstance(module, torch.nn.LayerNorm):
            trained[f"{name}.weight"] = module.weight.detach().clone()
            trained[f"{name}.bias"] = module.bias.detach().clone()
    return {"times": times, "logits": logits, "params": trained}


if __name__ == "__main__":  # bench_methods.py for this runner's methods (official_common.cli)
    from official_common import cli

    cli("adapgc", ("adapgc",))
