"""The official DASP code (he4cs/DASP) side of the DASP benchmark, and its loader (shared with ``official_tsa.py``).

``run_official(official_dir, model, batches, **settings)`` runs DASP's ``methods/dasp.py`` on DASP's own ``CAVMAEFT``
(given ``model``'s weights, wrapped in ``nn.DataParallel``, which on a CPU-only machine calls the module directly),
``torch.manual_seed(100 + step)`` before each step, and returns the time of every step, the scored logits, the
trained adapters after the last step and their initial values (``"initial"``: drawn by the official constructor from
the global generator seeded with 1, the official ``RNG_SEED``, and copied into ours).

The official tree is a checkout outside this repository (never committed), e.g.::

    mkdir -p /tmp/official/DASP && git --git-dir=/work/.mirror/he4cs+DASP/repo archive HEAD methods models utils \\
        | tar -x -C /tmp/official/DASP

It is loaded without its ``methods/__init__.py`` (which imports all nine methods, one of them ``tkinter``) and
without yacs (the configuration is a namespace holding the yaml's values). At a width other than 768 the literals
of the adapter construction are patched in the loaded text (the files are untouched): width 768 -> the model's,
rank 32 -> ``rank``, as the golden harness did.

Driven by ``bench_methods.py --official dasp=DIR`` (TSA and DASP), or ``official_dasp.py DIR [bench_methods.py's
options]`` for DASP alone. Earlier measurements: docs/faithfulness-dasp.md.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from official_common import load_weights, official_imports, timed_steps  # noqa: E402

__all__ = ["load_official", "official_cfg", "official_model", "official_steps", "run_official"]

_PACKAGES = ("methods", "models", "utils")


def load_official(official_dir: Path, method: str, patches: dict[str, str]) -> tuple[type, type]:
    """``(method class, CAVMAEFT class)`` from the official tree; ``patches`` are text replacements in the method file.

    Every patch must match (a silent miss would run the wrong width).
    """
    path = Path(official_dir) / "methods" / f"{method}.py"
    if not path.is_file():
        raise ValueError(f"{path}: not found; pass a checkout of he4cs/DASP (benchmarks/official_dasp.py)")
    source = path.read_text()
    for old, new in patches.items():
        if old not in source:
            raise ValueError(f"{path}: patch target {old!r} not found (benchmarks/official_dasp.py)")
        source = source.replace(old, new)
    with official_imports(official_dir, _PACKAGES, namespace=True):
        cav_mae = importlib.import_module("models.cav_mae")
        spec = importlib.util.spec_from_loader(f"methods.{method}", loader=None, origin=str(path))
        module = importlib.util.module_from_spec(spec)
        module.__file__ = str(path)
        sys.modules[spec.name] = module
        exec(compile(source, str(path), "exec"), module.__dict__)  # noqa: S102 (the patched official file)
    return getattr(module, method.upper()), cav_mae.CAVMAEFT


def official_cfg(**sections: dict) -> types.SimpleNamespace:
    """The configuration fields DASP's ``TTAMethod`` reads (``conf.py`` + ``cfgs/ks50_c/*.yaml``), with overrides."""
    ns = types.SimpleNamespace
    cfg = {
        "MODEL": {"EPISODIC": False, "RESET_AFTER_NUM_UPDATES": 0},
        "CORRUPTION": {"DATASET": "ks50"},
        "OPTIM": {"STEPS": 1, "METHOD": "Adam", "LR": 1e-4, "BETA": 0.9, "WD": 0.0},
        "TSA": {"LOSS_COEFF": 0.5, "CONF_THRE": 0.9, "GUMBEL_SOFTMAX_TAU": 1e-3},
        "DASP": {"DELTA": 0.05, "LAMBDA_ENT": 0.5, "LAMBDA_KL": 1.0},
    }
    for key, values in sections.items():
        cfg[key] = {**cfg[key], **values}
    # MIXED_PRECISION is True upstream; on a CPU-only machine the methods take their fp32 branch anyway.
    return ns(MIXED_PRECISION=True, **{k: ns(**v) for k, v in cfg.items()})


def official_model(cavmaeft: type, model: torch.nn.Module) -> torch.nn.Module:
    """DASP's ``CAVMAEFT`` with ``model``'s weights, wrapped in ``DataParallel`` as ``models/model.py`` does."""
    return torch.nn.DataParallel(load_weights(cavmaeft, model))


def official_steps(method: torch.nn.Module, batches: list) -> tuple[list[float], list[torch.Tensor]]:
    """Times and scored logits of DASP's test loop (``get_accuracy``: the method re-enables gradients itself)."""
    return timed_steps(method, batches)


def _adapters(wrapper: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in wrapper.named_parameters() if "adapter" in n}


def run_official(
    official_dir: Path, model: torch.nn.Module, batches: list, *, rank: int = 32, delta: float = 0.05, **settings
) -> dict:
    """Official DASP on ``batches``: ``{"times", "logits", "params", "initial"}`` (see the module docstring)."""
    width = model.embed_dim
    patches = {}
    if width != 768 or rank != 32:
        patches = {
            "LowRankAdapter(dim=768, r=32)": f"LowRankAdapter(dim={width}, r={rank})",
            "nn.Linear(768, 768, bias=False)": f"nn.Linear({width}, {width}, bias=False)",
        }
    method_class, cavmaeft = load_official(Path(official_dir), "dasp", patches)
    wrapper = official_model(cavmaeft, model)
    cfg = official_cfg(DASP={"DELTA": delta, **{k.upper(): v for k, v in settings.items()}})
    torch.manual_seed(1)  # RNG_SEED: the constructor draws the adapters' initial values
    method = method_class(cfg, wrapper, model.num_classes)
    initial = _adapters(wrapper)
    times, logits = official_steps(method, batches)
    return {"times": times, "logits": logits, "params": _adapters(wrapper), "initial": initial}


if __name__ == "__main__":  # bench_methods.py for this runner's methods (official_common.cli)
    from official_common import cli

    cli("dasp", ("dasp",))
