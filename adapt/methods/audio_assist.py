"""Audio-assisted test-time adaptation with a per-sample flexible adaptation cycle.

Paper: R. Zeng, Q. Deng, R. Zhang, S. Niu, J. Chen, X. Hu, V. C. M. Leung, "Exploring Audio Cues for Enhanced
Test-Time Video Model Adaptation", 2025, arXiv 2506.12481. Announced code: keikeiqi/Audio-Assisted-TTA (not
public when this was written, so nothing here follows it).

What the paper states (abstract): an audio classifier labels each clip's audio, an LLM-built label map carries the
audio classes into the video label space, the mapped predictions are pseudo-labels for adapting the video model,
and a flexible adaptation cycle chooses per sample how many iterations to run from the change in loss and the
consistency across augmented views. Everything more specific below is avtta's own design (the method section of
the paper could not be read; see ``docs/faithfulness-audio-assist.md``), not the paper's:

1. Labeler: ``p_a = softmax(labeler(audio))`` over the A audio classes, either the adapted model's own audio-only
   forward (``labeler="self"``, CAV-MAE's ``missingaudioonly`` mode) or a separate frozen model (``labeler_model``).
2. Mapped audio distribution ``q = normalise(p_a @ M)``, ``M`` the ``[A, V]`` label map (identity by default).
3. Pseudo-label: ``c = w q + (1 - w) p_m`` with ``p_m`` the target model's prediction on the unaugmented clip and
   ``w = audio_weight``; ``y = argmax c``. A sample is adapted only when ``max c >= threshold`` and some audio mass
   maps into the video label space.
4. Cycle (per sample, one sample at a time, the model adapted online): at iteration ``t`` draw ``views`` augmented
   views of the frame (random resized crop + horizontal flip; generator seeded from ``(seed, key, t)``), compute
   ``L_t = mean_views CE(logits, y)`` and the views' agreement; stop before updating when the views agree
   (``consistency``) or when ``|L_t - L_{t-1}| < loss_tolerance``; else take one Adam step. At most
   ``max_iterations`` updates. ``last_iterations`` records the number of updates each sample got.
5. Score: the target model's logits on the unaugmented clip after the cycle.

Samples are processed one at a time, in batch order, each forward on one sample (or its views): the outputs depend
on the order of the stream only, never on how it is cut into batches. With ``episodic=True`` every sample starts
from the initial state, so its output depends on the sample (and seed) alone.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import MethodConfig, RunContext, TTAMethod, derive_seed
from .label_map import LabelMap, load_class_list, resolve_label_map

logger = logging.getLogger(__name__)

__all__ = [
    "AUGMENTATIONS",
    "CONSISTENCY_RULES",
    "LABELER_MODES",
    "TARGET_FORWARDS",
    "AudioAssist",
    "AudioAssistConfig",
    "apply_view",
    "combine_pseudo_label",
    "run_cycle",
    "sample_view_params",
    "should_stop",
]

TARGET_FORWARDS = ("multimodal", "videoonly")
LABELER_MODES = ("missingaudioonly", "audioonly")
CONSISTENCY_RULES = ("pseudo_label", "views", "off")
AUGMENTATIONS = ("crop", "flip")
_NO_AUDIO_MASS = 1e-12  # below this the audio puts (numerically) no mass on any mapped class: no pseudo-label


@dataclass(frozen=True, kw_only=True)
class AudioAssistConfig(MethodConfig):
    """Settings of audio-assisted TTA (every default is avtta's choice; the paper's values could not be read).

    Attributes:
        labeler: "self" (the adapted model's own audio-only forward) or the path of the labeler checkpoint (the
            caller loads it and passes ``labeler_model=``; the path is kept for provenance).
        labeler_arch: model name of the labeler checkpoint when the checkpoint does not say (released ``.pth``), for
            the caller that builds it (e.g. "cav_mae_ft_base").
        labeler_classes: path of the labeler's class list (``adapt.label_map.load_class_list``: a text file, one name
            per line, or a CSV such as AudioSet's ``class_labels_indices.csv``), for the caller that loads the label
            map; None with labeler "self" (the dataset's classes).
        labeler_mode: forward mode of the labeler: None = "missingaudioonly" for "self" (a multimodal model given
            audio only, CAV-MAE's missing-modality inference) and "audioonly" for a separate (audio) model.
        label_map: path of the label-map CSV (loaded by the caller with ``adapt.label_map.load_label_map`` and
            passed as ``label_map=``), or None for the identity (same label space).
        forward: target model forward, "multimodal" (the audio-visual model) or "videoonly" (the video model).
        groups: model parameter groups adapted (default: the video stack's and fusion block's LayerNorms).
        audio_weight: weight ``w`` of the mapped audio distribution in the pseudo-label ``w q + (1 - w) p_model``.
        threshold: a sample is adapted only when the combined confidence ``max_c`` reaches this.
        loss_tolerance: stop when the view loss changed by less than this since the previous iteration.
        consistency: view-consistency stop rule: "pseudo_label" (every view predicts the pseudo-label), "views"
            (the views predict the same class) or "off" (loss change and the maximum only).
        max_iterations: hard maximum of adaptation iterations (optimiser steps) per sample.
        views: augmented views per iteration (>= 1; agreement needs >= 2 to mean anything).
        augment: augmentations of a view, a subset of ("crop", "flip"); empty = the unaugmented frame.
        crop_scale: area fraction range of the random resized crop.
        crop_ratio: aspect-ratio range of the random resized crop.
        episodic: restore the initial state before every sample (each sample adapted alone) instead of online.
    """

    labeler: str = "self"
    labeler_arch: str | None = None
    labeler_classes: str | None = None
    labeler_mode: str | None = None
    label_map: str | None = None
    forward: str = "multimodal"
    groups: tuple[str, ...] = ("norms.blocks_v", "norms.blocks_u")
    audio_weight: float = 0.5
    threshold: float = 0.5
    loss_tolerance: float = 0.01
    consistency: str = "pseudo_label"
    max_iterations: int = 5
    views: int = 2
    augment: tuple[str, ...] = ("crop", "flip")
    crop_scale: tuple[float, float] = (0.6, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    episodic: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        where = "(adapt/methods/audio_assist.py)"
        for name in ("groups", "augment", "crop_scale", "crop_ratio"):  # JSON gives lists
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not isinstance(self.labeler, str) or not self.labeler:
            raise ValueError(f"labeler must be 'self' or a checkpoint path, got {self.labeler!r} {where}")
        if self.labeler_mode is not None and self.labeler_mode not in LABELER_MODES:
            raise ValueError(f"labeler_mode {self.labeler_mode!r} is not None or one of {LABELER_MODES} {where}")
        if self.forward not in TARGET_FORWARDS:
            raise ValueError(f"forward {self.forward!r} is not one of {TARGET_FORWARDS} {where}")
        if not self.groups:
            raise ValueError(f"groups must name at least one parameter group {where}")
        if not 0.0 <= self.audio_weight <= 1.0:
            raise ValueError(f"audio_weight must be in [0, 1], got {self.audio_weight!r} {where}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold!r} {where}")
        if not (math.isfinite(self.loss_tolerance) and self.loss_tolerance >= 0):
            raise ValueError(f"loss_tolerance must be finite and >= 0, got {self.loss_tolerance!r} {where}")
        if self.consistency not in CONSISTENCY_RULES:
            raise ValueError(f"consistency {self.consistency!r} is not one of {CONSISTENCY_RULES} {where}")
        if not (isinstance(self.max_iterations, int) and self.max_iterations >= 1):
            raise ValueError(f"max_iterations must be an integer >= 1, got {self.max_iterations!r} {where}")
        if not (isinstance(self.views, int) and self.views >= 1):
            raise ValueError(f"views must be an integer >= 1, got {self.views!r} {where}")
        if self.consistency == "views" and self.views < 2:
            raise ValueError(f"consistency 'views' needs views >= 2, got {self.views} {where}")
        bad = sorted(set(self.augment) - set(AUGMENTATIONS))
        if bad:
            raise ValueError(f"augment has unknown entries {bad}; known {AUGMENTATIONS} {where}")
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"crop_scale must satisfy 0 < lo <= hi <= 1, got {self.crop_scale!r} {where}")
        lo, hi = self.crop_ratio
        if not 0.0 < lo <= hi:
            raise ValueError(f"crop_ratio must satisfy 0 < lo <= hi, got {self.crop_ratio!r} {where}")

    @property
    def resolved_labeler_mode(self) -> str:
        """The labeler's forward mode with the default filled in."""
        if self.labeler_mode is not None:
            return self.labeler_mode
        return "missingaudioonly" if self.labeler == "self" else "audioonly"


# ---------------------------------------------------------------------- pure pieces (tested on their own)
def combine_pseudo_label(
    audio_probs: Tensor, label_matrix: Tensor, model_probs: Tensor, audio_weight: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Audio-assisted pseudo-labels: ``c = w normalise(p_a @ M) + (1 - w) p_m``.

    Args:
        audio_probs: ``[B, A]`` labeler probabilities.
        label_matrix: ``[A, V]`` label map.
        model_probs: ``[B, V]`` target model probabilities.
        audio_weight: ``w``.

    Returns:
        ``(labels [B] long, confidence [B], has_audio [B] bool)``; where the audio puts no mass on a mapped class,
        ``has_audio`` is False and ``c = p_m``.
    """
    mass = audio_probs.float() @ label_matrix.float()
    total = mass.sum(dim=1, keepdim=True)
    has_audio = total.squeeze(1) > _NO_AUDIO_MASS
    q = torch.where(has_audio.unsqueeze(1), mass / total.clamp_min(_NO_AUDIO_MASS), model_probs.float())
    combined = audio_weight * q + (1.0 - audio_weight) * model_probs.float()
    confidence, labels = combined.max(dim=1)
    return labels, confidence, has_audio


def should_stop(losses: Sequence[float], views_agree: bool, tolerance: float) -> bool:
    """The stop rule, checked before each update: the views agree, or the loss changed by less than ``tolerance``."""
    if views_agree:
        return True
    return len(losses) >= 2 and abs(losses[-1] - losses[-2]) < tolerance


def run_cycle(
    evaluate: Callable[[int], tuple[float, bool]],
    update: Callable[[int], None],
    max_iterations: int,
    tolerance: float,
) -> tuple[int, list[float]]:
    """Drive one sample's adaptation cycle.

    At iteration ``t = 0, 1, ...`` ``evaluate(t)`` returns the view loss and whether the views agree; the cycle
    stops there (:func:`should_stop`) or calls ``update(t)``. At most ``max_iterations`` updates.

    Returns:
        ``(number of updates, the losses seen)``.
    """
    losses: list[float] = []
    for t in range(max_iterations):
        loss, agree = evaluate(t)
        losses.append(loss)
        if should_stop(losses, agree, tolerance):
            return t, losses
        update(t)
    return max_iterations, losses


def sample_view_params(
    generator: torch.Generator,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
) -> dict[str, Any]:
    """Parameters of one random resized crop + flip (five uniform draws, whatever is enabled, so they replay)."""
    u = torch.rand(5, generator=generator, dtype=torch.float64).tolist()
    area = height * width * (scale[0] + (scale[1] - scale[0]) * u[0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = math.exp(log_lo + (log_hi - log_lo) * u[1])
    w = min(width, max(1, round(math.sqrt(area * aspect))))
    h = min(height, max(1, round(math.sqrt(area / aspect))))
    top = min(height - h, int(u[2] * (height - h + 1)))
    left = min(width - w, int(u[3] * (width - w + 1)))
    return {"top": top, "left": left, "height": h, "width": w, "flip": u[4] < 0.5}


def apply_view(frames: Tensor, params: dict[str, Any], augment: Sequence[str]) -> Tensor:
    """Apply one view's parameters to ``frames [N, 3, H, W]`` (crop resized back to ``H x W``, then flip)."""
    out = frames
    if "crop" in augment:
        size = frames.shape[-2:]
        top, left, h, w = params["top"], params["left"], params["height"], params["width"]
        out = F.interpolate(out[..., top : top + h, left : left + w], size=size, mode="bilinear", align_corners=False)
    if "flip" in augment and params["flip"]:
        out = torch.flip(out, dims=(-1,))
    return out


# ---------------------------------------------------------------------- the method
class AudioAssist(TTAMethod):
    """Audio-assisted pseudo-labels, adapted per sample with a flexible number of iterations.

    Args:
        model: the target CAVMAEFT (adapted in place).
        config: an :class:`AudioAssistConfig`.
        labeler_model: a separate audio classifier (e.g. an audio CAV-MAE trained on AudioSet), ready on a device,
            when ``config.labeler`` is a checkpoint path; it is frozen and never adapted.
        label_map: the validated :class:`LabelMap` (or an ``[A, V]`` matrix) when the label spaces differ; None =
            identity (then the labeler and the model must have the same number of classes).

    After every :meth:`step`, in batch order: ``last_iterations`` (updates per sample), ``last_pseudo_labels``
    (-1 where the audio maps to no video class; a sample below the threshold keeps its label but gets 0 updates),
    ``last_confidence`` (``max c``) and ``last_keys``.
    """

    name = "audio_assist"
    config_class = AudioAssistConfig
    scores_after_update: ClassVar[bool] = True  # the scored logits come after the sample's updates

    def __init__(
        self,
        model: nn.Module,
        config: AudioAssistConfig | None = None,
        *,
        labeler_model: nn.Module | None = None,
        label_map: LabelMap | Tensor | None = None,
    ) -> None:
        super().__init__(model, config)
        cfg: AudioAssistConfig = self.config  # type: ignore[assignment]
        where = "(adapt/methods/audio_assist.py)"
        if cfg.labeler == "self":
            if labeler_model is not None:
                raise ValueError(f"labeler 'self' takes no labeler_model= {where}")
            self.labeler_model: nn.Module | None = None
            audio_classes = self.num_classes
        else:
            if labeler_model is None:
                raise ValueError(
                    f"labeler {cfg.labeler!r} is a checkpoint: load it (models.load_checkpoint) and pass "
                    f"labeler_model= {where}"
                )
            if labeler_model is model:
                raise ValueError(f"labeler_model is the adapted model itself: use labeler 'self' {where}")
            labeler_model.requires_grad_(False)
            labeler_model.eval()
            self.labeler_model = labeler_model
            audio_classes = _num_classes(labeler_model)
        self.label_matrix = self._resolve_label_map(label_map, audio_classes).to(self.device)
        self.label_map_source = label_map.source if isinstance(label_map, LabelMap) else "identity"

    def _resolve_label_map(self, label_map: LabelMap | Tensor | None, audio_classes: int) -> Tensor:
        cfg: AudioAssistConfig = self.config  # type: ignore[assignment]
        where = "(adapt/methods/audio_assist.py)"
        shape = (audio_classes, self.num_classes)
        if label_map is None:
            if cfg.label_map is not None:
                raise ValueError(
                    f"label_map {cfg.label_map!r} is configured but not given: build it with "
                    f"adapt.label_map.load_label_map(path, audio_classes, video_classes) and pass label_map= {where}"
                )
            if audio_classes != self.num_classes:
                raise ValueError(
                    f"the labeler has {audio_classes} classes and the model {self.num_classes}: an identity label "
                    f"map needs one label space; give a label map CSV {where}"
                )
            return torch.eye(self.num_classes)
        matrix = label_map.matrix if isinstance(label_map, LabelMap) else label_map
        if not isinstance(matrix, Tensor):
            raise TypeError(f"label_map must be a LabelMap or a Tensor, got {type(label_map).__name__} {where}")
        if tuple(matrix.shape) != shape:
            raise ValueError(
                f"label map shape {tuple(matrix.shape)} != (labeler classes, model classes) {shape} {where}"
            )
        if not bool(torch.isfinite(matrix).all()) or bool((matrix < 0).any()):
            raise ValueError(f"label map weights must be finite and >= 0 {where}")
        return matrix.detach().float().clone()

    # ------------------------------------------------------------------ base hooks
    def trainable_groups(self) -> tuple[str, ...]:
        return self.config.groups  # type: ignore[attr-defined]

    def init_state(self) -> None:
        self._run_seed = int(self.config.seed)
        self._pending_keys: list[str] | None = None
        self._batch_keys: list[str] = []

    def reset_state(self) -> None:
        self._stream_index = 0  # samples seen since the last reset: the fallback key
        self.last_iterations: list[int] = []
        self.last_pseudo_labels: list[int] = []
        self.last_confidence: list[float] = []
        self.last_keys: list[str] = []

    def reset(self, seed: int | None = None) -> None:
        """Restore the initial state; ``seed`` (or ``config.seed``) seeds the views of every (key, iteration)."""
        self._run_seed = int(self.config.seed if seed is None else seed)
        self._pending_keys = None
        super().reset(seed)

    def reseed(self, seed: int) -> None:
        """Reseed the generator and the per-(key, iteration) view seeds."""
        self._run_seed = int(seed)
        super().reseed(seed)

    def forward_logits(self, audio: Tensor, video: Tensor) -> Tensor:
        """Logits of the configured target forward ("multimodal" or "videoonly")."""
        with self.autocast():
            if self.config.forward == "videoonly":  # type: ignore[attr-defined]
                return self.model(None, video, mode="videoonly")
            return self.model(audio, video, mode="multimodal")

    # ------------------------------------------------------------------ declarations served by the run
    @classmethod
    def run_inputs(cls, config: MethodConfig, context: RunContext) -> dict[str, Any]:
        """The label map (validated against both class lists) and, for a checkpoint labeler, the frozen labeler."""
        cfg: AudioAssistConfig = config  # type: ignore[assignment]
        labeler_classes = cfg.labeler_classes
        classes = load_class_list(labeler_classes) if labeler_classes is not None else None
        inputs: dict[str, Any] = {"label_map": resolve_label_map(cfg.label_map, context.class_names, classes)}
        if cfg.labeler != "self":
            inputs["labeler_model"] = context.load_model(
                cfg.labeler, cfg.labeler_arch, len(classes) if classes is not None else None
            )
        return inputs

    # ------------------------------------------------------------------ keys
    def set_batch_keys(self, keys: Sequence[str]) -> None:
        """Sample keys of the next :meth:`step`'s batch (seeds of its views); used once."""
        self._pending_keys = [str(k) for k in keys]

    def step(self, audio: Tensor, video: Tensor, keys: Sequence[str] | None = None) -> Tensor:
        """Adapt on one batch and return its scored logits; ``keys`` (or :meth:`set_batch_keys`) seed the views.

        Without keys, a sample's key is its position in the stream since the last reset (``"#<index>"``): still
        deterministic, but then a sample's views depend on where it comes in the stream.
        """
        batch = int(audio.shape[0])
        if keys is None:
            keys = self._pending_keys
        self._pending_keys = None
        if keys is None:
            keys = [f"#{self._stream_index + i}" for i in range(batch)]
        keys = [str(k) for k in keys]
        if len(keys) != batch:
            raise ValueError(f"{len(keys)} keys for a batch of {batch} samples (adapt/methods/audio_assist.py)")
        self._batch_keys = keys
        try:
            return super().step(audio, video)
        finally:
            self._batch_keys = []
            self._stream_index += batch

    # ------------------------------------------------------------------ the step
    def forward_and_adapt(self, audio: Tensor, video: Tensor) -> Tensor:
        keys = self._batch_keys or [f"#{self._stream_index + i}" for i in range(len(audio))]
        logits, iterations, labels, confidence = [], [], [], []
        for i, key in enumerate(keys):
            if self.config.episodic:  # type: ignore[attr-defined]
                self._restore_initial()
            out, n, y, conf = self._adapt_sample(audio[i : i + 1], video[i : i + 1], key)
            logits.append(out)
            iterations.append(n)
            labels.append(y)
            confidence.append(conf)
        self.last_iterations, self.last_pseudo_labels, self.last_confidence = iterations, labels, confidence
        self.last_keys = list(keys)
        return torch.cat(logits, dim=0)

    def _adapt_sample(self, audio: Tensor, video: Tensor, key: str) -> tuple[Tensor, int, int, float]:
        cfg: AudioAssistConfig = self.config  # type: ignore[assignment]
        with torch.no_grad():
            clean_logits = self.forward_logits(audio, video).float()
            audio_probs = self.labeler_logits(audio).float().softmax(dim=1)
            labels, confidence, has_audio = combine_pseudo_label(
                audio_probs, self.label_matrix, clean_logits.softmax(dim=1), cfg.audio_weight
            )
        label, conf = int(labels[0]), float(confidence[0])
        if not bool(has_audio[0]) or conf < cfg.threshold:
            return clean_logits, 0, -1 if not bool(has_audio[0]) else label, conf
        target = labels.to(self.device)
        state: dict[str, Tensor] = {}

        def evaluate(t: int) -> tuple[float, bool]:
            views = self._views(video, key, t)
            a = audio.expand(len(views), *audio.shape[1:])
            view_logits = self.forward_logits(a, views)
            loss = F.cross_entropy(self.loss_input(view_logits), target.expand(len(views)))
            state["loss"] = loss
            return float(loss.detach()), self._agree(view_logits.detach(), label)

        def update(t: int) -> None:
            self.apply_update(state.pop("loss"))

        n, _ = run_cycle(evaluate, update, cfg.max_iterations, cfg.loss_tolerance)
        state.clear()
        if n == 0:  # nothing changed: the clean forward is the score
            return clean_logits, 0, label, conf
        with torch.no_grad():
            return self.forward_logits(audio, video).float(), n, label, conf

    def labeler_logits(self, audio: Tensor) -> Tensor:
        """Labeler logits ``[B, A]`` for ``audio`` (no grad; the adapted model itself for "self")."""
        mode = self.config.resolved_labeler_mode  # type: ignore[attr-defined]
        with torch.no_grad(), self.autocast():
            if self.labeler_model is None:
                return self.model(audio, None, mode=mode)
            device = next(self.labeler_model.parameters()).device
            return self.labeler_model(audio.to(device), None, mode=mode).to(self.device)

    def _views(self, video: Tensor, key: str, iteration: int) -> Tensor:
        cfg: AudioAssistConfig = self.config  # type: ignore[assignment]
        generator = torch.Generator().manual_seed(derive_seed(self._run_seed, self.name, key, iteration))
        height, width = video.shape[-2:]
        views = []
        for _ in range(cfg.views):
            params = sample_view_params(generator, height, width, cfg.crop_scale, cfg.crop_ratio)
            views.append(apply_view(video, params, cfg.augment))
        return torch.cat(views, dim=0)

    def _agree(self, view_logits: Tensor, label: int) -> bool:
        rule = self.config.consistency  # type: ignore[attr-defined]
        if rule == "off":
            return False
        predicted = view_logits.argmax(dim=1)
        if rule == "pseudo_label":
            return bool((predicted == label).all())
        return bool((predicted == predicted[0]).all())

    def _restore_initial(self) -> None:
        """Trained parameters and optimiser back to the snapshot (episodic mode); the view seeds are untouched."""
        self.restore_snapshot()


def _num_classes(model: nn.Module) -> int:
    if hasattr(model, "num_classes"):
        return int(model.num_classes)
    return int(model.mlp_head[1].out_features)
