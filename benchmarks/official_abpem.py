"""Seconds per online step of ABPEM (``avtta.adapt.methods.abpem``) against the official code, with their agreement.

Official side (``--official DIR``: a checkout of YushengZhao/ABPEM outside this repository, e.g.
``git --git-dir=/work/.mirror/YushengZhao+ABPEM/repo archive HEAD TTA models | tar -x -C /tmp/official/ABPEM``): its
``CAVMAEFT`` with the same weights (``strict=False``: the q/k/v aliases become views of ``qkv`` on the first
forward), wrapped in ``nn.DataParallel`` (a plain call on a CPU-only machine), ``configure_model``,
``collect_params``, Adam, the method object and a fresh ``Cache(cache_size // batch)``, as ``run_read.py`` sets
them up; the scored logits are ``outputs[1]``. Inputs and model as ``bench_methods.py`` (the classifier x5 by
default: with x30 the official balance loss is NaN, spec method-abpem.md item 3).

Example::

    .venv/bin/python benchmarks/official_abpem.py --official /tmp/official/ABPEM --width 768 --heads 12 --batch 4
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import sys
import time
import types
from pathlib import Path

import torch
from avtta.adapt.methods.abpem import ABPEM, ABPEMConfig
from bench_methods import make_inputs, make_model

_OFFICIAL_PACKAGES = ("models", "TTA")


def _import_official(official_dir: Path) -> types.SimpleNamespace:
    """Import the checkout's ``models`` and ``TTA`` packages (dropping any other checkout's from ``sys.modules``)."""
    for name in list(sys.modules):
        if name.split(".")[0] in _OFFICIAL_PACKAGES:
            del sys.modules[name]
    sys.path.insert(0, str(official_dir))
    try:
        from TTA import ABPEM as official  # type: ignore[import-not-found]

        from models.cav_mae import CAVMAEFT  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(official_dir))
    return types.SimpleNamespace(method=official, model_class=CAVMAEFT)


def run_official(
    official_dir: Path,
    model: torch.nn.Module,
    batches: list,
    *,
    heads: int,
    cache_size: int = 32,
    prime_ent_k: int = 8,
    ent_weight: float = 1.0,
    bal_weight: float = 1.0,
    attn_weight: float = 1.0,
    fix_loss_bal: bool = True,
    lr: float = 1e-4,
) -> dict:
    """Run the official ABPEM on ``batches`` from ``model``'s weights; returns times, logits and the trained qkv."""
    code = _import_official(Path(official_dir).resolve())
    with contextlib.redirect_stdout(open(os.devnull, "w")):
        net = code.model_class(label_dim=model.num_classes, embed_dim=model.embed_dim, num_heads=heads)
    missing, unexpected = net.load_state_dict(model.state_dict(), strict=False)
    aliases = tuple(f".attn.{w}." for w in ("qa", "ka", "va", "qv", "kv", "vv"))
    assert not unexpected and all(any(a in k for a in aliases) for k in missing), missing
    net = torch.nn.DataParallel(net)
    net = code.method.configure_model(net)
    params, _ = code.method.collect_params(net)
    optimizer = torch.optim.Adam([{"params": params, "lr": lr}], weight_decay=0.0, betas=(0.9, 0.999))
    args = types.SimpleNamespace(
        testmode="multimodal", use_cache=True, counter=0, fix_loss_bal=fix_loss_bal, prime_ent_k=prime_ent_k,
        ent_weight=ent_weight, bal_weight=bal_weight, attn_weight=attn_weight,
    )  # fmt: skip
    method = code.method.READ(net, optimizer, torch.device("cpu"), args)
    args.cache = code.method.Cache(cache_size // batches[0][0].shape[0])
    times, logits = [], []
    for step, (audio, video) in enumerate(batches):
        torch.manual_seed(100 + step)
        start = time.perf_counter()
        with torch.no_grad():
            outputs, _ = method((audio, video), True)
        times.append(time.perf_counter() - start)
        logits.append(outputs[1].detach().float())
    attn = net.module.blocks_u[0].attn
    trained = {"weight": attn.qkv.weight.detach().clone(), "bias": attn.qkv.bias.detach().clone()}
    return {"times": times, "logits": logits, "params": {f"blocks_u.0.attn.qkv.{k}": v for k, v in trained.items()}}


def run_ours(model: torch.nn.Module, batches: list, **config) -> dict:
    method = ABPEM(model, ABPEMConfig(**config))
    times, logits = [], []
    for step, (audio, video) in enumerate(batches):
        method.reseed(100 + step)
        start = time.perf_counter()
        logits.append(method.step(audio, video))
        times.append(time.perf_counter() - start)
    return {"times": times, "logits": logits, "params": method.trainable_state()}


def agreement(ours: dict, ref: dict) -> tuple[float, float]:
    """(logits, parameters): max |ours - official| relative to max |official|, over all steps / tensors."""
    logit_scale = max(float(r.abs().max()) for r in ref["logits"])
    logit_err = max(float((o - r).abs().max()) for o, r in zip(ours["logits"], ref["logits"], strict=True))
    scale = max(float(r.abs().max()) for r in ref["params"].values())
    err = max(float((ours["params"][k] - r).abs().max()) for k, r in ref["params"].items())
    return logit_err / logit_scale, err / scale


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official", type=Path, required=True, help="checkout of YushengZhao/ABPEM")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--head-scale", type=float, default=5.0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    batches = [make_inputs(args.batch, seed) for seed in range(1, args.steps + 1)]
    base = make_model(args.width, args.heads, args.head_scale)
    ref = run_official(args.official, copy.deepcopy(base), batches, heads=args.heads)
    ours = run_ours(copy.deepcopy(base), batches)
    logits_rel, params_rel = agreement(ours, ref)
    official_s, ours_s = statistics.median(ref["times"]), statistics.median(ours["times"])
    print(f"abpem width {args.width} batch {args.batch}: official {official_s:.3f} s/step, ours {ours_s:.3f} s/step "
          f"({official_s / ours_s:.2f}x); logits rel {logits_rel:.2e}, params rel {params_rel:.2e}")  # fmt: skip
    # where the parameter differences sit: rows q, k, v of the fused weight and bias (the key bias has no gradient
    # through the softmax, only through L_att's block statistics, so float noise weighs more there)
    for name, ref_t in ref["params"].items():
        dim = ref_t.shape[0] // 3
        errs = [float((ours["params"][name] - ref_t)[i * dim : (i + 1) * dim].abs().max()) for i in range(3)]
        print(f"  {name}: max |diff| q {errs[0]:.2e}, k {errs[1]:.2e}, v {errs[2]:.2e}")
    print(f"  per step official {[round(t, 3) for t in ref['times']]}, ours {[round(t, 3) for t in ours['times']]}")


if __name__ == "__main__":
    main()
