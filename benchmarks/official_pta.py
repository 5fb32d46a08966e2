"""Time PTA per online step, ours (``avtta.adapt.methods.pta``) against the official code, with their agreement.

Official side: a checkout of MPI-Lab/PTA outside this repository (e.g. ``git --git-dir=/work/.mirror/MPI-Lab+PTA/repo
archive HEAD TTA models utilities | tar -x -C /tmp/official/PTA``). The release cannot run as uploaded
(spec/method-pta.md section 0), so its ``TTA/pta.py`` is loaded through an AST rewrite that applies the same minimal
fixes as the golden harness, without editing the checkout: (P2) the confidence is the softmax of the logits instead of
the entropies, (P3) statements that assign an expression to itself (the in-place identity writes into the attention)
are dropped, with ``loss="paper"`` (P4) the loss is the paper's, and (P5, spec bug 5 fix, as ours) a batch without a
valid partition returns the pre-update logits instead of raising ``UnboundLocalError``. ``Tensor.cuda`` is a no-op
(CPU only); CUDA autocast / GradScaler disable themselves without CUDA. Its CAVMAEFT gets our weights
(``strict=False``: the fusion q/k/v become views of ``qkv`` on the first forward) inside ``nn.DataParallel`` (the
method calls ``model.module``).

Example::

    .venv/bin/python benchmarks/official_pta.py --official /tmp/official/PTA --inputs ../shared/golden/inputs.npz
    .venv/bin/python benchmarks/official_pta.py --official /tmp/official/PTA --inputs ../shared/golden/inputs.npz \
        --width 768 --heads 12 --batch 4 --steps 2
"""

from __future__ import annotations

import argparse
import ast
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
from avtta.adapt.methods.pta import PTA, PTAConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_methods import make_inputs, make_model  # noqa: E402

_PAPER_LOSS = "loss_ent - 0.5 * entropys[negative_indices].mean(0) + 1.0 * loss_attn"  # spec 3.9, paper form


class _Fixes(ast.NodeTransformer):
    """The golden harness's patches P2-P4 as a syntax-tree rewrite of ``TTA/pta.py``."""

    def __init__(self, paper: bool) -> None:
        self.paper = paper
        self.applied: set[str] = set()

    def visit_If(self, node: ast.If) -> ast.AST:
        self.generic_visit(node)
        assigns = [n for n in ast.walk(node) if isinstance(n, ast.Assign)]
        if not node.orelse and any(ast.unparse(a.targets[0]) == "loss_total" for a in assigns):
            # P5 (spec bug 5 fix): no valid partition -> no update, the pre-update logits are returned
            node.orelse = ast.parse("return outputs, fea").body
            self.applied.add("P5")
        return node

    def visit_Assign(self, node: ast.Assign) -> ast.AST | None:
        if len(node.targets) == 1 and ast.unparse(node.targets[0]) == ast.unparse(node.value):
            self.applied.add("P3")
            return None  # an in-place identity write: changes no value, breaks backward
        target = node.targets[0]
        if isinstance(target, ast.Name) and target.id == "conf_weights":
            for sub in ast.walk(node.value):
                if isinstance(sub, ast.Name) and sub.id == "entropys":
                    sub.id = "outputs"
                    self.applied.add("P2")
        if self.paper and isinstance(target, ast.Name) and target.id == "loss_total":
            node.value = ast.parse(_PAPER_LOSS, mode="eval").body
            self.applied.add("P4")
        return node


@contextlib.contextmanager
def _official_path(official: Path):
    """Import the checkout's ``models`` / ``TTA`` packages without leaving them in ``sys.modules``."""
    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] in ("models", "TTA")}
    for key in saved:
        del sys.modules[key]
    sys.path.insert(0, str(official))
    try:
        yield
    finally:
        sys.path.remove(str(official))
        for key in [k for k in sys.modules if k.split(".")[0] in ("models", "TTA")]:
            del sys.modules[key]
        sys.modules.update(saved)


