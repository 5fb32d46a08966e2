"""Template base class of the test-time adaptation methods.

The base owns everything the methods share (spec/methods.md section 0): parameter selection through the model's
named groups, ``requires_grad`` configuration, the Adam optimiser (lr 1e-4 by default, and the configured ``lr`` is
honoured: spec item 22 FIX), precision (fp32 default; fp16 autocast + GradScaler as the references; bf16 autocast),
the snapshot taken at construction and an exact ``reset()`` (spec item 7 FIX: the model has a single fused ``qkv``,
so restoring the snapshot restores the true initial state), and the per-batch ``step``.

A method implements :meth:`TTAMethod.forward_and_adapt` (one online step on one batch, returning the logits that
are scored) and, if it has state of its own, :meth:`TTAMethod.reset_state`. What it needs from the run it declares
as class attributes, which this base class and the adaptation worker (``adapt/worker.py``) serve:

* ``source_data`` (a :class:`SourceData`): statistics of clean source clips (EATA's Fisher, BriMPR's statistics),
  with their size (a config field) and cache key; given to the constructor, or computed from ``source=`` batches;
* ``presets``: per-dataset config overrides; ``protocol_overrides``: per-protocol ones (BriMPR's tau for ``both``);
* :meth:`TTAMethod.config_for_model`: settings that follow from the model (BriMPR's number of prompted layers).

The worker resolves a run's config as model facts < dataset preset < protocol override < the run's precision < the
user's ``--method-config`` (:meth:`TTAMethod.run_config` gives the first three).

Design notes:
* Only the trained parameters are snapshotted: the methods change nothing else in the model.
* ``requires_grad`` is enabled only on the parameters the optimiser updates. The references also enable it on
  LayerNorms they never step (SAR/DeYO); those gradients are never applied, so dropping them changes no number.
* Unlike the references, ``reset()`` also restores the GradScaler (they never reset it, spec item 12) and the
  method's random generator, so a reset method behaves exactly like a freshly constructed one.
* Randomness comes from ``self.generator``, a CPU ``torch.Generator`` seeded with ``config.seed`` (draws are made
  on the CPU and moved to the model's device, so CPU and CUDA runs draw the same numbers).
"""

from __future__ import annotations

import abc
import contextlib
import copy
import dataclasses
import hashlib
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

__all__ = ["PRECISIONS", "MethodConfig", "RunContext", "SourceData", "TTAMethod", "derive_seed", "take_clips"]

PRECISIONS = ("fp32", "fp16", "bf16")
_AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def derive_seed(seed: int, *keys: object) -> int:
    """A 63-bit seed derived from ``(seed, *keys)`` (stable across processes, unlike ``hash``)."""
    text = "/".join([str(int(seed)), *map(str, keys)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


@dataclass(frozen=True, kw_only=True)
class MethodConfig:
    """Settings shared by every method.

    Attributes:
        lr: Adam learning rate (references: 1e-4; their ``--lr`` flag is ignored, spec item 22 FIX).
        betas: Adam betas.
        weight_decay: Adam weight decay.
        precision: "fp32" (default), "fp16" (CUDA autocast + GradScaler, as the references) or "bf16" (autocast,
            no scaler; losses in fp32).
        seed: seed of the method's own generator (masking, patch shuffling, prompt initialisation).
    """

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    precision: str = "fp32"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r} is not one of {PRECISIONS} (adapt/methods/base.py)")
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr >= 0):
            raise ValueError(f"lr must be a finite non-negative number, got {self.lr!r} (adapt/methods/base.py)")
        if len(self.betas) != 2:
            raise ValueError(f"betas must have two entries, got {self.betas!r} (adapt/methods/base.py)")
        # tuples survive JSON as lists: normalise so configs compare equal after a round trip.
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))

    def to_dict(self) -> dict[str, Any]:
        """The resolved configuration as plain JSON-able values."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SourceData:
    """A method's need for statistics of clean source clips, computed once per (checkpoint, source set).

    Attributes:
        argument: the constructor keyword (and ``create_method`` keyword) receiving the value, e.g. ``"fisher"``.
        cache_key: file-name prefix of the worker's cache file (``<cache_key>-<checkpoint>-<set>-<n>-...``).
        kind: the ``kind`` recorded in the cache file's metadata.
        size_field: the config field holding the number of source clips.
        size_key: the metadata key recording that number.
        compute: ``compute(model, source, num_clips) -> value`` over ``(audio, video, ...)`` batches.
        to_tensors: ``value -> {name: tensor}`` (the safetensors cache).
        from_tensors: ``(tensors, origin) -> value`` (``origin`` names the file in errors).
        needed: ``needed(config)``: whether this config uses the source data at all (default: always).
    """

    argument: str
    cache_key: str
    kind: str
    size_field: str
    size_key: str
    compute: Callable[[nn.Module, Iterable, int], Any]
    to_tensors: Callable[[Any], dict[str, Tensor]]
    from_tensors: Callable[[dict[str, Tensor], object], Any]
    needed: Callable[[MethodConfig], bool] = lambda config: True

    def size(self, config: MethodConfig) -> int:
        """Number of source clips ``config`` asks for."""
        return int(getattr(config, self.size_field))


def take_clips(source: Iterable, num_clips: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(audio, video)`` batches from ``source`` until ``num_clips`` clips were produced.

    Batches may carry extra items (e.g. labels); only the first two are used. The last batch is truncated
    so that exactly ``min(num_clips, available)`` clips are yielded.
    """
    if num_clips <= 0:
        raise ValueError(f"num_clips must be positive, got {num_clips} (adapt/methods/base.py)")
    left = num_clips
    for batch in source:
        if not isinstance(batch, tuple | list) or len(batch) < 2:
            raise TypeError(
                f"source batches must be (audio, video, ...) tuples, got {type(batch)} (adapt/methods/base.py)"
            )
        audio, video = batch[0], batch[1]
        if audio.shape[0] != video.shape[0]:
            raise ValueError(
                f"audio and video batch sizes differ: {audio.shape[0]} vs {video.shape[0]} (adapt/methods/base.py)"
            )
        n = min(left, audio.shape[0])
        yield audio[:n], video[:n]
        left -= n
        if left == 0:
            return


