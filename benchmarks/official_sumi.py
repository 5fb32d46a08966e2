"""The official side of the SuMi benchmark (``avtta.adapt.methods.sumi`` against zrguo/SuMi).

Official side: a checkout of zrguo/SuMi outside this repository, e.g.
``git --git-dir=/work/.mirror/zrguo+SuMi/repo archive HEAD src models | tar -x -C /tmp/official/SuMi``: its
``CAVMAEFT`` with the same weights (``strict=False``: the q/k/v copies become views of ``qkv`` on the first
forward), wrapped in ``nn.DataParallel`` (a plain call on a CPU-only machine), ``configure_model``,
``collect_params``, Adam and the ``SuMi`` object as ``train.initiate`` sets them up; step ``t`` of ``iters``, the
scored logits are ``outputs[1]``. The classifier is x5 (with x30 the unimodal entropies fall below e/10 and every
clip is rejected).

Driven by ``bench_methods.py --official sumi=DIR``, or ``official_sumi.py DIR [bench_methods.py's options]`` for
SuMi alone. Earlier measurements: docs/faithfulness-sumi.md, "Speed".
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from official_common import load_weights, official_imports, timed_steps  # noqa: E402

__all__ = ["run_official"]


def run_official(
    official_dir: Path, model: torch.nn.Module, batches: list, *, iters: int = 78, lr: float = 1e-4
) -> dict:
    """Run the official SuMi on ``batches`` (steps ``t = 0, 1, ...`` of ``iters``) from ``model``'s weights.

    Returns the step times, the scored logits, the selected clips per step and all trained LayerNorm parameters.
    """
    with official_imports(official_dir, ("models", "src")):
        from src import sumi as official  # type: ignore[import-not-found]

        from models.cav_mae import CAVMAEFT  # type: ignore[import-not-found]

        net = torch.nn.DataParallel(load_weights(CAVMAEFT, model, (".attn.q.", ".attn.k.", ".attn.v.")))
        net = official.configure_model(net)
        params, names = official.collect_params(net)
        optimizer = torch.optim.Adam([{"params": params, "lr": lr}], weight_decay=0.0, betas=(0.9, 0.999))
        method = official.SuMi(net, optimizer, torch.device("cpu"), types.SimpleNamespace(testmode="multimodal"))
        method.eval()
        selected: list[list[int]] = []
        intersect = official.np.intersect1d

        def spy(*arrays):  # records the selection; changes nothing
            out = intersect(*arrays)
            selected.append([int(i) for i in out])
            return out

        official.np = types.SimpleNamespace(**{**vars(official.np), "intersect1d": spy})
        counter = iter(range(len(batches)))
        times, logits = timed_steps(lambda batch: method(batch, next(counter), iters)[1], batches)
    trained = {n.removeprefix("module."): p.detach().clone() for n, p in zip(names, params, strict=True)}
    return {"times": times, "logits": logits, "params": trained, "selected": selected}


if __name__ == "__main__":  # bench_methods.py for this runner's methods (official_common.cli)
    from official_common import cli

    cli("sumi", ("sumi",))
