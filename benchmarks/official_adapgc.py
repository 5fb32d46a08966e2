"""Time AdaPGC per online step, ours (``avtta.adapt.methods.adapgc``) against the official code, with their agreement.

Official side: a checkout of XuJinglinn/AdaPGC outside this repository (e.g. ``git --git-dir=/work/.mirror/
XuJinglinn+AdaPGC/repo archive HEAD TTA models utilities | tar -x -C /tmp/official/AdaPGC``) and ``torch_ema`` 0.3
installed (the library it imports; not an avtta dependency). Run-time adjustments, as the golden harness
(golden/more/adapgc.md), none of them editing the checkout: (P1) the Gaussians, hard-coded on ``cuda:1``, are built on
the CPU; (P2) the model's fp16 logits buffer is cast to the values' dtype when written (fp32 here); (P3) the fusion
q/k/v Linears multiply by a copy of their weights, so the LayerNorm backward after the q/k/v step sees the pre-step
weights as under CUDA autocast; (P4) a stub for the unused ``sklearn`` import. With ``ema_init="loaded"`` (default,
our default) a no-grad forward links q/k/v to ``qkv`` before the EMA is created (the golden's ``adapgc_emafix``).

Example::

    .venv/bin/python benchmarks/official_adapgc.py --official /tmp/official/AdaPGC                   # width 32
    .venv/bin/python benchmarks/official_adapgc.py --official /tmp/official/AdaPGC --width 768 --heads 12 --batch 4 \
        --steps 2
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import json
import os
import statistics
import sys
import time
import types
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from avtta.adapt.methods.adapgc import AdaPGC, AdaPGCConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_methods import make_inputs, make_model  # noqa: E402
from official_pta import _official_path, golden_batches, spread_head  # noqa: E402

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
    with _official_path(official):
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
    heads: int = 2,
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
    with contextlib.redirect_stdout(open(os.devnull, "w")):
        ref = official_cls(label_dim=model.num_classes, embed_dim=model.embed_dim, num_heads=heads)
    missing, unexpected = ref.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and all(".attn.q." in k or ".attn.k." in k or ".attn.v." in k for k in missing), missing
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
        times, logits = [], []
        for step, (audio, video) in enumerate(batches):
            torch.manual_seed(100 + step)
            t0 = time.perf_counter()
            with torch.no_grad():
                outputs, _ = method((audio, video), adapt_flag=True)
            times.append(time.perf_counter() - t0)
            logits.append(outputs[1].detach().float())
    trained = {
        QKV_NAMES[0]: torch.cat([attn.q.weight, attn.k.weight, attn.v.weight]).detach().clone(),
        QKV_NAMES[1]: torch.cat([attn.q.bias, attn.k.bias, attn.v.bias]).detach().clone(),
    }
    for name, module in ref.named_modules():
        if isinstance(module, torch.nn.LayerNorm):
            trained[f"{name}.weight"] = module.weight.detach().clone()
            trained[f"{name}.bias"] = module.bias.detach().clone()
    return {"times": times, "logits": logits, "params": trained}


def run_ours(model: torch.nn.Module, batches: list, **config) -> dict:
    method = AdaPGC(model, AdaPGCConfig(**config))
    times, logits = [], []
    for step, (audio, video) in enumerate(batches):
        method.reseed(100 + step)
        t0 = time.perf_counter()
        logits.append(method.step(audio, video))
        times.append(time.perf_counter() - t0)
    return {"times": times, "logits": logits, "params": method.trainable_state()}


def compare(ours: dict, ref: dict, initial: dict) -> dict:
    """Scored logits (max rel over all steps); trained tensors after the last step (max abs, and how far they moved).

    The key bias (rows D..2D-1 of the fused bias) has a mathematically zero gradient and is left out.
    """
    scale = max(float(r.abs().max()) for r in ref["logits"])
    logits = max(float((o - r).abs().max()) for o, r in zip(ours["logits"], ref["logits"], strict=True)) / scale
    err, moved, off, total = 0.0, 0.0, 0, 0
    for name, r in ref["params"].items():
        o, start = ours["params"][name], initial[name]
        if name == QKV_NAMES[1]:
            dim = r.shape[0] // 3
            keep = torch.cat([torch.arange(dim), torch.arange(2 * dim, 3 * dim)])
            o, r, start = o[keep], r[keep], start[keep]
        diff = (o - r).abs()
        err = max(err, float(diff.max()))
        moved = max(moved, float((r - start).abs().max()))
        # Adam's first steps are sign-like (+-lr): a value whose gradient is ~0 can step the other way in either
        # implementation (2 lr = 2e-4 apart), so count the values off by more than 1e-6
        off += int((diff > 1e-6).sum())
        total += diff.numel()
    return {"logits_rel": logits, "params_abs": err, "params_moved": moved, "params_off": off, "params_total": total}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official", type=Path, required=True, help="checkout of XuJinglinn/AdaPGC")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=6)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ema-init", choices=("loaded", "released"), default="loaded")
    parser.add_argument(
        "--spread", type=float, default=-1.0, help="logit std after spread_head (default negative: the x5 head as is)"
    )
    parser.add_argument("--inputs", type=Path, help="../shared/golden/inputs.npz: its 3 batches instead of random ones")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.inputs:
        batches = golden_batches(args.inputs, args.batch)[: args.steps]
    else:
        batches = [make_inputs(args.batch, seed) for seed in range(1, args.steps + 1)]
    # x5 head as the golden (x30 overflows the official mixture weights, spec bug 4). AdaPGC needs no diverse
    # predictions (PTA does), and a spread head's large rows overflow them too.
    base = make_model(args.width, args.heads, 5.0)
    if args.spread >= 0:
        spread_head(base, batches, args.spread)
    initial = {n: p.detach().clone() for n, p in base.named_parameters()}
    ref = run_official(args.official, base, batches, heads=args.heads, ema_init=args.ema_init)
    ours = run_ours(copy.deepcopy(base), batches, ema_init=args.ema_init)
    if args.ema_init == "released":
        print("released EMA init: the two sides draw different random q/k/v shadows, so the scored logits differ")
    row = {"ours_s": ours["times"], "official_s": ref["times"], **compare(ours, ref, initial)}
    speed = statistics.median(ref["times"]) / statistics.median(ours["times"])
    print(
        f"adapgc width {args.width} batch {args.batch}: ours {statistics.median(ours['times']):.3f} s/step, official "
        f"{statistics.median(ref['times']):.3f} s/step, speed-up {speed:.2f}, logits rel {row['logits_rel']:.2e}, "
        f"params max abs {row['params_abs']:.2e} (moved up to {row['params_moved']:.2e}; {row['params_off']}/"
        f"{row['params_total']} values off by > 1e-6)"
    )
    if args.json:
        config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        args.json.write_text(json.dumps({"config": config, "adapgc": row}, indent=2))


if __name__ == "__main__":
    main()
