"""The official side of the PTA benchmark (``avtta.adapt.methods.pta`` against MPI-Lab/PTA).

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

Driven by ``bench_methods.py --official pta=DIR`` (with ``spread_head`` applied to the model first), or
``official_pta.py DIR [bench_methods.py's options]`` for PTA alone. Earlier measurements: docs/faithfulness-pta.md,
"Speed".
"""

from __future__ import annotations

import ast
import importlib
import sys
import types
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from official_common import load_weights, official_imports, timed_steps  # noqa: E402

__all__ = ["load_official", "run_official", "spread_head"]

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


def load_official(official: Path, paper: bool) -> tuple[types.ModuleType, type]:
    """The patched official PTA module and the official CAVMAEFT class."""
    official = Path(official).resolve()
    source = (official / "TTA" / "pta.py").read_text()
    with official_imports(official, ("models", "TTA")):
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


def run_official(official_dir: Path, model: torch.nn.Module, batches: list, *, loss: str = "released") -> dict:
    """Run the official PTA for ``len(batches)`` online steps from ``model``'s weights.

    Returns ``{"times", "logits", "params"}``: seconds per step, the scored logits, and the trained q/k/v rows as the
    fused ``blocks_u.0.attn.qkv.{weight,bias}`` (our names).
    """
    pta, official_cls = load_official(Path(official_dir), paper=loss == "paper")
    ref = load_weights(official_cls, model, (".attn.q.", ".attn.k.", ".attn.v."))
    wrapped = pta.configure_model(torch.nn.DataParallel(ref))
    params, _ = pta.collect_params(wrapped)
    optimizer = torch.optim.Adam([{"params": params, "lr": 1e-4}], betas=(0.9, 0.999), weight_decay=0.0)
    args = types.SimpleNamespace(testmode="multimodal")
    saved_cuda = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *a, **k: self  # the method moves small index tensors to CUDA
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # CUDA autocast / GradScaler disabled without CUDA
            method = pta.PTA(wrapped, optimizer, torch.device("cpu"), args)
            times, logits = timed_steps(lambda batch: method(batch)[0], batches)
    finally:
        torch.Tensor.cuda = saved_cuda
    attn = ref.blocks_u[0].attn
    fused = {
        "blocks_u.0.attn.qkv.weight": torch.cat([attn.q.weight, attn.k.weight, attn.v.weight]).detach().clone(),
        "blocks_u.0.attn.qkv.bias": torch.cat([attn.q.bias, attn.k.bias, attn.v.bias]).detach().clone(),
    }
    return {"times": times, "logits": logits, "params": fused}


if __name__ == "__main__":  # bench_methods.py for this runner's methods (official_common.cli)
    from official_common import cli

    cli("pta", ("pta",))
