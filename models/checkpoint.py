"""Checkpoints: the released CAV-MAE ``.pth`` files and avtta's own safetensors + JSON pair.

Released checkpoints (``cav_mae_ks50.pth``, ``vgg_65.5.pth``; spec model-cav-mae.md section 7) are plain state
dicts saved from ``nn.DataParallel`` (every key starts with ``module.``). They are read with
``torch.load(weights_only=True)``, so nothing but tensors and plain containers is ever unpickled, converted by
:func:`checkpoint_filter_fn` and loaded strictly.

READ/BriMPR models additionally own ``blocks_u.0.attn.{q,k,v}.{weight,bias}`` (copies of the fusion block's
``qkv`` rows, spec item 6). Such keys are **dropped**: ``qkv`` is authoritative, because once used the copies are
views of ``qkv`` (identical values) and before first use they are untouched random values. A warning is logged when
they disagree with ``qkv``.

Our own checkpoints: ``<name>.safetensors`` (weights) plus ``<name>.json`` (model name and every constructor
argument); the same JSON is also stored in the safetensors metadata under ``"avtta_config"``.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

__all__ = [
    "AUXILIARY_PREFIXES",
    "CONFIG_FORMAT",
    "checkpoint_filter_fn",
    "load_checkpoint",
    "load_released_state_dict",
    "read_checkpoint_config",
    "resolve_checkpoint_path",
    "save_checkpoint",
]

_log = logging.getLogger(__name__)

CONFIG_FORMAT = "avtta.cav_mae_ft"
CONFIG_VERSION = 1
_RELEASED_SUFFIXES = (".pth", ".pt", ".bin")
_QKV_COPIES = ("q", "k", "v")
_MAX_LISTED = 12
# Training-only tensors stored beside the model's own (the structure-preserving anchors, models/structure.py):
# written by `avtta train --structure-loss`, ignored whenever a model is loaded (adaptation included).
AUXILIARY_PREFIXES = ("structure.",)


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (f", ... ({len(names)} in all)" if len(names) > _MAX_LISTED else "")


def checkpoint_filter_fn(
    state_dict: Mapping[str, Tensor], model: nn.Module, source: str = "state dict"
) -> dict[str, Tensor]:
    """Convert a released-layout (or READ/BriMPR) state dict into ``model``'s exact keys, strictly checked.

    Strips the ``module.`` prefix, drops the fusion block's ``attn.{q,k,v}`` copies (see module docstring) and the
    training-only tensors (:data:`AUXILIARY_PREFIXES`), and raises ``ValueError`` naming ``source`` and every
    unknown key, missing key and wrong shape.
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"{source}: expected a state dict (mapping of name -> tensor), got {type(state_dict).__name__}")
    if len(state_dict) == 1 and next(iter(state_dict)) in ("state_dict", "model"):
        state_dict = next(iter(state_dict.values()))  # a wrapped state dict
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if not isinstance(value, Tensor):
            raise TypeError(f"{source}: entry {key!r} is a {type(value).__name__}, not a tensor")
        name = key[len("module.") :] if key.startswith("module.") else key
        if name.startswith(AUXILIARY_PREFIXES):
            _log.debug("%s: ignored training-only tensor %s", source, name)
            continue
        if name in out:
            raise ValueError(f"{source}: key {name!r} occurs both with and without the 'module.' prefix")
        out[name] = value

    # READ/BriMPR q/k/v copies of the fusion block(s): qkv is authoritative.
    for name in [n for n in out if n.startswith("blocks_u.")]:
        parts = name.split(".")
        if len(parts) != 5 or parts[2] != "attn" or parts[3] not in _QKV_COPIES:
            continue
        value = out.pop(name)
        fused = out.get(".".join([*parts[:3], "qkv", parts[4]]))
        if fused is None:
            continue  # the missing qkv is reported below
        rows = fused.shape[0] // 3
        index = _QKV_COPIES.index(parts[3])
        if value.shape != fused[index * rows : (index + 1) * rows].shape or not torch.equal(
            value, fused[index * rows : (index + 1) * rows]
        ):
            _log.warning("%s: %s differs from its rows of qkv; ignored (qkv is authoritative)", source, name)
        else:
            _log.debug("%s: dropped %s (identical copy of qkv rows)", source, name)

    expected = model.state_dict()
    unknown = [name for name in out if name not in expected]
    missing = [name for name in expected if name not in out]
    wrong = [
        f"{name} {tuple(out[name].shape)} (model expects {tuple(expected[name].shape)})"
        for name in expected
        if name in out and out[name].shape != expected[name].shape
    ]
    problems = []
    if unknown:
        problems.append(f"unknown keys: {_listing(unknown)}")
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if wrong:
        problems.append(f"wrong shapes: {_listing(wrong)}")
    if problems:
        raise ValueError(f"{source} does not fit {type(model).__name__}: " + "; ".join(problems))
    return {name: out[name] for name in expected}


