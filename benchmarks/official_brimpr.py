"""The official side of the eight BriMPR-repository methods (source, T3A, Tent, EATA, SAR, DeYO, READ, BriMPR).

Official side: a checkout of Luchicken/BriMPR outside this repository, e.g. ``mkdir -p /tmp/official/BriMPR && git
--git-dir=/work/.mirror/Luchicken+BriMPR/repo archive HEAD TTA models dataloader.py utilities | tar -x -C
/tmp/official/BriMPR``. Its CAVMAEFT gets our weights (wrapped in ``nn.DataParallel``, which on a CPU-only machine
calls the module directly), its ``setup_*`` functions build the methods from the reference CLI defaults, its source
loaders are replaced by the same source batch, ``Tensor.cuda`` is a no-op (T3A calls it), and if ``einops`` is not
installed a two-pattern stand-in is registered (DeYO uses ``rearrange`` only). It runs in a temporary working
directory (the official code writes its Fisher / source-statistics caches to ``./ckpt``). BriMPR's prompts come from
the official initialisation and are returned as ``"initial"``.

Driven by ``bench_methods.py --official brimpr=DIR``, or ``official_brimpr.py DIR [bench_methods.py's options]`` for
the eight alone.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from official_common import load_weights, official_imports, timed_steps  # noqa: E402

__all__ = ["METHODS", "run_official"]

METHODS = ("source", "t3a", "tent", "eata", "sar", "deyo", "read", "brimpr")


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
    official_dir: Path, model: torch.nn.Module, batches: list, *, method: str, source: tuple, plpd: float = 0.2
) -> dict:
    """Run the official ``method`` (one of ``METHODS``) on ``batches`` from ``model``'s weights."""
    if method not in METHODS:
        raise ValueError(f"{method!r}: not a method of the BriMPR repository ({', '.join(METHODS)})")
    _einops_stand_in()
    with official_imports(official_dir, ("TTA", "models", "dataloader", "utilities")):
        from TTA import EATA, BriMPR, setup_model  # type: ignore[import-not-found]

        from models.cav_mae import CAVMAEFT  # type: ignore[import-not-found]

        net = load_weights(CAVMAEFT, model, aliases=(".attn.q.", ".attn.k.", ".attn.v."))
        wrapped = torch.nn.DataParallel(net)
        labels = torch.zeros(source[0].shape[0], model.num_classes)
        loader = [(source[0], source[1], labels)]
        EATA.get_source_loader = lambda args, fisher_size=2000: loader
        BriMPR.get_source_loader = lambda args, num_samples=32: loader
        saved_cuda = torch.Tensor.cuda
        torch.Tensor.cuda = lambda self, *a, **k: self  # T3A moves an index list to CUDA
        args = official_args(model.num_classes, source[0].shape[0], plpd)
        cwd = os.getcwd()
        with tempfile.TemporaryDirectory() as scratch:
            os.chdir(scratch)  # the official code caches ./ckpt/fisher/*.pkl and ./ckpt/src_stat_*/*.pth
            try:
                torch.manual_seed(0)
                with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):  # BriMPR's tqdm bar
                    adapter = getattr(setup_model, f"setup_{method}")(wrapped, torch.device("cpu"), args)
                initial = None
                if method == "brimpr":
                    pva = adapter.pva_model.module
                    initial = {"prompts_a": pva.prompts_a.detach().clone(), "prompts_v": pva.prompts_v.detach().clone()}
                times, logits = timed_steps(lambda batch: adapter(batch, True)[0], batches)
            finally:
                os.chdir(cwd)
                torch.Tensor.cuda = saved_cuda
    if method == "brimpr":
        pva = adapter.pva_model.module
        params = {"prompts_a": pva.prompts_a.detach().clone(), "prompts_v": pva.prompts_v.detach().clone()}
    else:
        params = {k: v.detach().clone() for k, v in net.named_parameters()}
    return {"times": times, "logits": logits, "params": params, "initial": initial}


if __name__ == "__main__":  # bench_methods.py for this runner's methods (official_common.cli)
    from official_common import cli

    cli("brimpr", METHODS)
