"""Time per online step of every registered TTA method (``avtta.adapt``), side by side with the official
implementations where their checkouts are given, and report how closely they agree.

Our side: ``create_model("cav_mae_ft_base", embed_dim=W, num_heads=H)`` with a seeded random initialisation and the
classifier weight scaled (confident predictions, as in ../shared/golden: x30 by default, x5 for ABPEM, SuMi and
AdaPGC, whose official code breaks at x30 (their goldens use x5); PTA's head is also made data-dependent, see
``official_pta.spread_head``; ``--head-scale`` sets one factor for all, ~3 at width 768, where x30 saturates the
softmax and the entropy gradients vanish), smooth random inputs, the methods' default settings; the method
generator is reseeded ``100 + step`` before each step.

Official side (``--official REPO=DIR``, once per repository, each a checkout outside this repository, see
``REPOS``): ``benchmarks/official_<runner>.py`` runs the official method on the same weights and batches
(``torch.manual_seed(100 + step)`` before each step; what each runner adapts to run the code on a CPU is in its
docstring); initial values that the official constructor draws (BriMPR's prompts, DASP's adapters) are copied
into ours. Parity columns: max |ours - official| of the scored logits over all steps relative to max |official|,
and of the trained parameters after the last step relative to their scale, with the number of values off by more
than 1e-4 of that scale. ``fwd/step``: runs of the video stack / of the classifier per step, counted by hooks on
the models each side runs (``ForwardCounter``).

Examples::

    .venv/bin/python benchmarks/bench_methods.py                      # width 32, ours only
    .venv/bin/python benchmarks/bench_methods.py --official brimpr=/tmp/official/BriMPR \
        --official abpem=/tmp/official/ABPEM --official sumi=/tmp/official/SuMi --official pta=/tmp/official/PTA \
        --official adapgc=/tmp/official/AdaPGC --official dasp=/tmp/official/DASP
    .venv/bin/python benchmarks/bench_methods.py --official brimpr=/tmp/official/BriMPR --methods read brimpr \
        --width 768 --heads 12 --batch 4 --head-scale 3
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from avtta.models import cpu_gemm, create_model, get_cpu_gemm

from avtta import adapt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from official_brimpr import METHODS as OFFICIAL_BRIMPR  # noqa: E402
from official_common import compare, cpu_times, in_step  # noqa: E402


def make_inputs(batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth random fields (coarse noise upsampled plus fine noise), so DeYO's patch shuffling changes them."""
    gen = torch.Generator().manual_seed(seed)
    up = torch.nn.functional.interpolate
    audio = up(torch.randn(batch, 1, 32, 8, generator=gen), size=(1024, 128), mode="bilinear")[:, 0]
    video = up(torch.randn(batch, 3, 14, 14, generator=gen), size=(224, 224), mode="bilinear")
    audio = audio + 0.1 * torch.randn(audio.shape, generator=gen)
    video = video + 0.1 * torch.randn(video.shape, generator=gen)
    return audio, video


def make_model(width: int, heads: int, head_scale: float = 30.0) -> torch.nn.Module:
    model = create_model("cav_mae_ft_base", num_classes=50, embed_dim=width, num_heads=heads, init_seed=0)
    with torch.no_grad():
        model.get_classifier().weight.mul_(head_scale)
    return model


@dataclass(frozen=True)
class Bench:
    """How one method is benchmarked.

    ``repo``: the ``--official`` key of the checkout holding the official code (None: ours only); ``runner``: the
    module in benchmarks/ whose ``run_official`` runs it; ``head_scale``: the classifier factor at width 32 (where a
    method's official code breaks at x30, its golden's x5); ``ours`` / ``official``: settings for the two sides (the
    same run settings, spelled by each); ``skip_key_bias``: leave the key rows of a trained ``qkv`` bias out of the
    parameter comparison (zero gradient); ``spread``: make the head's predictions differ between clips
    (``official_pta.spread_head``: PTA only updates when they do).
    """

    repo: str | None
    runner: str | None
    head_scale: float = 30.0
    ours: dict = field(default_factory=dict)
    official: dict = field(default_factory=dict)
    skip_key_bias: bool = False
    spread: bool = False


