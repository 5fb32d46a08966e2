"""What the official-side runners (``benchmarks/official_*.py``) share: importing a checkout, loading our weights into
its model, timing its steps, and comparing its results with ours.

Every runner exposes ``run_official(official_dir, model, batches, **settings) -> dict`` with ``"times"`` (seconds per
step), ``"logits"`` (the scored logits of every step), ``"params"`` (the trained tensors after the last step, under our
names) and, where the official constructor draws or sets the initial state of a trained tensor, ``"initial"`` (copied
into ours before the first step). ``bench_methods.py`` drives them; the checkouts stay outside this repository.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

__all__ = ["cpu_times", "compare", "in_step", "load_weights", "official_imports", "timed_steps"]

_CPU_TIMES: list[float] = []  # CPU seconds of the steps of the last ``timed_steps`` call

_STEPPING: list[int | None] = [None]  # the step ``timed_steps`` is timing (a method's setup is not counted)


def in_step() -> int | None:
    """The index of the step :func:`timed_steps` is running, else None (for ``bench_methods.py``'s forward counts)."""
    return _STEPPING[0]


@contextlib.contextmanager
def official_imports(official_dir: Path, packages: tuple[str, ...], *, namespace: bool = False) -> Iterator[None]:
    """Make ``packages`` resolve to the checkout ``official_dir`` and restore ``sys.modules`` afterwards.

    Several checkouts have packages of the same names (``models``, ``TTA``), so each run imports its own. With
    ``namespace`` the packages are bare module objects and their ``__init__.py`` is not run (DASP's imports all its
    methods, one of them ``tkinter``).
    """
    official_dir = Path(official_dir).resolve()
    if not official_dir.is_dir():
        raise ValueError(f"{official_dir}: no such directory (a checkout of the official code)")
    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] in packages}
    for key in saved:
        del sys.modules[key]
    if namespace:
        for name in packages:
            package = types.ModuleType(name)
            package.__path__ = [str(official_dir / name)]
            sys.modules[name] = package
    sys.path.insert(0, str(official_dir))
    try:
        yield
    finally:
        sys.path.remove(str(official_dir))
        for key in [k for k in sys.modules if k.split(".")[0] in packages]:
            del sys.modules[key]
        sys.modules.update(saved)


def load_weights(model_class: type, model: torch.nn.Module, aliases: tuple[str, ...] = ()) -> torch.nn.Module:
    """The official ``CAVMAEFT`` (``model_class``) with ``model``'s weights, not yet wrapped.

    ``aliases``: substrings of official parameter names that may be missing (per-projection q/k/v copies that the
    official model makes views of its fused ``qkv`` on the first forward); anything else missing or unexpected raises.
    """
    heads = model.blocks_u[0].attn.num_heads
    with torch.random.fork_rng(), contextlib.redirect_stdout(open(os.devnull, "w")):
        official = model_class(label_dim=model.num_classes, embed_dim=model.embed_dim, num_heads=heads)
    missing, unexpected = official.load_state_dict(model.state_dict(), strict=False)
    bad = [k for k in missing if not any(a in k for a in aliases)]
    if bad or unexpected:
        raise ValueError(f"weights do not fit the official CAVMAEFT: missing {bad[:3]}, unexpected {unexpected[:3]}")
    return official


def cpu_times() -> list[float]:
    """CPU seconds (``time.process_time``) of every step of the last :func:`timed_steps` call.

    On a shared machine the wall-clock time of a step includes the time other jobs held the cores; the CPU time of
    the process does not (with one torch thread it is close to the wall-clock time on an idle machine).
    """
    return list(_CPU_TIMES)


def timed_steps(call: Callable[[tuple], torch.Tensor], batches: list) -> tuple[list[float], list[torch.Tensor]]:
    """Run ``call((audio, video))`` on every batch under ``no_grad`` (as the official test loops), timing each call.

    ``torch.manual_seed(100 + step)`` precedes step ``step``: the official methods draw from the global generator.
    """
    times, logits = [], []
    _CPU_TIMES.clear()
    for step, batch in enumerate(batches):
        torch.manual_seed(100 + step)
        _STEPPING[0] = step
        try:
            start, cpu = time.perf_counter(), time.process_time()
            with torch.no_grad():
                out = call(batch)
            times.append(time.perf_counter() - start)
            _CPU_TIMES.append(time.process_time() - cpu)
        finally:
            _STEPPING[0] = None
        logits.append(out.detach().float())
    return times, logits


def compare(ours: dict, ref: dict, *, skip_key_bias: bool = False) -> dict:
    """Parity of one run: scored logits over all steps, trained tensors after the last step.

    ``logits_rel``: max |ours - official| / max |official|. ``params_rel``: the same over the trained tensors both
    sides report, relative to the largest official value. ``params_off`` / ``params_total``: values off by more than
    1e-4 of that scale; Adam's first steps are sign-like (+-lr), so a value whose gradient is float noise can step the
    other way in either implementation. With ``skip_key_bias`` the key rows of a fused ``qkv`` bias are left out: their
    gradient is mathematically zero (the softmax is invariant to them), so what they do is noise on both sides.
    """
    logit_scale = max(float(r.abs().max()) for r in ref["logits"])
    logit_err = max(float((o - r).abs().max()) for o, r in zip(ours["logits"], ref["logits"], strict=True))
    out = {"logits_rel": logit_err / logit_scale}
    names = [n for n in ours["params"] if n in ref["params"]]
    if ours["params"] and not names:
        raise ValueError(
            f"no trained tensor in common: ours {list(ours['params'])[:3]}, official {list(ref['params'])[:3]}"
        )
    if names:
        diffs, scale = [], 0.0
        for name in names:
            o, r = ours["params"][name], ref["params"][name]
            if skip_key_bias and name.endswith("attn.qkv.bias"):
                dim = r.shape[0] // 3
                keep = torch.cat([torch.arange(dim), torch.arange(2 * dim, 3 * dim)])
                o, r = o[keep], r[keep]
            diffs.append((o - r).abs().flatten())
            scale = max(scale, float(r.abs().max()))
        out["params_rel"] = max(float(d.max()) for d in diffs) / scale
        out["params_off"] = sum(int((d > 1e-4 * scale).sum()) for d in diffs)
        out["params_total"] = sum(d.numel() for d in diffs)
    return out


def cli(repo: str, methods: tuple[str, ...], argv: list[str] | None = None) -> None:
    """``python benchmarks/official_<name>.py [--official] DIR [options]``: ``bench_methods.py`` for ``methods`` only.

    The runners' own command lines, kept for the commands in docs/faithfulness-*.md: ``DIR`` (positional or after
    ``--official``) is the checkout of ``repo``; every other option is ``bench_methods.py``'s.
    """
    import bench_methods

    args = list(sys.argv[1:] if argv is None else argv)
    if "--official" in args:
        index = args.index("--official")
        args[index : index + 2] = ["--official", f"{repo}={args[index + 1]}"]
    elif args and not args[0].startswith("-"):
        args[0:1] = ["--official", f"{repo}={args[0]}"]
    bench_methods.main(["--methods", *methods, *args])
