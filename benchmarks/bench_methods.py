"""Time per online step of every TTA method (``avtta.adapt``) on one model and batch, optionally side by side with
the official implementations, and report how closely they agree.

Our side: ``create_model("cav_mae_ft_base", embed_dim=W, num_heads=H)`` with a seeded random initialisation and the
classifier weight x30 (``--head-scale``; confident predictions, as in ../shared/golden; at width 768 use ~3, as
x30 saturates the softmax and the entropy gradients vanish), smooth random inputs, the methods' default
settings; the method generator is reseeded ``100 + step`` before each step.

Official side (``--official DIR``, a checkout of Luchicken/BriMPR outside this repository, e.g. extracted from the
mirror with ``git --git-dir=/work/.mirror/Luchicken+BriMPR/repo archive HEAD TTA models dataloader.py utilities``):
its CAVMAEFT gets the same weights (wrapped in ``nn.DataParallel``, which on a CPU-only machine calls the module
directly), its ``setup_*`` functions build the methods, ``torch.manual_seed(100 + step)`` precedes each step, its
source loaders are replaced by the same source batch, ``Tensor.cuda`` is a no-op (T3A calls it), and if ``einops``
is not installed a two-pattern stand-in is registered (DeYO uses ``rearrange`` only). It runs in a temporary working
directory (the official code writes its Fisher / source-statistics caches to ``./ckpt``). BriMPR's prompts are copied
from the official initialisation. Parity columns: max |ours - official| of the scored logits over all steps relative
to max |official|, and of the trained parameters after the last step relative to their scale.

Examples::

    .venv/bin/python benchmarks/bench_methods.py                      # width 32, ours only
    .venv/bin/python benchmarks/bench_methods.py --official /tmp/official/BriMPR --width 768 --heads 12 --batch 4
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import torch
from avtta.models import create_model

from avtta import adapt

OFFICIAL_SETUP = {
    "source": "setup_source",
    "t3a": "setup_t3a",
    "tent": "setup_tent",
    "eata": "setup_eata",
    "sar": "setup_sar",
    "deyo": "setup_deyo",
    "read": "setup_read",
    "brimpr": "setup_brimpr",
}


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


def _trained(method: adapt.TTAMethod) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in method.named_params}


def run_ours(
    name: str, model: torch.nn.Module, batches: list, source: tuple, prompts: dict | None = None, plpd: float = 0.2
) -> dict:
    config: dict = {"eata": {"fisher_size": source[0].shape[0]}, "deyo": {"plpd_threshold": plpd}}.get(name, {})
    if name == "brimpr":
        config = {"num_samples_source": source[0].shape[0]}
    method = adapt.create_method(
        name, model, source=[source] if adapt.get_method_class(name).source_data else None, **config
    )
    if prompts is not None:
        with torch.no_grad():
            method.prompts_a.copy_(prompts["a"])
            method.prompts_v.copy_(prompts["v"])
    initial = _trained(method)
    times, logits = [], []
    for step, (audio, video) in enumerate(batches):
        method.reseed(100 + step)
        t0 = time.perf_counter()
        logits.append(method.step(audio, video))
        times.append(time.perf_counter() - t0)
    params = _trained(method)
    moved = max((float((params[n] - initial[n]).abs().max()) for n in params), default=0.0)
    return {"times": times, "logits": logits, "params": params, "moved": moved}


# ---------------------------------------------------------------------------------------------- official side
def _einops_stand_in() -> None:
    """DeYO needs ``einops.rearrange`` for two fixed patterns; register an equivalent if einops is absent."""
    try:
        import einops  # noqa: F401

        return
    except ImportError:
        pass

    def rearrange(x: torch.Tensor, pattern: str, ps1: int, ps2: int) -> torch.Tensor:
        if pattern == "b c (ps1 h) (ps2 w) -> b (ps1 ps2) c h w":
            b, c, height, width = x.shape
            h, w = height // ps1, width // ps2
            return x.reshape(b, c, ps1, h, ps2, w).permute(0, 2, 4, 1, 3, 5).reshape(b, ps1 * ps2, c, h, w)
        if pattern == "b (ps1 ps2) c h w -> b c (ps1 h) (ps2 w)":
            b, _, c, h, w = x.shape
            return x.reshape(b, ps1, ps2, c, h, w).permute(0, 3, 1, 4, 2, 5).reshape(b, c, ps1 * h, ps2 * w)
        raise NotImplementedError(pattern)

    sys.modules["einops"] = types.SimpleNamespace(rearrange=rearrange)


def official_args(num_classes: int, source_size: int, plpd: float = 0.2) -> types.SimpleNamespace:
    """The reference CLI defaults (BriMPR ``run.py``) that the methods read."""
    return types.SimpleNamespace(
        n_class=num_classes, testmode="multimodal", dataset="bench", batch_size=64, num_workers=0,
        filter_K=20, fisher_size=source_size, fisher_alpha=1.0, d_margin=0.1,
        patch_len=4, aug_type="patch", deyo_margin=0.5, deyo_margin_e0=0.4, plpd_threshold=plpd,
        num_prompts_a=10, num_prompts_v=10, prompt_layers=11, mask=0.5, a=0.2, b=5.0, tau=0.07,
        num_samples_source=source_size,
    )  # fmt: skip


def run_official(
    name: str, official: Path, ours_model: torch.nn.Module, batches: list, source: tuple, heads: int, plpd: float = 0.2
) -> dict:
    _einops_stand_in()
    if str(official) not in sys.path:
        sys.path.insert(0, str(official))
    from TTA import EATA, BriMPR, setup_model  # type: ignore[import-not-found]

    from models.cav_mae import CAVMAEFT as OfficialCAVMAEFT  # type: ignore[import-not-found]

    width = ours_model.embed_dim
    with contextlib.redirect_stdout(open(os.devnull, "w")):
        model = OfficialCAVMAEFT(label_dim=ours_model.num_classes, embed_dim=width, num_heads=heads)
    missing, unexpected = model.load_state_dict(ours_model.state_dict(), strict=False)
    assert not unexpected and all(".attn.q." in k or ".attn.k." in k or ".attn.v." in k for k in missing), missing
    model = torch.nn.DataParallel(model)
    labels = torch.zeros(source[0].shape[0], ours_model.num_classes)
    loader = [(source[0], source[1], labels)]
    EATA.get_source_loader = lambda args, fisher_size=2000: loader
    BriMPR.get_source_loader = lambda args, num_samples=32: loader
    torch.Tensor.cuda = lambda self, *a, **k: self  # T3A moves an index list to CUDA
    args = official_args(ours_model.num_classes, source[0].shape[0], plpd)
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as scratch:
        os.chdir(scratch)  # the official code caches ./ckpt/fisher/*.pkl and ./ckpt/src_stat_*/*.pth
        try:
            torch.manual_seed(0)
            with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):  # BriMPR's tqdm bar
                method = getattr(setup_model, OFFICIAL_SETUP[name])(model, torch.device("cpu"), args)
            prompts = None
            if name == "brimpr":
                pva = method.pva_model.module
                prompts = {"a": pva.prompts_a.detach().clone(), "v": pva.prompts_v.detach().clone()}
            times, logits = [], []
            for step, (audio, video) in enumerate(batches):
                torch.manual_seed(100 + step)
                t0 = time.perf_counter()
                with torch.no_grad():
                    out = method((audio, video), True)[0]
                times.append(time.perf_counter() - t0)
                logits.append(out.detach().float())
        finally:
            os.chdir(cwd)
    if name == "brimpr":
        pva = method.pva_model.module
        params = {"prompts_a": pva.prompts_a.detach().clone(), "prompts_v": pva.prompts_v.detach().clone()}
    else:
        params = {k: v.detach().clone() for k, v in model.module.named_parameters()}
    return {"times": times, "logits": logits, "params": params, "prompts": prompts}


def parity(ours: dict, ref: dict) -> dict:
    logit_scale = max(float(r.abs().max()) for r in ref["logits"])
    logit_err = max(float((o - r).abs().max()) for o, r in zip(ours["logits"], ref["logits"], strict=True))
    out = {"logits_rel": logit_err / logit_scale}
    names = list(ours["params"])
    if names:
        scale = max(float(ref["params"][n].abs().max()) for n in names)
        diffs = [(ours["params"][n] - ref["params"][n]).abs().flatten() for n in names]
        out["params_rel"] = max(float(d.max()) for d in diffs) / scale
        # Adam's first steps are sign-like (+-lr): an element whose gradient is ~0 (float noise) can step the other
        # way in either implementation, so also count how many values are off by more than 1e-4 of the scale.
        out["params_off"] = sum(int((d > 1e-4 * scale).sum()) for d in diffs)
        out["params_total"] = sum(d.numel() for d in diffs)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=int, default=32, help="embed_dim (768 = released width)")
    parser.add_argument("--heads", type=int, default=2, help="attention heads (12 at the released width)")
    parser.add_argument("--batch", type=int, default=6)
    parser.add_argument("--steps", type=int, default=3, help="online steps per method (timed individually)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", nargs="+", default=adapt.list_methods())
    parser.add_argument(
        "--head-scale", type=float, default=30.0, help="classifier weight factor (30 at width 32, ~3 at 768)"
    )
    parser.add_argument("--plpd-threshold", type=float, default=0.2, help="DeYO's PLPD threshold (both sides)")
    parser.add_argument("--official", type=Path, help="checkout of Luchicken/BriMPR to compare against")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    batches = [make_inputs(args.batch, seed) for seed in range(1, args.steps + 1)]
    source = make_inputs(args.batch, 0)
    base = make_model(args.width, args.heads, args.head_scale)
    results = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "cpu_count": os.cpu_count()},
        "methods": {},
    }
    header = f"{'method':8s} {'ours s/step':>12s} {'max update':>11s}"
    if args.official:
        header += (
            f" {'official s/step':>16s} {'speed-up':>9s} {'logits rel':>11s} {'params rel':>11s} {'values off':>16s}"
        )
    print(header, flush=True)
    for name in args.methods:
        row: dict = {}
        ref = None
        if args.official:
            ref = run_official(name, args.official.resolve(), base, batches, source, args.heads, args.plpd_threshold)
            row["official_s"] = ref["times"]
        ours = run_ours(
            name, copy.deepcopy(base), batches, source, ref["prompts"] if ref else None, args.plpd_threshold
        )
        row["ours_s"] = ours["times"]
        row["max_update"] = ours["moved"]
        line = f"{name:8s} {statistics.median(ours['times']):12.3f} {ours['moved']:11.2e}"
        if ref is not None:
            row.update(parity(ours, ref))
            speed = statistics.median(ref["times"]) / statistics.median(ours["times"])
            line += f" {statistics.median(ref['times']):16.3f} {speed:9.2f} {row['logits_rel']:11.2e}"
            line += f" {row.get('params_rel', float('nan')):11.2e}"
            if "params_off" in row:
                line += f" {row['params_off']:>7d}/{row['params_total']:<8d}"
        results["methods"][name] = row
        print(line, flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
