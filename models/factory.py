"""``create_model``: build a registered variant, optionally from a checkpoint (released ``.pth`` or ours)."""

from __future__ import annotations

import logging
from pathlib import Path

from .cav_mae import CAVMAEFT  # importing cav_mae registers the variants
from .checkpoint import (
    checkpoint_filter_fn,
    load_checkpoint,
    load_released_state_dict,
    read_checkpoint_config,
    resolve_checkpoint_path,
)
from .registry import model_entrypoint

__all__ = ["create_model"]

_log = logging.getLogger(__name__)
_HEAD_WEIGHT = "mlp_head.1.weight"


def create_model(
    name: str, num_classes: int | None = None, checkpoint: str | Path | None = None, **overrides
) -> CAVMAEFT:
    """Build the registered model ``name``.

    Args:
        name: a name from :func:`list_models`.
        num_classes: classifier outputs; ``None`` means the checkpoint's (if any), else 50.
        checkpoint: a released CAV-MAE ``.pth`` (strict load after :func:`checkpoint_filter_fn`), one of our
            ``.safetensors`` checkpoints (architecture taken from its JSON config), or a directory holding
            ``model.safetensors``.
        **overrides: architecture arguments of :class:`CAVMAEFT` (``audio_length``, ``img_size``, ``embed_dim``,
            ``depth``, ``num_heads``, ...). With one of our checkpoints they must agree with its config.
    """
    entry = model_entrypoint(name)
    if checkpoint is None:
        return entry(num_classes=50 if num_classes is None else num_classes, **overrides)
    path = resolve_checkpoint_path(checkpoint)
    if path.suffix == ".safetensors":
        config = read_checkpoint_config(path)
        arch = dict(config["arch"])
        if config.get("model") not in (None, name):
            raise ValueError(f"{path} holds a {config['model']!r} model, not {name!r}")
        requested = dict(overrides)
        if num_classes is not None:
            requested["num_classes"] = num_classes
        conflicts = {
            key: (value, arch.get(key))
            for key, value in requested.items()
            if key != "init_seed" and arch.get(key) != value
        }
        if conflicts:
            listed = ", ".join(f"{key}={want!r} (checkpoint: {have!r})" for key, (want, have) in conflicts.items())
            raise ValueError(f"{path}: requested architecture differs from the checkpoint's config: {listed}")
        model = entry(**arch)
        load_checkpoint(model, path)
    else:
        state = load_released_state_dict(path)
        if num_classes is None:
            head = state.get(_HEAD_WEIGHT, state.get("module." + _HEAD_WEIGHT))
            num_classes = int(head.shape[0]) if head is not None and head.dim() == 2 else 50
        model = entry(num_classes=num_classes, **overrides)
        model.load_state_dict(checkpoint_filter_fn(state, model, source=str(path)), strict=True)
    _log.info("loaded %s (%d classes) from %s", name, model.num_classes, path)
    return model
