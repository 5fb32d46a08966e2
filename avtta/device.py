"""Device selection shared by training and adaptation."""

from __future__ import annotations

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when present, else CPU; on CUDA choose deterministic cuDNN kernels.

    The references set ``cudnn.deterministic = True`` and ``cudnn.benchmark = True`` at once (spec item 4); we choose
    determinism.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"--device {name!r}: {err}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name!r}: CUDA is not available on this machine")
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    return device
