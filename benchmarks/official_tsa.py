"""The official side of the TSA benchmark: DASP's TSA re-implementation (he4cs/DASP ``methods/tsa.py``).

The authors' repository (chenmc1996/Uni-Modal-Distribution-Shift) was unavailable; DASP's re-implementation is the
reference avtta's TSA is checked against. ``run_official(official_dir, model, batches, **settings)`` runs it on DASP's
``CAVMAEFT`` with ``model``'s weights, ``torch.manual_seed(100 + step)`` before each step (the Gumbel noise is the
only draw), and returns the time of every step, the scored logits and the trained tensors after the last step. The
loading (no ``methods/__init__``, no yacs, literal widths patched in the loaded text when the width is not 768) is
``official_dasp.py``'s.

Driven by ``bench_methods.py --official dasp=DIR``, or ``official_tsa.py DIR [bench_methods.py's options]`` for TSA
alone. Earlier measurements: docs/faithfulness-tsa.md, "Speed".
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from official_dasp import load_official, official_cfg, official_model, official_steps  # noqa: E402

__all__ = ["run_official"]

PARAMS = ("a_adapter", "v_adapter", "weight_adapter")


def run_official(official_dir: Path, model: torch.nn.Module, batches: list, **settings: float) -> dict:
    """Official (DASP's) TSA on ``batches``: ``{"times", "logits", "params"}``.

    ``settings``: overrides of the ``TSA`` section, e.g. ``conf_thre=0.8`` (KS50 values by default).
    """
    width = model.embed_dim
    patches = {}
    if width != 768:
        patches = {"torch.zeros(768, 768)": f"torch.zeros({width}, {width})", "torch.eye(768)": f"torch.eye({width})"}
    method_class, cavmaeft = load_official(Path(official_dir), "tsa", patches)
    wrapper = official_model(cavmaeft, model)
    cfg = official_cfg(TSA={k.upper(): v for k, v in settings.items()})
    method = method_class(cfg, wrapper, model.num_classes)
    times, logits = official_steps(method, batches)
    params = {name: getattr(wrapper, name).detach().clone() for name in PARAMS}
    return {"times": times, "logits": logits, "params": params}


if __name__ == "__main__":  # bench_methods.py for this runner's methods (official_common.cli)
    from official_common import cli

    cli("dasp", ("tsa",))
