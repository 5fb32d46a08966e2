"""Seconds per online step of SuMi (``avtta.adapt.methods.sumi``) against the official code, with their agreement.

Official side (``--official DIR``: a checkout of zrguo/SuMi outside this repository, e.g.
``git --git-dir=/work/.mirror/zrguo+SuMi/repo archive HEAD src models | tar -x -C /tmp/official/SuMi``): its
``CAVMAEFT`` with the same weights (``strict=False``: the q/k/v copies become views of ``qkv`` on the first
forward), wrapped in ``nn.DataParallel`` (a plain call on a CPU-only machine), ``configure_model``,
``collect_params``, Adam and the ``SuMi`` object as ``train.initiate`` sets them up; step ``t`` of ``iters``, the
scored logits are ``outputs[1]``. Inputs and model as ``bench_methods.py`` (the classifier x5 by default: with x30
the unimodal entropies fall below e/10 and every clip is rejected).

Example::

    .venv/bin/python benchmarks/official_sumi.py --official /tmp/official/SuMi --width 768 --heads 12 --batch 4
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
from avtta.adapt.methods.sumi import SuMi, SuMiConfig
from bench_methods import make_inputs, make_model

_OFFICIAL_PACKAGES = ("models", "src")


def _import_official(official_dir: Path) -> types.SimpleNamespace:
    """Import the checkout's ``models`` and ``src`` packages (dropping any other checkout's from ``sys.modules``)."""
    for name in list(sys.modules):
        if name.split(".")[0] in _OFFICIAL_PACKAGES:
            del sys.modules[name]
    sys.path.insert(0, str(official_dir))
    try:
        from src import sumi as official  # type: ignore[import-not-found]

        from models.cav_mae import CAVMAEFT  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(official_dir))
    return types.SimpleNamespace(method=official, model_class=CAVMAEFT)


def run_official(
    official_dir: Path, model: torch.nn.Module, batches: list, *, heads: int, iters: int = 78, lr: float = 1e-4
) -> dict:
    """Run the official SuMi on ``batches`` (steps ``t = 0, 1, ...`` of ``iters``) from ``model``'s weights.

    Returns the step times, the scored logits, the selected clips per step and all trained LayerNorm parameters.
    """
    code = _import_official(Path(official_dir).resolve())
    with contextlib.redirect_stdout(open(os.devnull, "w")):
        net = code.model_class(label_dim=model.num_classes, embed_dim=model.embed_dim, num_heads=heads)
    missing, unexpected = net.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and all(".attn.q." in k or ".attn.k." in k or ".attn.v." in k for k in missing), missing
    net = torch.nn.DataParallel(net)
    net = code.method.configure_model(net)
    params, names = code.method.collect_params(net)
    optimizer = torch.optim.Adam([{"params": params, "lr": lr}], weight_decay=0.0, betas=(0.9, 0.999))
    method = code.method.SuMi(net, optimizer, torch.device("cpu"), types.SimpleNamespace(testmode="multimodal"))
    method.eval()
    selected: list[list[int]] = []
    intersect = code.method.np.intersect1d

    def spy(*arrays):  # records the selection; changes nothing
        out = intersect(*arrays)
        selected.append([int(i) for i in out])
        return out

    code.method.np = types.SimpleNamespace(**{**vars(code.method.np), "intersect1d": spy})
    times, logits = [], []
    for step, (audio, video) in enumerate(batches):
        torch.manual_seed(100 + step)
        start = time.perf_counter()
        with torch.no_grad():
            outputs = method((audio, video), step, iters)
        times.append(time.perf_counter() - start)
        logits.append(outputs[1].detach().float())
    trained = {n.removeprefix("module."): p.detach().clone() for n, p in zip(names, params, strict=True)}
    return {"times": times, "logits": logits, "params": trained, "selected": selected}


def run_ours(model: torch.nn.Module, batches: list, **config) -> dict:
    method = SuMi(model, SuMiConfig(**config))
    times, logits, selected = [], [], []
    for step, (audio, video) in enumerate(batches):
        method.reseed(100 + step)
        start = time.perf_counter()
        logits.append(method.step(audio, video))
        times.append(time.perf_counter() - start)
        selected.append(method.last_stats["selected"].tolist())
    return {"times": times, "logits": logits, "params": method.trainable_state(), "selected": selected}


def agreement(ours: dict, ref: dict) -> tuple[float, float]:
    """(logits, parameters): max |ours - official| relative to max |official|, over all steps / tensors."""
    logit_scale = max(float(r.abs().max()) for r in ref["logits"])
    logit_err = max(float((o - r).abs().max()) for o, r in zip(ours["logits"], ref["logits"], strict=True))
    scale = max(float(r.abs().max()) for r in ref["params"].values())
    err = max(float((ours["params"][k] - r).abs().max()) for k, r in ref["params"].items())
    return logit_err / logit_scale, err / scale


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official", type=Path, required=True, help="checkout of zrguo/SuMi")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--head-scale", type=float, default=5.0)
    parser.add_argument("--iters", type=int, default=4, help="stream length of the schedule (t = 0, 1, ...)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    batches = [make_inputs(args.batch, seed) for seed in range(1, args.steps + 1)]
    base = make_model(args.width, args.heads, args.head_scale)
    ref = run_official(args.official, copy.deepcopy(base), batches, heads=args.heads, iters=args.iters)
    ours = run_ours(copy.deepcopy(base), batches, iters=args.iters)
    if ours["selected"] != ref["selected"]:
        print(f"selections differ: ours {ours['selected']}, official {ref['selected']}")
    logits_rel, params_rel = agreement(ours, ref)
    official_s, ours_s = statistics.median(ref["times"]), statistics.median(ours["times"])
    print(f"sumi width {args.width} batch {args.batch}: official {official_s:.3f} s/step, ours {ours_s:.3f} s/step "
          f"({official_s / ours_s:.2f}x); logits rel {logits_rel:.2e}, params rel {params_rel:.2e}")  # fmt: skip
    print(f"  selected {ours['selected']}")
    print(f"  per step official {[round(t, 3) for t in ref['times']]}, ours {[round(t, 3) for t in ours['times']]}")


if __name__ == "__main__":
    main()
