"""T3A: test-time template adjuster (back-propagation free).

Paper: Y. Iwasawa, Y. Matsuo, "Test-Time Classifier Adjustment Module for Model-Agnostic Domain Generalization",
NeurIPS 2021. Upstream: matsuolab/T3A; as adapted in Luchicken/BriMPR ``TTA/T3A.py`` (spec methods.md section 3).

The support set starts from the classifier rows ``W = get_classifier().weight`` (their pseudo-labels and entropies come
from ``W W^T + b``). Per batch: features ``f`` = output of the head LayerNorm (``mode="features"``), linear logits
``q = W f + b`` (fp32), append ``(f, onehot(argmax q), H(q))`` to the store, keep per class the ``filter_K``
lowest-entropy entries (the store is replaced), prototypes = column-normalised sums of L2-normalised supports,
prediction ``f P`` (``f`` not normalised, no bias).

KEEP (item 17): the current batch enters the store before its own prediction; supports start from the classifier.
FIX (item 17): ``filter_K = -1`` keeps every entry (the reference's index list for -1 is overwritten and then
slices ``[:-1]``, silently dropping the highest-entropy entry of each class).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import MethodConfig, TTAMethod
from .losses import softmax_entropy

__all__ = ["T3A", "T3AConfig"]


@dataclass(frozen=True, kw_only=True)
class T3AConfig(MethodConfig):
    """Attributes:
    filter_K: supports kept per class (lowest entropy first); -1 keeps all.
    """

    filter_K: int = 20

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.filter_K == 0 or self.filter_K < -1:
            raise ValueError(f"filter_K must be positive or -1, got {self.filter_K} (adapt/methods/t3a.py)")


class T3A(TTAMethod):
    """Prototype classifier over an online support set; the network is never modified."""

    name = "t3a"
    config_class = T3AConfig

    def init_state(self) -> None:
        head = self.model.get_classifier()
        with torch.no_grad():
            self._weight = head.weight.detach().clone().float()
            self._bias = head.bias.detach().clone().float() if head.bias is not None else None
            warm_logits = F.linear(self._weight, self._weight, self._bias)
        self._warm_supports = self._weight.clone()
        self._warm_labels = F.one_hot(warm_logits.argmax(1), self.num_classes).float()
        self._warm_entropy = softmax_entropy(warm_logits)

    def reset_state(self) -> None:
        self.supports = self._warm_supports.clone()
        self.labels = self._warm_labels.clone()
        self.entropy = self._warm_entropy.clone()

    def _features(self, audio: Tensor, video: Tensor) -> Tensor:
        with self.autocast():
            feats = self.model(audio, video, mode="features")
        return feats.float()  # the head LayerNorm's output (fp32 under AMP too)

    def forward_and_adapt(self, audio: Tensor, video: Tensor) -> Tensor:
        feats = self._features(audio, video)
        logits = F.linear(feats, self._weight, self._bias)
        self.supports = torch.cat([self.supports, feats])
        self.labels = torch.cat([self.labels, F.one_hot(logits.argmax(1), self.num_classes).float()])
        self.entropy = torch.cat([self.entropy, softmax_entropy(logits)])
        self._filter_supports()
        return feats @ self._prototypes()

    def forward_logits(self, audio: Tensor, video: Tensor) -> Tensor:
        """Prediction with the current prototypes, without adding the batch to the store."""
        return self._features(audio, video) @ self._prototypes()

    def _prototypes(self) -> Tensor:
        weights = F.normalize(self.supports, dim=1).t() @ self.labels
        return F.normalize(weights, dim=0)

    def _filter_supports(self) -> None:
        """Keep, class by class (0..C-1), the ``filter_K`` entries with the lowest entropy, in that order."""
        k = self.config.filter_K
        if k == -1:
            return  # FIX: keep all (store order unchanged, prototypes are order-independent sums)
        labels = self.labels.argmax(1)
        # order by (class, entropy): a stable sort by entropy, then a stable sort by class.
        by_entropy = torch.sort(self.entropy, stable=True).indices
        order = by_entropy[torch.sort(labels[by_entropy], stable=True).indices]
        sorted_labels = labels[order]
        first = torch.searchsorted(sorted_labels, sorted_labels, right=False)
        rank = torch.arange(order.numel(), device=order.device) - first
        keep = order[rank < k]
        self.supports = self.supports[keep]
        self.labels = self.labels[keep]
        self.entropy = self.entropy[keep]
