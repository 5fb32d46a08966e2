"""CAV-MAE models for audio-visual test-time adaptation (``avtta.models``).

``create_model(name, num_classes, checkpoint, **overrides)`` builds a registered variant (``list_models()``),
optionally from a released CAV-MAE ``.pth`` or one of avtta's safetensors checkpoints.
"""

from .cav_mae import ARCH_ARGS, CAVMAEFT, MODES, Block, sincos_pos_embed_2d
from .checkpoint import (
    checkpoint_filter_fn,
    load_checkpoint,
    load_released_state_dict,
    read_checkpoint_config,
    save_checkpoint,
)
from .factory import create_model
from .gemm import cpu_gemm, get_cpu_gemm, set_cpu_gemm
from .registry import is_model, list_models, register_model

__all__ = [
    "ARCH_ARGS",
    "CAVMAEFT",
    "MODES",
    "Block",
    "checkpoint_filter_fn",
    "cpu_gemm",
    "create_model",
    "get_cpu_gemm",
    "is_model",
    "list_models",
    "load_checkpoint",
    "load_released_state_dict",
    "read_checkpoint_config",
    "register_model",
    "save_checkpoint",
    "set_cpu_gemm",
    "sincos_pos_embed_2d",
]
