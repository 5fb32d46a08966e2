"""Helpers for parity tests and benchmarks of the methods against the official golden runs (``../shared/golden``).

The golden runs use a narrow model of the released CAV-MAE architecture (width 32, 2 heads, 11 + 11 + 1 blocks, 50
classes) and three batches of 6 clips stored as float16 (``inputs.npz``); the newer methods' runs are in
``golden/more/<name>.npz``. The tests of every method and the official-side benchmark runners share these helpers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["GOLDEN_ARCH", "golden_batches", "load_npz", "narrow_model", "relative_error", "smooth_batch"]

# the narrow model of golden/config.json
GOLDEN_ARCH = {"num_classes": 50, "embed_dim": 32, "num_heads": 2}


def golden_batches(golden: str | Path) -> dict[str, tuple[Tensor, Tensor]]:
    """``{"test1", "test2", "source"}`` -> ``(audio, video)`` float32 (stored as float16; the official runs cast
    them to float32 too)."""
    inputs = np.load(Path(golden) / "inputs.npz")
    return {
        prefix: tuple(torch.from_numpy(inputs[f"{prefix}_{m}"].astype(np.float32)) for m in ("audio", "video"))
        for prefix in ("test1", "test2", "source")
    }


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file (``allow_pickle`` stays off: the goldens hold plain arrays only)."""
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def narrow_model(weights: str | Path | None = None, *, head_scale: float | None = None, **overrides) -> nn.Module:
    """The golden narrow model, with the released-layout ``weights`` (``None``: random initialisation).

    ``head_scale`` multiplies the classifier weight, as the golden files did (x30, or x5 for the newer methods) so that
    the predictions are confident enough for the methods' entropy filters.
    """
    from avtta.models import create_model

    model = create_model("cav_mae_ft_base", **{**GOLDEN_ARCH, **overrides}, checkpoint=weights)
    if head_scale is not None:
        with torch.no_grad():
            model.get_classifier().weight.mul_(head_scale)
    return model


def relative_error(ours: Tensor, ref: np.ndarray | Tensor) -> float:
    """``max |ours - ref| / max |ref|``: the golden README's metric (1e-4 relative to the scale of what is compared)."""
    ref_t = torch.as_tensor(np.asarray(ref)).float()
    return float((ours.detach().float().cpu() - ref_t).abs().max() / ref_t.abs().max())


def smooth_batch(seed: int, n: int) -> tuple[Tensor, Tensor]:
    """A batch of smooth random fields (coarse noise upsampled, like the golden inputs), so that patch shuffling and
    masking change the content: ``audio [n, 1024, 128]``, ``video [n, 3, 224, 224]``."""
    gen = torch.Generator().manual_seed(seed)
    audio = torch.nn.functional.interpolate(torch.randn(n, 1, 16, 8, generator=gen), size=(1024, 128), mode="bilinear")
    video = torch.nn.functional.interpolate(torch.randn(n, 3, 14, 14, generator=gen), size=(224, 224), mode="bilinear")
    return audio[:, 0], video