@dataclass(frozen=True)
class RunContext:
    """What a run offers :meth:`TTAMethod.run_inputs`.

    Attributes:
        class_names: the dataset's class names, in logit order.
        device: the device of the adapted model.
        load_model: ``load_model(checkpoint, arch, num_classes)`` -> a frozen model on ``device`` (the run owns file
            access; ``arch``/``num_classes`` may be None when the checkpoint says).
    """

    class_names: tuple[str, ...]
    device: torch.device
    load_model: Callable[[str, str | None, int | None], nn.Module]


class TTAMethod(abc.ABC):
    """One online test-time adaptation method over a CAV-MAE classifier.

    Subclasses set ``name`` and ``config_class``, override :meth:`trainable_groups` (model parameter groups
    to train) or :meth:`extra_parameters` (parameters the method owns, e.g. prompts), and implement
    :meth:`forward_and_adapt`. The model is adapted in place: one method instance owns its model.
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    source_data: ClassVar[SourceData | None] = None  # EATA (Fisher) and BriMPR (source statistics) declare one
    presets: ClassVar[dict[str, dict[str, Any]]] = {}  # dataset name -> config overrides
    protocol_overrides: ClassVar[dict[str, dict[str, Any]]] = {}  # protocol (video, audio, both, ...) -> overrides

    def __init__(
        self, model: nn.Module, config: MethodConfig | None = None, *, source: Iterable | None = None, **inputs: Any
    ) -> None:
        """Args:
        model: the classifier, adapted in place.
        config: the method's config (default: its defaults).
        source: ``(audio, video)`` batches of clean source clips, to compute the declared ``source_data``.
        **inputs: the declared source data, precomputed, under its keyword (EATA ``fisher=``, BriMPR
            ``source_stats=``).
        """
        if config is None:
            config = self.config_class()
        if not isinstance(config, self.config_class):
            raise TypeError(
                f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__} "
                "(adapt/methods/base.py)"
            )
        need = self.source_data
        value = inputs.pop(need.argument, None) if need is not None else None
        if inputs:
            raise TypeError(f"{type(self).__name__} takes no {', '.join(sorted(inputs))}= (adapt/methods/base.py)")
        # the declared source data, for init_state (computed first: the model is still the untouched source model)
        self.source_value = self.source_input(model, config, value, source) if need and need.needed(config) else None
        self.model = model
        self.config = config
        self.device = _device_of(model)
        self.precision = config.precision
        if self.precision == "fp16" and self.device.type != "cuda":
            raise ValueError(
                f"precision 'fp16' needs a CUDA model (fp16 autocast + GradScaler); the model is on "
                f"{self.device}: use 'fp32' or 'bf16' (adapt/methods/base.py)"
            )
        self.generator = torch.Generator().manual_seed(config.seed)
        self.model.eval()  # no dropout/BatchNorm in CAV-MAE: train/eval mode is irrelevant, eval is deterministic
        self.init_state()
        self.named_params: list[tuple[str, nn.Parameter]] = self._select_parameters()
        self._configure()
        self.optimizer: torch.optim.Optimizer | None = None
        if self.named_params:
            self.optimizer = self.build_optimizer([p for _, p in self.named_params])
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        self._snapshot = self._take_snapshot()
        self.reset_state()

    # ------------------------------------------------------------------ declarations served by the run
    @classmethod
    def config_for_model(cls, model: nn.Module) -> dict[str, Any]:
        """Config overrides that follow from the model (e.g. BriMPR's prompted layers); none by default."""
        return {}

    @classmethod
    def run_config(
        cls,
        model: nn.Module,
        *,
        dataset: str | None = None,
        protocol: str | None = None,
        stream_batches: int | None = None,
    ) -> dict[str, Any]:
        """The declared overrides of a run, later ones winning: model facts < ``presets[dataset]`` <
        ``presets[f"{dataset}_{protocol}"]`` (e.g. ABPEM's ``ks50_audio``) < ``protocol_overrides[protocol]`` <
        :meth:`config_for_stream` (SuMi's pass length)."""
        return {
            **cls.config_for_model(model),
            **cls.presets.get(str(dataset), {}),
            **cls.presets.get(f"{dataset}_{protocol}", {}),
            **cls.protocol_overrides.get(str(protocol), {}),
            **(cls.config_for_stream(stream_batches) if stream_batches else {}),
        }

    @classmethod
    def config_for_stream(cls, batches: int) -> dict[str, Any]:
        """Config overrides that follow from the length of a test stream in batches (SuMi's ``iters``); none here."""
        return {}

    @classmethod
    def run_inputs(cls, config: MethodConfig, context: RunContext) -> dict[str, Any]:
        """Constructor keyword arguments the run prepares for this method, besides the config and the source data
        (e.g. ``audio_assist``'s label map and labeler model); none by default."""
        return {}

    @property
    def scores_after_update(self) -> bool:
        """Whether the scored logits come from the model after this batch's update (READ's ``score="post"``...):
        a run that inspects the scoring model (modality valuation) looks at it after :meth:`step` then."""
        return getattr(self.config, "score", "pre") == "post"

    @classmethod
    def source_input(cls, model: nn.Module, config: MethodConfig, value: Any, source: Iterable | None) -> Any:
        """The declared source data: ``value`` when given, else computed from the ``source`` batches."""
        need = cls.source_data
        if need is None or value is not None:
            return value
        if source is None:
            raise ValueError(
                f"{cls.__name__} needs {need.argument}= (e.g. from the worker's cache) or source= batches of clean "
                "source clips (adapt/methods/base.py)"
            )
        return need.compute(model, source, need.size(config))

    # ------------------------------------------------------------------ hooks for subclasses
    def trainable_groups(self) -> tuple[str, ...]:
        """Names of the model parameter groups (``model.param_groups()``) this method trains."""
        return ()

    def extra_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Parameters owned by the method itself (trained too, e.g. BriMPR's prompts)."""
        return []

    def init_state(self) -> None:  # noqa: B027 (optional hook)
        """Create method-owned tensors/parameters before parameter selection (called once, in ``__init__``)."""

    def reset_state(self) -> None:  # noqa: B027 (optional hook)
        """Clear the method's own state (called at construction and by :meth:`reset`)."""

    def build_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        """Adam over ``params`` (spec 0.3)."""
        cfg = self.config
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)

    @abc.abstractmethod
    def forward_and_adapt(self, audio: Tensor, video: Tensor) -> Tensor:
        """One online step on one batch; returns the logits scored for it."""

    # ------------------------------------------------------------------ public API
    @property
    def adapts(self) -> bool:
        """Whether the method trains anything (Source and T3A do not back-propagate)."""
        return bool(self.named_params)

    @property
    def params(self) -> list[nn.Parameter]:
        """The trained parameters, in optimiser order."""
        return [p for _, p in self.named_params]

    def trainable_state(self) -> dict[str, Tensor]:
        """Detached copies of the trained parameters, by name."""
        return {n: p.detach().clone() for n, p in self.named_params}

    def step(self, audio: Tensor, video: Tensor, keys: Sequence[str] | None = None) -> Tensor:
        """Adapt on one batch (``audio [B,1024,128]``, ``video [B,3,224,224]``); returns scored fp32 logits.

        ``keys`` (the samples' keys, optional) are kept in ``batch_keys`` for methods whose draws are per sample.
        """
        self.batch_keys = None if keys is None else [str(k) for k in keys]
        audio = audio.to(self.device, non_blocking=True)
        video = video.to(self.device, non_blocking=True)
        grad_mode = torch.enable_grad() if self.adapts else torch.no_grad()
        with grad_mode:
            logits = self.forward_and_adapt(audio, video)
        if self.optimizer is not None:
            # free gradient memory between batches; every update starts with zero_grad anyway.
            self.optimizer.zero_grad(set_to_none=True)
        return logits.detach().float()

    @torch.no_grad()
    def predict(self, audio: Tensor, video: Tensor) -> Tensor:
        """Logits of the current (adapted) model without adapting, as fp32."""
        audio = audio.to(self.device, non_blocking=True)
        video = video.to(self.device, non_blocking=True)
        return self.forward_logits(audio, video).float()

    def reset(self, seed: int | None = None) -> None:
        """Restore the trained parameters, optimiser, scaler, generator and method state saved at construction.

        Args:
            seed: optional run seed: the generator is then seeded with it instead of ``config.seed`` (and BriMPR
                draws its initial prompts from it, like the references' reset after seeding).
        """
        self.restore_snapshot()
        self.generator.manual_seed(self.config.seed if seed is None else int(seed))
        self.reset_state()

    def restore_snapshot(self) -> None:
        """Trained parameters, optimiser and scaler back to their state at construction (generator and method state
        untouched; :meth:`reset` restores those too)."""
        snap = self._snapshot
        with torch.no_grad():
            for name, p in self.named_params:
                p.copy_(snap["params"][name])
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)
            # deep copy: load_state_dict may keep references to the given tensors.
            self.optimizer.load_state_dict(copy.deepcopy(snap["optimizer"]))
        if self.scaler is not None:
            self.scaler.load_state_dict(copy.deepcopy(snap["scaler"]))

    def reseed(self, seed: int) -> None:
        """Reseed the method's generator (the golden runs reseed 100 before step 1 and 101 before step 2)."""
        self.generator.manual_seed(int(seed))

    # ------------------------------------------------------------------ helpers for subclasses
    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast context for the configured precision (a no-op for fp32)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=_AUTOCAST_DTYPES[self.precision])

    def forward_logits(self, audio: Tensor, video: Tensor) -> Tensor:
        """Multimodal logits of the model under the configured precision (grad mode of the caller)."""
        with self.autocast():
            return self.model(audio, video, mode="multimodal")

    def loss_input(self, logits: Tensor) -> Tensor:
        """Logits as the losses see them: kept as is for fp16 (the references' fp16 arithmetic), fp32 for bf16."""
        return logits.float() if self.precision == "bf16" else logits

    def apply_update(self, loss: Tensor) -> None:
        """Zero grads, back-propagate ``loss`` and take one optimiser step (through the GradScaler for fp16)."""
        assert self.optimizer is not None
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()

    def uniform(self, *shape: int) -> Tensor:
        """``U(0, 1)`` draws of ``shape`` from the method's generator (on the CPU)."""
        return torch.rand(*shape, generator=self.generator)

    @property
    def num_classes(self) -> int:
        return int(self.model.num_classes)

    # ------------------------------------------------------------------ internals
    def _select_parameters(self) -> list[tuple[str, nn.Parameter]]:
        groups = self.trainable_groups()
        named = list(self.model.select_parameters(*groups)) if groups else []
        named += self.extra_parameters()
        seen: set[int] = set()
        for name, p in named:
            if id(p) in seen:
                raise ValueError(f"{self.name}: parameter {name!r} selected twice (adapt/methods/base.py)")
            seen.add(id(p))
        return named

    def _configure(self) -> None:
        self.model.requires_grad_(False)
        for _, p in self.named_params:
            p.requires_grad_(True)

    def _take_snapshot(self) -> dict[str, Any]:
        return {
            "params": self.trainable_state(),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()) if self.optimizer is not None else None,
            "scaler": copy.deepcopy(self.scaler.state_dict()) if self.scaler is not None else None,
        }

    def __repr__(self) -> str:
        n = sum(p.numel() for p in self.params)
        return f"{type(self).__name__}({self.config}, trained tensors={len(self.named_params)}, values={n})"


def _device_of(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    raise ValueError("the model has no parameters (adapt/methods/base.py)")
