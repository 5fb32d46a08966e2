"""Source: the frozen model, no adaptation (the "None" baseline).

Paper: none (baseline). Upstream: Luchicken/BriMPR ``TTA/Source.py`` (spec methods.md section 1).

KEEP: prediction = the multimodal forward under the configured precision (the BriMPR baseline runs it under fp16
autocast; original READ's baseline in fp32: use ``precision="fp32"``, the default here).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .base import MethodConfig, TTAMethod

__all__ = ["Source", "SourceConfig"]


@dataclass(frozen=True, kw_only=True)
class SourceConfig(MethodConfig):
    """No settings beyond precision (``lr`` is unused)."""


class Source(TTAMethod):
    """Frozen model; ``step`` returns its multimodal logits."""

    name = "source"
    config_class = SourceConfig

    def forward_and_adapt(self, audio: Tensor, video: Tensor) -> Tensor:
        return self.forward_logits(audio, video)