def load_official(official: Path, paper: bool) -> tuple[types.ModuleType, type]:
    """The patched official PTA module and the official CAVMAEFT class."""
    source = (official / "TTA" / "pta.py").read_text()
    with _official_path(official):
        cav_mae = importlib.import_module("models.cav_mae")
        fixes = _Fixes(paper)
        tree = ast.fix_missing_locations(fixes.visit(ast.parse(source)))
        expected = {"P2", "P3", "P5"} | ({"P4"} if paper else set())
        if fixes.applied != expected:
            raise RuntimeError(f"{official}/TTA/pta.py: patches {sorted(expected - fixes.applied)} did not apply")
        module = types.ModuleType("official_pta")
        module.__file__ = str(official / "TTA" / "pta.py")
        exec(compile(tree, module.__file__, "exec"), module.__dict__)  # noqa: S102 (the official method, patched)
    return module, cav_mae.CAVMAEFT


def golden_batches(path: Path, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The three 6-clip batches of ``../shared/golden/inputs.npz`` (test1, test2, source), first ``batch`` clips each.

    The smooth random inputs of ``bench_methods.make_inputs`` give a random model one prediction for every clip, so
    PTA never finds a partition and never updates; these inputs do (their predictions differ).
    """
    import numpy as np

    data = np.load(path)
    return [
        tuple(torch.from_numpy(data[f"{split}_{m}"][:batch].astype(np.float32)) for m in ("audio", "video"))
        for split in ("test1", "test2", "source")
    ]


@torch.no_grad()
def spread_head(model: torch.nn.Module, batches: list, logit_std: float) -> None:
    """Make a random model's predictions differ between clips, so that PTA partitions and updates.

    A random CAV-MAE's pooled features share one large component (the positional embeddings), so its argmax is the
    same class for every clip. The classifier rows are projected orthogonally to the mean feature of ``batches`` and
    rescaled so that the logits have standard deviation ``logit_std``; both sides then get these weights.
    """
    feats = torch.cat([model(audio, video, mode="features") for audio, video in batches])
    mean = feats.mean(0)
    weight = model.mlp_head[1].weight
    weight -= (weight @ mean).unsqueeze(1) * mean.unsqueeze(0) / mean.dot(mean)
    weight *= logit_std / float((feats @ weight.t()).std())
    model.mlp_head[1].bias.zero_()


def run_official(official_dir: Path, model: torch.nn.Module, batches: list, *, loss: str = "released", heads: int = 2):
    """Run the official PTA for ``len(batches)`` online steps from ``model``'s weights.

    Returns ``{"times", "logits", "params"}``: seconds per step, the scored logits, and the trained q/k/v rows as the
    fused ``blocks_u.0.attn.qkv.{weight,bias}`` (our names).
    """
    official = Path(official_dir).resolve()
    pta, official_cls = load_official(official, paper=loss == "paper")
    with contextlib.redirect_stdout(open(os.devnull, "w")):
        ref = official_cls(label_dim=model.num_classes, embed_dim=model.embed_dim, num_heads=heads)
    missing, unexpected = ref.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and all(".attn.q." in k or ".attn.k." in k or ".attn.v." in k for k in missing), missing
    wrapped = torch.nn.DataParallel(ref)
    wrapped = pta.configure_model(wrapped)
    params, _ = pta.collect_params(wrapped)
    optimizer = torch.optim.Adam([{"params": params, "lr": 1e-4}], betas=(0.9, 0.999), weight_decay=0.0)
    args = types.SimpleNamespace(testmode="multimodal")
    saved_cuda = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *a, **k: self  # the method moves small index tensors to CUDA
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # CUDA autocast / GradScaler disabled without CUDA
            method = pta.PTA(wrapped, optimizer, torch.device("cpu"), args)
            times, logits = [], []
            for step, (audio, video) in enumerate(batches):
                torch.manual_seed(100 + step)
                t0 = time.perf_counter()
                with torch.no_grad():
                    out = method((audio, video))[0]
                times.append(time.perf_counter() - t0)
                logits.append(out.detach().float())
    finally:
        torch.Tensor.cuda = saved_cuda
    attn = ref.blocks_u[0].attn
    fused = {
        "blocks_u.0.attn.qkv.weight": torch.cat([attn.q.weight, attn.k.weight, attn.v.weight]).detach().clone(),
        "blocks_u.0.attn.qkv.bias": torch.cat([attn.q.bias, attn.k.bias, attn.v.bias]).detach().clone(),
    }
    return {"times": times, "logits": logits, "params": fused}


def run_ours(model: torch.nn.Module, batches: list, *, loss: str = "released") -> dict:
    method = PTA(model, PTAConfig(loss=loss))
    times, logits, updated = [], [], []
    for step, (audio, video) in enumerate(batches):
        method.reseed(100 + step)
        t0 = time.perf_counter()
        logits.append(method.step(audio, video))
        times.append(time.perf_counter() - t0)
        updated.append("loss_total" in method.last_step)
    return {"times": times, "logits": logits, "params": method.trainable_state(), "updated": updated}


def compare(ours: dict, ref: dict) -> dict:
    """Max relative differences of the scored logits (all steps) and of the trained parameters (last step).

    The key bias (rows D..2D-1 of the bias) has a mathematically zero gradient; it is left out of the parameters.
    """
    scale = max(float(r.abs().max()) for r in ref["logits"])
    logits = max(float((o - r).abs().max()) for o, r in zip(ours["logits"], ref["logits"], strict=True)) / scale
    weight_o, weight_r = ours["params"]["blocks_u.0.attn.qkv.weight"], ref["params"]["blocks_u.0.attn.qkv.weight"]
    dim = weight_r.shape[1]
    bias_o, bias_r = ours["params"]["blocks_u.0.attn.qkv.bias"], ref["params"]["blocks_u.0.attn.qkv.bias"]
    keep = torch.cat([torch.arange(dim), torch.arange(2 * dim, 3 * dim)])
    diffs = torch.cat([(weight_o - weight_r).abs().flatten(), (bias_o[keep] - bias_r[keep]).abs()])
    scale = float(weight_r.abs().max())
    # Adam's first steps are sign-like (+-lr): an element whose gradient is ~0 can step the other way in either
    # implementation (2 lr apart), so also count the values off by more than 1e-4 of the scale.
    return {
        "logits_rel": logits, "params_rel": float(diffs.max()) / scale,
        "params_off": int((diffs > 1e-4 * scale).sum()), "params_total": diffs.numel(),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official", type=Path, required=True, help="checkout of MPI-Lab/PTA")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=6)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--head-scale", type=float, default=30.0, help="classifier weight factor (~3 at width 768)")
    parser.add_argument("--loss", choices=("released", "paper"), default="released")
    parser.add_argument("--inputs", type=Path, help="../shared/golden/inputs.npz: its 3 batches instead of random ones")
    parser.add_argument(
        "--spread", type=float, default=3.0, help="logit std after spread_head (default 3; negative: keep the head)"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.spread is not None and args.spread < 0:
        args.spread = None
    torch.set_num_threads(args.threads)
    if args.inputs:
        batches = golden_batches(args.inputs, args.batch)[: args.steps]
    else:
        batches = [make_inputs(args.batch, seed) for seed in range(1, args.steps + 1)]
    base = make_model(args.width, args.heads, args.head_scale)
    if args.spread is not None:
        spread_head(base, batches, args.spread)
    ref = run_official(args.official, base, batches, loss=args.loss, heads=args.heads)
    ours = run_ours(copy.deepcopy(base), batches, loss=args.loss)
    row = {"ours_s": ours["times"], "official_s": ref["times"], "updated": ours["updated"], **compare(ours, ref)}
    speed = statistics.median(ref["times"]) / statistics.median(ours["times"])
    print(
        f"pta width {args.width} batch {args.batch}: ours {statistics.median(ours['times']):.3f} s/step, official "
        f"{statistics.median(ref['times']):.3f} s/step, speed-up {speed:.2f}, logits rel {row['logits_rel']:.2e}, "
        f"params rel {row['params_rel']:.2e} ({row['params_off']}/{row['params_total']} values off by > 1e-4), "
        f"steps that updated {sum(ours['updated'])}/{len(batches)}"
    )
    if args.json:
        config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        args.json.write_text(json.dumps({"config": config, "pta": row}, indent=2))


if __name__ == "__main__":
    main()
