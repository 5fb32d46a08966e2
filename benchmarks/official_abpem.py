"""The official side of the ABPEM benchmark (``avtta.adapt.methods.abpem`` against YushengZhao/ABPEM).

Official side: a checkout of YushengZhao/ABPEM outside this repository, e.g.
``git --git-dir=/work/.mirror/YushengZhao+ABPEM/repo archive HEAD TTA models | tar -x -C /tmp/official/ABPEM``: its
``CAVMAEFT`` with the same weights (``strict=False``: the q/k/v aliases become views of ``qkv`` on the first
forward), wrapped in ``nn.DataParallel`` (a plain call on a CPU-only machine), ``configure_model``,
``collect_params``, Adam, the method object and a fresh ``Cache(cache_size // batch)``, as ``run_read.py`` sets
them up; the scored logits are ``outputs[1]``. The classifier is x5 (with x30 the official balance loss is NaN,
spec method-abpem.md item 3).

Driven by ``bench_methods.py --official abpem=DIR``, or ``official_abpem.py DIR [bench_methods.py's options]`` for
ABPEM alone. Earlier measurements: docs/faithfulness-abpem.md, "Speed".
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
    official_dir: Path,
    model: torch.nn.Module,
    batches: list,
    *,
    cache_size: int = 32,
    prime_ent_k: int = 8,
    ent_weight: float = 1.0,
    bal_weight: float = 1.0,
    attn_weight: float = 1.0,
    fix_loss_bal: bool = True,
    lr: float = 1e-4,
) -> dict:
    """Run the official ABPEM on ``batches`` from ``model``'s weights; returns times, logits and the trained qkv."""
    with official_imports(official_dir, ("models", "TTA")):
        from TTA import ABPEM as official  # type: ignore[import-not-found]

        from models.cav_mae import CAVMAEFT  # type: ignore[import-not-found]

        aliases = tuple(f".attn.{w}." for w in ("qa", "ka", "va", "qv", "kv", "vv"))
        net = torch.nn.DataParallel(load_weights(CAVMAEFT, model, aliases))
        net = official.configure_model(net)
        params, _ = official.collect_params(net)
        optimizer = torch.optim.Adam([{"params": params, "lr": lr}], weight_decay=0.0, betas=(0.9, 0.999))
        args = types.SimpleNamespace(
            testmode="multimodal", use_cache=True, counter=0, fix_loss_bal=fix_loss_bal, prime_ent_k=prime_ent_k,
            ent_weight=ent_weight, bal_weight=bal_weight, attn_weight=attn_weight,
        )  # fmt: skip
        method = official.READ(net, optimizer, torch.device("cpu"), args)
        args.cache = official.Cache(cache_size // batches[0][0].shape[0])
        times, logits = timed_steps(lambda batch: method(batch, True)[0][1], batches)
    attn = net.module.blocks_u[0].attn
    trained = {"weight": attn.qkv.weight.detach().clone(), "bias": attn.qkv.bias.detach().clone()}
    return {"times": times, "logits": logits, "params": {f"blocks_u.0.attn.qkv.{k}": v for k, v in trained.items()}}


if __name__ == "__main__":  # bench_methods.py for this runner's methods (official_common.cli)
    from official_common import cli

    cli("abpem", ("abpem",))