def load_released_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a released ``.pth`` state dict on the CPU; only tensors and plain containers are unpickled."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        raise ValueError(f"{path}: not a readable tensor state dict ({type(err).__name__}: {err})") from err
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: expected a state dict, found {type(state).__name__}")
    return dict(state)


def resolve_checkpoint_path(path: str | Path) -> Path:
    """A checkpoint file, or ``model.safetensors`` inside a directory (e.g. a training output folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix != ".safetensors" and path.suffix not in _RELEASED_SUFFIXES:
        raise ValueError(f"{path}: unknown checkpoint type (expected .safetensors or {', '.join(_RELEASED_SUFFIXES)})")
    return path


def _config_of(model: nn.Module) -> dict:
    arch = getattr(model, "arch_config", None)
    if not isinstance(arch, dict):
        raise TypeError(f"save_checkpoint: {type(model).__name__} has no arch_config (not a CAVMAEFT?)")
    return {
        "format": CONFIG_FORMAT,
        "format_version": CONFIG_VERSION,
        "model": getattr(model, "variant", None),
        "arch": dict(arch),
    }


def save_checkpoint(
    model: nn.Module,
    path: str | Path,
    metadata: Mapping[str, str] | None = None,
    extra_tensors: Mapping[str, Tensor] | None = None,
    training: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``path`` (``.safetensors``, or ``model.safetensors`` in a directory) and its ``.json`` config.

    Args:
        model: a :class:`~avtta.models.CAVMAEFT`.
        path: target file or existing directory.
        metadata: extra string metadata stored in the safetensors header.
        extra_tensors: training-only tensors stored beside the model's (names must start with one of
            :data:`AUXILIARY_PREFIXES`; loaders ignore them).
        training: how the model was trained (JSON-ready), recorded as the config's ``"training"`` entry.

    Returns:
        The safetensors path written.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    if path.suffix != ".safetensors":
        raise ValueError(f"save_checkpoint: {path} must end in .safetensors")
    config = _config_of(model)
    if training is not None:
        config["training"] = dict(training)
    tensors = {name: value.detach().to("cpu").contiguous() for name, value in model.state_dict().items()}
    for name, value in (extra_tensors or {}).items():
        if not name.startswith(AUXILIARY_PREFIXES) or name in tensors:
            raise ValueError(f"save_checkpoint: extra tensor {name!r} must start with one of {AUXILIARY_PREFIXES}")
        tensors[name] = value.detach().to("cpu").contiguous()
    header = {**(metadata or {}), "avtta_config": json.dumps(config, sort_keys=True)}
    # Written to temporary names and renamed into place, so an interrupted save never leaves a half-written
    # checkpoint (the model package imports no data package, hence not avtta.shards.io, which does the same).
    path.parent.mkdir(parents=True, exist_ok=True)
    text = (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()
    for final, write in ((path, lambda tmp: save_file(tensors, str(tmp), metadata=header)),
                         (path.with_suffix(".json"), lambda tmp: tmp.write_bytes(text))):  # fmt: skip
        tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    return path


def read_checkpoint_config(path: str | Path) -> dict:
    """The JSON config of one of our checkpoints (the ``.json`` beside it, else the safetensors metadata)."""
    path = resolve_checkpoint_path(path)
    config_path = path.with_suffix(".json")
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{config_path}: invalid JSON ({err})") from err
        source = config_path
    else:
        with safe_open(str(path), framework="pt") as handle:
            text = (handle.metadata() or {}).get("avtta_config")
        if text is None:
            raise ValueError(f"{path}: no {config_path.name} beside it and no 'avtta_config' metadata inside")
        config = json.loads(text)
        source = path
    valid = isinstance(config, dict) and config.get("format") == CONFIG_FORMAT and isinstance(config.get("arch"), dict)
    if not valid:
        raise ValueError(f"{source}: not an avtta model config (expected format {CONFIG_FORMAT!r} with 'arch')")
    return config


def load_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    """Load weights from a released ``.pth`` or our ``.safetensors`` into ``model`` (strict, in place)."""
    path = resolve_checkpoint_path(path)
    if path.suffix == ".safetensors":
        state = load_file(str(path), device="cpu")
    else:
        state = load_released_state_dict(path)
    model.load_state_dict(checkpoint_filter_fn(state, model, source=str(path)), strict=True)
    return model