REPOS = {
    "brimpr": "Luchicken/BriMPR", "abpem": "YushengZhao/ABPEM", "sumi": "zrguo/SuMi", "pta": "MPI-Lab/PTA",
    "adapgc": "XuJinglinn/AdaPGC", "dasp": "he4cs/DASP",
}  # fmt: skip
SUMI_ITERS = 4  # stream length of SuMi's schedule (steps t = 0, 1, ... of it), as its goldens

BENCHES = {
    **{name: Bench("brimpr", "official_brimpr", official={"method": name}) for name in OFFICIAL_BRIMPR},
    "abpem": Bench("abpem", "official_abpem", head_scale=5.0),
    "sumi": Bench("sumi", "official_sumi", head_scale=5.0, ours={"iters": SUMI_ITERS}, official={"iters": SUMI_ITERS}),
    "pta": Bench("pta", "official_pta", official={"loss": "paper"}, skip_key_bias=True, spread=True),
    "adapgc": Bench("adapgc", "official_adapgc", head_scale=5.0, skip_key_bias=True),
    "tsa": Bench("dasp", "official_tsa"),
    "dasp": Bench("dasp", "official_dasp"),
    "audio_assist": Bench(None, None),
}


class ForwardCounter:
    """Counts runs of the video stack (its first block) and of the classifier (``mlp_head``) of CAV-MAE models.

    A run of the video stack stands for one pass through the modality encoders (a masked copy counts as a pass); a
    classifier run for one pass through the fusion block and head (features used without the head, as T3A's or
    BriMPR's unimodal representations, are not counted). Only calls inside the timed steps count.

    Hooks are put on the model instances the two sides run (copies made later, such as an EMA model, inherit them),
    so the count is what the code does, not what it is said to do. An official model is hooked when it is wrapped in
    ``nn.DataParallel`` (every runner wraps it, as the official code expects).
    """

    def __init__(self, step: Callable[[], int | None]) -> None:
        self.step = step
        self.counts: dict[str, dict[int, int]] = {"encoder": {}, "head": {}}

    def _count(self, kind: str) -> Callable:
        def hook(module: torch.nn.Module, inputs: tuple, output: object) -> None:
            step = self.step()
            if step is not None:
                self.counts[kind][step] = self.counts[kind].get(step, 0) + 1

        return hook

    def attach(self, model: torch.nn.Module) -> torch.nn.Module:
        """Hook the CAV-MAE inside ``model`` (itself, or the model a wrapper such as BriMPR's ``PromptVA`` holds)."""
        for module in model.modules():
            if hasattr(module, "blocks_v") and hasattr(module, "mlp_head"):
                if not getattr(module, "_bench_counted", False):
                    module.blocks_v[0].register_forward_hook(self._count("encoder"))
                    module.mlp_head.register_forward_hook(self._count("head"))
                    module._bench_counted = True
                break
        return model

    @contextlib.contextmanager
    def official(self) -> Iterator[None]:
        """Hook every model the official side wraps in ``nn.DataParallel`` inside this block."""
        plain, counter = torch.nn.DataParallel, self

        class Counted(plain):  # type: ignore[misc, valid-type]
            def __init__(self, module: torch.nn.Module, *args, **kwargs) -> None:
                counter.attach(module)
                super().__init__(module, *args, **kwargs)

        torch.nn.DataParallel = Counted
        try:
            yield
        finally:
            torch.nn.DataParallel = plain

    def per_step(self, steps: int) -> dict[str, list[int]]:
        """Runs of the video stack and of the classifier in each step."""
        return {kind: [counts.get(step, 0) for step in range(steps)] for kind, counts in self.counts.items()}


