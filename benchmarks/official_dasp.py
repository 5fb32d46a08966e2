"""The official DASP code (he4cs/DASP) side of the TSA / DASP benchmarks, and a side-by-side runner.

``run_official(official_dir, model, batches, **settings)`` runs DASP's ``methods/dasp.py`` on DASP's own
``CAVMAEFT`` (given ``model``'s weights, wrapped in ``nn.DataParallel``, which on a CPU-only machine calls the module
directly) for the given ``(audio, video)`` batches, ``torch.manual_seed(100 + step)`` before each step, and returns
the time of every step, the scored logits, the trained adapters after the last step and their initial values (drawn
by the official constructor from the global generator seeded with 1, the official ``RNG_SEED``).
``benchmarks/official_tsa.py`` does the same for DASP's TSA.

The official tree is a checkout outside this repository (never committed), e.g.::

    mkdir -p /tmp/official/DASP && git --git-dir=/work/.mirror/he4cs+DASP/repo archive HEAD methods models utils \
        | tar -x -C /tmp/official/DASP

It is loaded without its ``methods/__init__.py`` (which imports all nine methods, one of them ``tkinter``) and
without yacs (the configuration is a namespace holding the yaml's values). At a width other than 768 the literals
of the adapter construction are patched in the loaded text (the files are untouched): width 768 -> the model's,
rank 32 -> ``rank``, as the golden harness did.

Side by side (ours first, then the official code, same batches)::

    .venv/bin/python benchmarks/official_dasp.py /tmp/official/DASP --width 768 --heads 12 --batch 4
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import importlib.util
import os
import statistics
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path

import torch
from avtta.models import create_model

__all__ = ["load_official", "make_inputs", "make_model", "official_cfg", "official_model", "run_official"]

_PACKAGES = ("methods", "models", "utils")


@contextlib.contextmanager
def _official_imports(official_dir: Path) -> Iterator[None]:
    """Make ``methods``, ``models``, ``utils`` resolve to the official tree, and restore ``sys.modules`` after."""
    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] in _PACKAGES}
    for key in saved:
        del sys.modules[key]
    try:
        for name in _PACKAGES:
            package = types.ModuleType(name)
            package.__path__ = [str(official_dir / name)]  # no __init__ run: only what is imported below loads
            sys.modules[name] = package
        yield
    finally:
        for key in [k for k in sys.modules if k.split(".")[0] in _PACKAGES]:
            del sys.modules[key]
        sys.modules.update(saved)


def load_official(official_dir: Path, method: str, patches: dict[str, str]) -> tuple[type, type]:
    """``(method class, CAVMAEFT class)`` from the official tree; ``patches`` are text replacements in the method file.

    Every patch must match (a silent miss would run the wrong width).
    """
    official_dir = Path(official_dir)
    path = official_dir / "methods" / f"{method}.py"
    if not path.is_file():
        raise ValueError(f"{path}: not found; pass a checkout of he4cs/DASP (benchmarks/official_dasp.py)")
    source = path.read_text()
    for old, new in patches.items():
        if old not in source:
            raise ValueError(f"{path}: patch target {old!r} not found (benchmarks/official_dasp.py)")
        source = source.replace(old, new)
    with _official_imports(official_dir):
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
    heads = model.blocks_u[0].attn.num_heads
    with torch.random.fork_rng(), contextlib.redirect_stdout(open(os.devnull, "w")):
        official = cavmaeft(label_dim=model.num_classes, embed_dim=model.embed_dim, num_heads=heads)
    missing, unexpected = official.load_state_dict(model.state_dict(), strict=False)
    if missing or unexpected:
        raise ValueError(f"weights do not fit DASP's CAVMAEFT: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return torch.nn.DataParallel(official)


def _timed_steps(method: torch.nn.Module, batches: list) -> tuple[list[float], list[torch.Tensor]]:
    times, logits = [], []
    for step, (audio, video) in enumerate(batches):
        torch.manual_seed(100 + step)
        t0 = time.perf_counter()
        with torch.no_grad():  # as DASP's get_accuracy; the method re-enables gradients itself
            out = method((audio, video))
        times.append(time.perf_counter() - t0)
        logits.append(out.detach().float())
    return times, logits


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
    times, logits = _timed_steps(method, batches)
    return {"times": times, "logits": logits, "params": _adapters(wrapper), "initial": initial}


# ---------------------------------------------------------------------------------------------- side by side
def make_inputs(batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth random fields plus fine noise (as ``bench_methods.make_inputs``)."""
    gen = torch.Generator().manual_seed(seed)
    up = torch.nn.functional.interpolate
    audio = up(torch.randn(batch, 1, 32, 8, generator=gen), size=(1024, 128), mode="bilinear")[:, 0]
    video = up(torch.randn(batch, 3, 14, 14, generator=gen), size=(224, 224), mode="bilinear")
    return audio + 0.1 * torch.randn(audio.shape, generator=gen), video + 0.1 * torch.randn(video.shape, generator=gen)