def forwards_text(forwards: dict[str, list[int]]) -> str:
    """``encoder/classifier`` runs per step: one figure when every step did the same, else the mean (``~``)."""
    parts = []
    for runs in forwards.values():
        parts.append(f"{runs[0]}" if len(set(runs)) == 1 else f"~{sum(runs) / len(runs):.1f}")
    return "/".join(parts)


def run_ours(
    name: str, model: torch.nn.Module, batches: list, source: tuple, config: dict, initial: dict | None = None
) -> dict:
    """Our ``name`` on ``batches`` (``initial``: values for trained tensors that the official constructor drew)."""
    stepping: list[int | None] = [None]
    counter = ForwardCounter(lambda: stepping[0])
    counter.attach(model)
    if adapt.get_method_class(name).source_data:
        config = {adapt.get_method_class(name).source_data.size_field: source[0].shape[0], **config}
    method = adapt.create_method(
        name, model, source=[source] if adapt.get_method_class(name).source_data else None, **config
    )
    if initial:
        with torch.no_grad():
            for param_name, p in method.named_params:
                if param_name in initial:
                    p.copy_(initial[param_name])
    start = method.trainable_state()
    times, cpu, logits = [], [], []
    for step, (audio, video) in enumerate(batches):
        method.reseed(100 + step)
        stepping[0] = step  # the source statistics computed above are not counted
        t0, c0 = time.perf_counter(), time.process_time()
        logits.append(method.step(audio, video))
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        stepping[0] = None
    params = method.trainable_state()
    moved = max((float((params[n] - start[n]).abs().max()) for n in params), default=0.0)
    return {
        "times": times,
        "cpu": cpu,
        "logits": logits,
        "params": params,
        "moved": moved,
        "forwards": counter.per_step(len(batches)),
    }


def run_official(
    name: str, bench: Bench, official_dir: Path, model: torch.nn.Module, batches: list, extra: dict
) -> dict:
    """The official ``name`` through its runner, with the forwards counted."""
    runner = importlib.import_module(bench.runner)
    counter = ForwardCounter(in_step)
    with counter.official():
        ref = runner.run_official(official_dir, model, batches, **bench.official, **extra)
    ref["forwards"] = counter.per_step(len(batches))
    ref["cpu"] = cpu_times()
    return ref


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def _median(values: list[float]) -> float:
    return statistics.median(values)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=int, default=32, help="embed_dim (768 = released width)")
    parser.add_argument("--heads", type=int, default=2, help="attention heads (12 at the released width)")
    parser.add_argument("--batch", type=int, default=6)
    parser.add_argument("--steps", type=int, default=3, help="online steps per method (timed individually)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", nargs="+", default=adapt.list_methods(), help="registered method names")
    parser.add_argument(
        "--head-scale", type=float, help="classifier factor for every method (default per method: x30, x5 where the "
        "official code needs it; use ~3 at width 768, where x30 saturates the softmax)",
    )  # fmt: skip
    parser.add_argument("--plpd-threshold", type=float, default=0.2, help="DeYO's PLPD threshold (both sides)")
    parser.add_argument(
        "--official", action="append", default=[], metavar="REPO=DIR",
        help="a checkout of an official repository, outside this one (REPO: "
        + ", ".join(f"{k} = {v}" for k, v in REPOS.items()) + ")",
    )  # fmt: skip
    parser.add_argument(
        "--cpu-gemm", nargs="+", choices=("onednn", "aten"), default=[get_cpu_gemm()],
        help="back-end(s) of our blocks' fp32 CPU products (avtta.models.gemm), ours run once per back-end; the "
        "first is compared with the official code, the others add a column (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    checkouts = {}
    for item in args.official:
        key, sep, path = item.partition("=")
        if not sep or key not in REPOS:
            parser.error(f"--official {item!r}: expected REPO=DIR with REPO one of {', '.join(REPOS)}")
        checkouts[key] = Path(path).resolve()
    unknown = [m for m in args.methods if m not in adapt.list_methods()]
    if unknown:
        parser.error(f"--methods: {unknown} not registered ({', '.join(adapt.list_methods())})")

    torch.set_num_threads(args.threads)
    # the official code's CUDA autocast / GradScaler warn on every step on a CPU-only machine; timm's old import path
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*CUDA is not available.*")
    batches = [make_inputs(args.batch, seed) for seed in range(1, args.steps + 1)]
    source = make_inputs(args.batch, 0)
    results = {
        "config": vars(args),
        "machine": {
            "platform": platform.platform(),
            "processor": _cpu_name(),
            "torch": torch.__version__,
            "cpu_count": os.cpu_count(),
            "load_average_start": os.getloadavg(),
        },
        "methods": {},
    }
    print(
        f"{'method':12s} {'ours s/step':>11s} {'fwd/step':>8s} {'max update':>10s} {'official s/step':>15s} "
        f"{'fwd/step':>8s} {'speed-up':>8s} {'cpu':>8s} {'logits rel':>10s} {'params rel':>10s} {'values off':>17s}"
        + "".join(f" {'ours ' + b + ' s':>14s} {'speed-up':>8s}" for b in args.cpu_gemm[1:])
        + f" {'load':>5s}",
        flush=True,
    )
    for name in args.methods:
        bench = BENCHES.get(name, Bench(None, None))
        base = make_model(args.width, args.heads, args.head_scale or bench.head_scale)
        if bench.spread:
            from official_pta import spread_head

            spread_head(base, batches, 3.0)
        ours_config = dict(bench.ours)
        extra = {}
        if name == "deyo":
            ours_config["plpd_threshold"] = extra["plpd"] = args.plpd_threshold
        if bench.repo == "brimpr":
            extra["source"] = source
        if name == "dasp":
            ours_config["rank"] = extra["rank"] = min(32, args.width)
        ref = None
        if bench.repo in checkouts:
            ref = run_official(name, bench, checkouts[bench.repo], copy.deepcopy(base), batches, extra)
        initial = ref.get("initial") if ref else None
        with cpu_gemm(args.cpu_gemm[0]):
            ours = run_ours(name, copy.deepcopy(base), batches, source, ours_config, initial)
        others = {}
        for backend in args.cpu_gemm[1:]:
            with cpu_gemm(backend):
                others[backend] = run_ours(name, copy.deepcopy(base), batches, source, ours_config, initial)
        row: dict = {
            "ours_s": ours["times"],
            "ours_cpu_s": ours["cpu"],
            "ours_forwards": ours["forwards"],
            "max_update": ours["moved"],
        }
        line = f"{name:12s} {_median(ours['times']):11.3f} {forwards_text(ours['forwards']):>8s} {ours['moved']:10.2e}"
        if ref is not None:
            row.update(official_s=ref["times"], official_cpu_s=ref["cpu"], official_forwards=ref["forwards"])
            row.update(compare(ours, ref, skip_key_bias=bench.skip_key_bias))
            speed = _median(ref["times"]) / _median(ours["times"])
            row["cpu_speed_up"] = _median(ref["cpu"]) / _median(ours["cpu"])
            line += f" {_median(ref['times']):15.3f} {forwards_text(ref['forwards']):>8s} {speed:7.2f}x"
            line += f" {row['cpu_speed_up']:7.2f}x"
            line += f" {row['logits_rel']:10.2e}"
            if "params_rel" in row:
                line += f" {row['params_rel']:10.2e} {row['params_off']:>8d}/{row['params_total']:<8d}"
        for backend, other in others.items():
            row[f"ours_s_{backend}"] = other["times"]
            row[f"ours_cpu_s_{backend}"] = other["cpu"]
            line += f" {_median(other['times']):14.3f}"
            line += f" {_median(ref['times']) / _median(other['times']):7.2f}x" if ref is not None else f" {'':8s}"
        row["load_average_end"] = os.getloadavg()
        line += f" {row['load_average_end'][0]:5.1f}"
        results["methods"][name] = row
        print(line, flush=True)
        if args.json:  # after every method: a long width-768 run keeps what it measured
            args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