def make_model(width: int, heads: int, head_scale: float) -> torch.nn.Module:
    model = create_model("cav_mae_ft_base", num_classes=50, embed_dim=width, num_heads=heads, init_seed=0)
    with torch.no_grad():
        model.mlp_head[1].weight.mul_(head_scale)
    return model


def run_ours(method_class: type, config: object, model: torch.nn.Module, batches: list, initial: dict | None) -> dict:
    method = method_class(model, config)
    if initial is not None:
        with torch.no_grad():
            for name, p in method.named_params:
                p.copy_(initial[name])
    times, logits, branches = [], [], []
    for step, (audio, video) in enumerate(batches):
        method.reseed(100 + step)
        t0 = time.perf_counter()
        logits.append(method.step(audio, video))
        times.append(time.perf_counter() - t0)
        branches.append(method.last.get("branch"))
    return {"times": times, "logits": logits, "params": method.trainable_state(), "branches": branches}


def compare(ours: dict, ref: dict) -> dict:
    """Max |ours - official| of the logits (relative to their scale) and of the trained tensors (absolute)."""
    scale = max(float(r.abs().max()) for r in ref["logits"])
    logits = max(float((o - r).abs().max()) for o, r in zip(ours["logits"], ref["logits"], strict=True)) / scale
    params = max(float((ours["params"][n] - ref["params"][n]).abs().max()) for n in ours["params"])
    return {"logits_rel": logits, "params_abs": params}


def side_by_side(name: str, argv: list[str] | None = None) -> None:
    """CLI shared by this file and ``official_tsa.py``: ours vs official on the same batches, one line of figures."""
    parser = argparse.ArgumentParser(description=f"{name}: seconds per online step, ours vs the official code")
    parser.add_argument("official", type=Path, help="checkout of he4cs/DASP (outside this repository)")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--head-scale", type=float, default=30.0, help="classifier factor (30 at width 32, ~3 at 768)")
    parser.add_argument("--rank", type=int, default=32, help="DASP's internal-adapter rank (32; <= width)")
    parser.add_argument("--repeats", type=int, default=1, help="alternate ours / official this many times")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    batches = [make_inputs(args.batch, seed) for seed in range(1, args.steps + 1)]
    base = make_model(args.width, args.heads, args.head_scale)
    if name == "tsa":
        from avtta.adapt.methods.tsa import TSA, TSAConfig

        sys.path.insert(0, str(Path(__file__).resolve().parent))
        official = importlib.import_module("official_tsa")
        method_class, config, settings = TSA, TSAConfig(), {}
        run_ref = official.run_official
    else:
        from avtta.adapt.methods.dasp import DASP, DASPConfig

        method_class, config, settings = DASP, DASPConfig(rank=args.rank), {"rank": args.rank}
        run_ref = run_official
    ours_t, ref_t = [], []
    for _ in range(args.repeats):
        ref = run_ref(args.official.resolve(), copy.deepcopy(base), batches, **settings)
        ours = run_ours(method_class, config, copy.deepcopy(base), batches, ref.get("initial"))
        # the first step includes one-off allocations on both sides: time the later ones
        ours_t += ours["times"][1:] or ours["times"]
        ref_t += ref["times"][1:] or ref["times"]
    diff = compare(ours, ref)
    extra = f" branches {ours['branches']}" if name == "dasp" else ""
    # min and median: the machine is shared, and the minimum is the least disturbed by other jobs
    ours_s, ref_s = statistics.median(ours_t), statistics.median(ref_t)
    print(
        f"{name} width {args.width} batch {args.batch}: ours {ours_s:.3f} s/step (min {min(ours_t):.3f}), official "
        f"{ref_s:.3f} s/step (min {min(ref_t):.3f}), speed-up {ref_s / ours_s:.2f}x "
        f"(min {min(ref_t) / min(ours_t):.2f}x); "
        f"logits rel {diff['logits_rel']:.2e}, params abs {diff['params_abs']:.2e}{extra}",
        flush=True,
    )


if __name__ == "__main__":
    side_by_side("dasp")
