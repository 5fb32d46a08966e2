"""Supervised fine-tuning of a CAVMAEFT on clean shards (``avtta train``).

Recipe after CAV-MAE's fine-tuning (``src/run_cavmae_ft.py``, ``egs/vggsound/run_cavmae_ft.sh``: multimodal
fine-tuning, SpecAugment ``freqm`` 48 / ``timem`` 192, a random training frame, head learning rate x10, label
smoothing 0.1, cross-entropy), with AdamW and a linear warm-up + cosine schedule instead of CAV-MAE's Adam and
step decay. Not ported: mixup, fbank noise/roll augmentation and weight averaging.

Data: any iterable of batch dicts ``{"audio": [B,T,128], "video": [B,3,H,W], "label": LongTensor[B], ...}``; by
default the reader :func:`avtta.manifests.open_dataset` over a catalog (SpecAugment and the random frame are
applied there). Mixed precision (fp16 autocast + GradScaler) only on CUDA; fp32 on the CPU.

Outputs in ``out``: ``model.safetensors`` + ``model.json`` (the model after the last finished epoch, loadable with
``create_model(name, checkpoint=out)``), ``train_config.json`` (the resolved config), ``history.json`` (metrics per
epoch), and ``state.safetensors`` + ``state.json`` (optimizer, scaler and progress; what ``resume`` continues from).

Balanced source training (issue 14): ``resample`` (valuation-based re-sampling, ``models/resample.py``: the plan of
each re-sampled epoch is kept in ``plans/epoch_<n>.json`` so a resumed epoch reads the same rows) and
``structure_loss`` (the Multi-Sinkhorn-Knopp structure-preserving loss, ``models/structure.py``: its anchors are
saved in ``model.safetensors`` under ``structure.``, which model loaders ignore); both are recorded in ``model.json``
(``"training"``). Official-code items: ``docs/faithfulness.md`` (balanced source training).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from avtta.shards import storage
from avtta.shards.io import atomic_path, atomic_write
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from .balance import planned_logits, prepare_epoch_plan, schedule_position, structure_forward, valuate
from .cav_mae import CAVMAEFT
from .checkpoint import save_checkpoint
from .factory import create_model
from .resample import ResampleConfig
from .structure import CHECKPOINT_PREFIX, StructureConfig, StructurePreserver

__all__ = ["EVAL_MODES", "TrainConfig", "TrainResult", "eval_logits", "evaluate", "saved_config", "train"]

_log = logging.getLogger(__name__)

STATE_VERSION = 1
TRAIN_MODES = ("multimodal", "audioonly", "videoonly")
# Validation heads per training mode: name -> forward mode (a multimodal model given one modality uses missing*).
EVAL_MODES = {
    "multimodal": {"multimodal": "multimodal", "audio": "missingaudioonly", "video": "missingvideoonly"},
    "audioonly": {"audio": "audioonly"},
    "videoonly": {"video": "videoonly"},
}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (saved as ``train_config.json``).

    Attributes:
        catalog: output root of ``avtta shard`` / ``avtta import`` (unused when data is passed to :func:`train`).
        dataset: data set name in the catalog (required with a catalog).
        model: registered model name.
        out: run folder, or an s3:// URL (see :func:`train`).
        cache_dir: a catalog behind a URL: keep its shards in this local folder for the next epoch or run.
        epochs: total epochs (a resumed run continues up to this number).
        lr: base learning rate; ``None`` = 1e-3 from scratch, 1e-4 when fine-tuning from ``init``.
        head_lr_factor: learning-rate multiplier of ``mlp_head`` (CAV-MAE: 10).
        weight_decay: AdamW decoupled weight decay.
        warmup_fraction: share of all steps with a linear learning-rate warm-up (then cosine to ``min_lr_ratio``).
        batch_size: clips per step.
        mode: ``multimodal`` (default), ``audioonly`` or ``videoonly`` fine-tuning.
        label_smoothing: cross-entropy label smoothing (CAV-MAE: 0.1).
        freqm, timem: SpecAugment mask widths of the training reader (CAV-MAE: 48, 192).
        train_split, val_split: catalog splits; ``val_split=None`` skips validation.
        init: optional checkpoint to start from (released ``.pth`` or ours); a different class count gets a new head.
        num_classes: classes; ``None`` = the catalog's class table for ``dataset``.
        model_overrides: architecture overrides passed to ``create_model``.
        seed: model initialisation and data-order seed.
        num_workers: reader worker processes.
        access: shard reading, ``"index"`` (random access) or ``"stream"`` (sequential; another data order).
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1`` ...
        progress: show a tqdm bar.
        resample: valuation-based re-sampling, ``none``, ``sample`` or ``modality`` (Wei et al. CVPR'24,
            ``models/resample.py``): from epoch ``resample_warmup`` on, each epoch is a plan of sample indices (with
            a modality dropped for the extra copies) made from the valuation of the model after the epoch before.
        resample_warmup: plain epochs before the first re-sampled one (official 5).
        resample_part_ratio, resample_alpha: modality level: the share of the set that estimates the gap, and the
            scale of the re-sampled share (official 0.2, 1.0).
        structure_loss: weight of the Multi-Sinkhorn-Knopp structure-preserving loss (Swetha et al. ICCV'23,
            ``models/structure.py``); 0 = off.
        structure_anchors, structure_queue, structure_epsilon, structure_iterations: its anchors per modality and
            space, embedding queue size, Sinkhorn epsilon and iterations (official 64, 5500, 0.07, 20).
    """

    catalog: str | None = None
    dataset: str | None = None
    model: str = "cav_mae_ft_tiny"
    out: str = "runs/train"
    cache_dir: str | None = None  # a catalog on s3://: keep its shards in this local folder (sha256-keyed)
    epochs: int = 10
    lr: float | None = None
    head_lr_factor: float = 10.0
    weight_decay: float = 0.05
    warmup_fraction: float = 0.1
    min_lr_ratio: float = 0.01
    batch_size: int = 32
    mode: str = "multimodal"
    label_smoothing: float = 0.1
    freqm: int = 48
    timem: int = 192
    train_split: str = "train"
    val_split: str | None = "test"
    init: str | None = None
    num_classes: int | None = None
    model_overrides: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    num_workers: int = 2
    access: str = "index"
    device: str = "auto"
    progress: bool = True
    resample: str = "none"
    resample_warmup: int = 5
    resample_part_ratio: float = 0.2
    resample_alpha: float = 1.0
    structure_loss: float = 0.0
    structure_anchors: int = 64
    structure_queue: int = 5500
    structure_epsilon: float = 0.07
    structure_iterations: int = 20

    def __post_init__(self) -> None:
        if self.mode not in TRAIN_MODES:
            raise ValueError(f"train mode must be one of {TRAIN_MODES}, got {self.mode!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.warmup_fraction < 1 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"warmup_fraction must be in [0, 1) and min_lr_ratio in [0, 1], got {self}")
        self.resample_config  # noqa: B018  # validates the resample_* fields
        if not self.structure_loss >= 0:
            raise ValueError(f"structure_loss must be >= 0, got {self.structure_loss}")
        self.structure_config  # noqa: B018  # validates the structure_* fields
        if (self.resample != "none" or self.structure_loss > 0) and self.mode != "multimodal":
            raise ValueError(f"--resample and --structure-loss need mode multimodal, got {self.mode!r}")
        if self.resample != "none" and self.structure_loss > 0:
            # The structure features of a row with a dropped modality are undefined (lift later: loss on drop 0 rows).
            raise ValueError("--resample and --structure-loss cannot be combined (yet): choose one")
        if self.resample != "none" and self.access != "index":
            raise ValueError(f"--resample needs access 'index' (the plan lists sample indices), got {self.access!r}")

    @property
    def resample_config(self) -> ResampleConfig:
        """The frozen re-sampling config of the ``resample_*`` fields."""
        return ResampleConfig(method=self.resample, warmup=self.resample_warmup, part_ratio=self.resample_part_ratio,
                              alpha=self.resample_alpha)  # fmt: skip

    @property
    def structure_config(self) -> StructureConfig:
        """The frozen structure-loss config of the ``structure_*`` fields."""
        return StructureConfig(weight=self.structure_loss, num_anchors=self.structure_anchors,
                               queue_size=self.structure_queue, epsilon=self.structure_epsilon,
                               iterations=self.structure_iterations)  # fmt: skip

    @property
    def base_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        return 1e-4 if self.init else 1e-3

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "resolved_lr": self.base_lr}


@dataclass
class TrainResult:
    """What :func:`train` produced."""

    out: Path
    checkpoint: Path
    epochs_done: int
    history: list[dict[str, Any]]


# ------------------------------------------------------------------------------------------------- helpers


def _device(name: str) -> torch.device:
    from avtta.device import resolve_device

    return resolve_device(name)


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warm-up over ``warmup`` steps (from 1/warmup), then cosine from 1 to ``min_ratio`` at ``total``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _build_optimizer(model: CAVMAEFT, cfg: TrainConfig, structure: nn.Module | None = None) -> torch.optim.AdamW:
    head = {name for name, _ in model.select_parameters("head")}
    no_decay = model.no_weight_decay()
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            key = (name in head, name in no_decay)
            groups.setdefault(key, []).append(param)
    param_groups = []
    for (is_head, is_no_decay), params in sorted(groups.items()):
        base = cfg.base_lr * (cfg.head_lr_factor if is_head else 1.0)
        param_groups.append({
            "params": params, "lr": base, "base_lr": base, "weight_decay": 0.0 if is_no_decay else cfg.weight_decay,
        })  # fmt: skip
    if structure is not None:  # the anchors: base lr, no decay (upstream: the model's Adam without weight decay)
        params = list(structure.parameters())
        param_groups.append({"params": params, "lr": cfg.base_lr, "base_lr": cfg.base_lr, "weight_decay": 0.0})
    return torch.optim.AdamW(param_groups, lr=cfg.base_lr, weight_decay=cfg.weight_decay)


def _move(batch: Mapping[str, Any], device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    for key in ("audio", "video", "label"):
        if key not in batch:
            raise ValueError(f"training batch lacks {key!r} (has {sorted(batch)})")
    non_blocking = device.type == "cuda"
    return (
        batch["audio"].to(device, non_blocking=non_blocking).float(),
        batch["video"].to(device, non_blocking=non_blocking).float(),
        batch["label"].to(device, non_blocking=non_blocking).long(),
    )


def _forward(model: CAVMAEFT, audio: Tensor, video: Tensor, mode: str) -> Tensor:
    if mode == "audioonly":
        return model(audio, None, "audioonly")
    if mode == "videoonly":
        return model(None, video, "videoonly")
    return model(audio, video, "multimodal")


def eval_logits(model: CAVMAEFT, audio: Tensor, video: Tensor, train_mode: str = "multimodal") -> dict[str, Tensor]:
    """Logits of every validation head of ``train_mode`` (``EVAL_MODES``), sharing the modality stacks.

    Equal to ``model(audio, video, mode)`` for each head's mode, with one run of each stack instead of one per head.
    """
    a = model.encode("a", audio) if train_mode != "videoonly" else None
    v = model.encode("v", video) if train_mode != "audioonly" else None
    return {name: model.head(model.fuse_pool(a, v, mode)) for name, mode in EVAL_MODES[train_mode].items()}


@torch.no_grad()
def evaluate(model: CAVMAEFT, batches: Iterable[Mapping[str, Any]], train_mode: str = "multimodal") -> dict[str, float]:
    """Per-sample accuracy (percent) of the validation heads of ``train_mode`` (see ``EVAL_MODES``).

    For a multimodal model: ``acc_multimodal``, ``acc_audio`` (mode ``missingaudioonly``) and ``acc_video``
    (``missingvideoonly``).
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct = dict.fromkeys(EVAL_MODES[train_mode], 0)
    total = 0
    for batch in batches:
        audio, video, label = _move(batch, device)
        with torch.autocast("cuda", dtype=torch.float16, enabled=device.type == "cuda"):
            logits = eval_logits(model, audio, video, train_mode)
        for name, value in logits.items():
            correct[name] += int((value.argmax(-1) == label).sum())
        total += int(label.numel())
    model.train(was_training)
    if total == 0:
        raise ValueError("evaluate: the validation data is empty")
    return {f"acc_{name}": 100.0 * count / total for name, count in correct.items()}


# ------------------------------------------------------------------------------------------------- state


def _save_state(
    path: Path,
    model: CAVMAEFT,
    optimizer: torch.optim.Optimizer,
    scaler,
    progress: dict,
    structure: StructurePreserver | None = None,
) -> None:
    """Model + AdamW state (tensors in safetensors, the rest in JSON), written atomically."""
    tensors = {f"model.{k}": v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    if structure is not None:
        tensors.update(structure.state_tensors())  # "structure.*": anchors, queues, fill count (exact resume)
    opt = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for index, state in opt["state"].items():
        for key, value in state.items():
            if isinstance(value, Tensor):
                tensors[f"optim.{index}.{key}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    meta = {
        "version": STATE_VERSION,
        "progress": progress,
        "param_groups": opt["param_groups"],
        "optim_scalars": scalars,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))
    atomic_write(path.with_suffix(".json"), json.dumps(meta, indent=1))


def _load_state(
    path: Path, model: CAVMAEFT, optimizer: torch.optim.Optimizer, scaler, structure: StructurePreserver | None = None
) -> dict:
    meta_path = path.with_suffix(".json")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{meta_path}: unreadable training state ({err})") from err
    if meta.get("version") != STATE_VERSION:
        raise ValueError(f"{meta_path}: training state version {meta.get('version')} != {STATE_VERSION}")
    tensors = load_file(str(path), device="cpu")
    model_state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    model.load_state_dict(model_state, strict=True)
    if structure is not None:
        structure.load_tensors(tensors, source=str(path))
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for index, values in meta["optim_scalars"].items():
        state.setdefault(int(index), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    if scaler is not None and meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])
    return meta["progress"]


# ------------------------------------------------------------------------------------------------- training


def _open(cfg: TrainConfig, split: str, training: bool) -> Iterable[Mapping[str, Any]]:
    from avtta.manifests import open_dataset  # data layer; imported lazily so the model code stays torch/timm-only

    if cfg.catalog is None or not cfg.dataset:
        raise ValueError("TrainConfig.catalog and .dataset are required when no data iterables are passed to train()")
    return open_dataset(
        cfg.catalog, dataset=cfg.dataset, split=split, corruption="clean", severity=0, batch_size=cfg.batch_size,
        seed=cfg.seed, shuffle=training, frame="random" if training else "eval", freqm=cfg.freqm if training else 0,
        timem=cfg.timem if training else 0, num_workers=cfg.num_workers, access=cfg.access, cache_dir=cfg.cache_dir,
    )  # fmt: skip


def _num_classes(cfg: TrainConfig) -> int:
    if cfg.num_classes is not None:
        return cfg.num_classes
    if cfg.catalog is None or not cfg.dataset:
        raise ValueError("TrainConfig.num_classes is required without a catalog and dataset")
    from avtta.manifests import Catalog

    return len(Catalog(cfg.catalog).classes(cfg.dataset))


def _build_model(cfg: TrainConfig, num_classes: int) -> CAVMAEFT:
    if cfg.init is None:
        return create_model(cfg.model, num_classes=num_classes, init_seed=cfg.seed, **cfg.model_overrides)
    model = create_model(cfg.model, checkpoint=cfg.init, **cfg.model_overrides)
    if model.num_classes != num_classes:
        _log.info("%s has %d classes; new %d-class head", cfg.init, model.num_classes, num_classes)
        model.reset_classifier(num_classes, seed=cfg.seed)
    return model


def saved_config(path: str | Path) -> dict[str, Any]:
    """A run's ``train_config.json``, with the default of every field it predates (e.g. a run saved before the
    balance options existed compares as ``resample="none"``, ``structure_loss=0``)."""
    saved = json.loads(storage.read_text(path))
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    defaults = {
        name: f.default for name, f in fields.items() if f.default is not dataclasses.MISSING and name not in saved
    }
    return {**defaults, **saved}


def _valuation_data(cfg: TrainConfig, train_data: Any) -> Iterable[Mapping[str, Any]]:
    """The training set in dataset order with the evaluation view (eval frame, no SpecAugment) for the valuation.

    Same catalog and split as the training reader, so its sample ``i`` is the training reader's sample ``i``
    (the index a plan lists); a reader passed to :func:`train` without a catalog provides ``valuation_view()``.
    """
    if cfg.catalog is None:
        if not hasattr(train_data, "valuation_view"):
            raise TypeError("--resample without a catalog needs a training reader with valuation_view()")
        return train_data.valuation_view()
    return _open(cfg, cfg.train_split, False)


def _training_record(cfg: TrainConfig) -> dict[str, Any]:
    """What model.json records about how the model was trained (the balance options)."""
    record: dict[str, Any] = {"resample": dataclasses.asdict(cfg.resample_config), "structure": None}
    if cfg.structure_loss > 0:
        record["structure"] = {**dataclasses.asdict(cfg.structure_config), "tensor_prefix": CHECKPOINT_PREFIX}
    return record


def train(
    cfg: TrainConfig,
    train_data: Iterable[Mapping[str, Any]] | None = None,
    val_data: Iterable[Mapping[str, Any]] | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train (or resume training) and write the run folder ``cfg.out``.

    ``cfg.out`` may be a URL (``s3://``): the run then lives in a local temporary folder, first filled from the URL
    (what a resume continues from), and its files are uploaded after every epoch, the training state last (so the
    state never names an epoch whose model is not there yet). :class:`TrainResult` then names the URLs.

    Args:
        cfg: the run.
        train_data: batches for one epoch, iterated once per epoch (``set_epoch(epoch)`` is called when it has
            one); default: the catalog's ``train_split`` through :func:`avtta.manifests.open_dataset`.
        val_data: validation batches; default: the catalog's ``val_split`` (none if ``val_split`` is ``None``).
        resume: continue from ``state.safetensors`` in ``cfg.out`` (a fresh start when there is none).

    Returns:
        The run folder, the model checkpoint and the per-epoch history.
    """
    if storage.is_local(cfg.out):
        return _train(cfg, train_data, val_data, resume)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="avtta-train-") as tmp:
        mirror = RunMirror(cfg.out, Path(tmp))
        mirror.download()
        local = dataclasses.replace(cfg, out=tmp)
        result = _train(local, train_data, val_data, resume, publish=mirror.upload, recorded_out=cfg.out)
    return dataclasses.replace(result, out=cfg.out, checkpoint=storage.join(cfg.out, "model.safetensors"))


class RunMirror:
    """A run folder behind a URL, kept in a local folder: :meth:`download` once, :meth:`upload` what changed."""

    LAST = ("state.safetensors", "state.json")  # the resume point goes up after everything it refers to

    def __init__(self, url: str, local: Path):
        self.url, self.local = url, local
        self._sent: dict[str, tuple[int, int]] = {}

    def download(self) -> None:
        for url in storage.find(self.url):
            rel = url[len(self.url.rstrip("/")) + 1 :]
            target = self.local / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with storage.open_read(url) as src, open(target, "wb") as dst:
                for block in iter(lambda src=src: src.read(1 << 20), b""):
                    dst.write(block)
            self._sent[rel] = self._stamp(target)

    def upload(self) -> None:
        files = sorted(p.relative_to(self.local).as_posix() for p in self.local.rglob("*") if p.is_file())
        for rel in sorted(files, key=lambda r: r in self.LAST):
            stamp = self._stamp(self.local / rel)
            if self._sent.get(rel) != stamp:
                storage.upload(self.local / rel, storage.join(self.url, rel))
                self._sent[rel] = stamp

    @staticmethod
    def _stamp(path: Path) -> tuple[int, int]:
        st = path.stat()
        return st.st_size, st.st_mtime_ns


def _train(
    cfg: TrainConfig,
    train_data: Iterable[Mapping[str, Any]] | None,
    val_data: Iterable[Mapping[str, Any]] | None,
    resume: bool,
    publish: Any = None,
    recorded_out: str | None = None,
) -> TrainResult:
    """:func:`train` into a local folder; ``publish()`` after each epoch's files (and ``recorded_out`` in the
    saved config instead of the local folder)."""
    out = Path(cfg.out)
    state_path = out / "state.safetensors"
    if state_path.exists() and not resume:
        raise ValueError(f"{out} already holds a training run: pass resume=True (--resume) or choose another --out")
    if resume and state_path.exists():
        saved = saved_config(out / "train_config.json")
        changed = {
            k: (saved.get(k), v)
            for k, v in cfg.to_json().items()
            if k not in ("epochs", "progress", "num_workers", "device", "catalog", "out", "cache_dir")
            and saved.get(k) != v
        }
        if changed:
            raise ValueError(f"{out}: cannot resume with a different config: {changed} (saved, requested)")
    out.mkdir(parents=True, exist_ok=True)
    device = _device(cfg.device)
    train_data = _open(cfg, cfg.train_split, True) if train_data is None else train_data
    if val_data is None and cfg.val_split is not None and cfg.catalog is not None:
        val_data = _open(cfg, cfg.val_split, False)
    try:
        steps_per_epoch = len(train_data)  # type: ignore[arg-type]
    except TypeError as err:
        raise TypeError("train_data must have a len() (number of batches per epoch) for the schedule") from err
    if steps_per_epoch < 1:
        raise ValueError("train_data is empty")

    model = _build_model(cfg, _num_classes(cfg)).to(device).train()
    structure = None
    if cfg.structure_loss > 0:
        d = model.embed_dim  # input space: the stacks' output width; transformed space: the fused width
        structure = StructurePreserver(cfg.structure_config, (d, d), d, seed=cfg.seed).to(device)
    rcfg = cfg.resample_config
    if rcfg.method != "none" and not hasattr(train_data, "set_order"):
        raise TypeError("--resample needs a training reader with set_order() (the indexed reader)")
    optimizer = _build_optimizer(model, cfg, structure)
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp) if use_amp else None
    total_steps = cfg.epochs * steps_per_epoch
    warmup = int(cfg.warmup_fraction * total_steps)

    progress = {"epochs_done": 0, "step": 0, "history": []}
    if resume and state_path.exists():
        progress = _load_state(state_path, model, optimizer, scaler, structure)
        _log.info("resuming %s after epoch %d (step %d)", out, progress["epochs_done"], progress["step"])
    saved_cfg = {**cfg.to_json(), **({"out": recorded_out} if recorded_out else {})}
    atomic_write(out / "train_config.json", json.dumps(saved_cfg, indent=2, sort_keys=True) + "\n")
    history: list[dict[str, Any]] = progress["history"]
    step = progress["step"]

    for epoch in range(progress["epochs_done"], cfg.epochs):
        if hasattr(train_data, "set_epoch"):
            train_data.set_epoch(epoch)  # reproducible per-epoch shuffling, also after a resume
        started = time.time()
        plan = None
        if rcfg.method != "none":
            # The model after epoch - 1 valuates the training set (or a resumed epoch reads the plan it wrote).
            plan = prepare_epoch_plan(
                out, rcfg, cfg.seed, epoch, train_data.num_samples,
                lambda: valuate(model, _valuation_data(cfg, train_data), logits_fn=eval_logits),
            )  # fmt: skip
            train_data.set_order(None if plan is None else plan.index.tolist())
        batches_this_epoch = len(train_data)
        model.train()
        loss_sum, correct, seen, row = 0.0, 0, 0, 0
        s_sum: dict[str, float] = {}
        bar = tqdm(train_data, total=batches_this_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   disable=not cfg.progress)  # fmt: skip
        for b, batch in enumerate(bar):
            audio, video, label = _move(batch, device)
            # A re-sampled epoch covers the same stretch of the schedule as a plain one (upstream: per-epoch StepLR).
            position = schedule_position(epoch, b, batches_this_epoch, steps_per_epoch)
            factor = lr_factor(position, total_steps, warmup, cfg.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * factor
            with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
                if plan is not None:  # batches come in plan order: the rows' drop codes are the plan's next ones
                    logits = planned_logits(model, audio, video, plan.drop[row : row + label.numel()])
                elif structure is not None:
                    logits, feats = structure_forward(model, audio, video)
                else:
                    logits = _forward(model, audio, video, cfg.mode)
            row += label.numel()
            loss = F.cross_entropy(logits.float(), label, label_smoothing=cfg.label_smoothing)
            if structure is not None:  # fp32, outside autocast; 0 until the queues are full
                s_loss, s_terms = structure(feats["in_a"], feats["in_v"], feats["out_a"], feats["out_v"])
                loss = loss + s_loss
                for k, v in {"loss": float(s_loss.detach()), **s_terms}.items():
                    s_sum[f"structure_{k}"] = s_sum.get(f"structure_{k}", 0.0) + v * label.numel()
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite training loss at epoch {epoch + 1}, step {step}")
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            step += 1
            loss_value = float(loss.detach())
            loss_sum += loss_value * label.numel()
            correct += int((logits.argmax(-1) == label).sum())
            seen += label.numel()
            bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
        record: dict[str, Any] = {
            "epoch": epoch + 1, "step": step, "train_loss": loss_sum / max(seen, 1),
            "train_acc": 100.0 * correct / max(seen, 1), "lr": optimizer.param_groups[0]["lr"],
        }  # fmt: skip
        if plan is not None:
            record.update({f"resample_{k}": v for k, v in plan.stats.items()})
        record.update({k: v / max(seen, 1) for k, v in s_sum.items()})
        if val_data is not None:
            record.update(evaluate(model, val_data, cfg.mode))
        record["seconds"] = round(time.time() - started, 2)
        history.append(record)
        _log.info("epoch %d/%d: %s", epoch + 1, cfg.epochs, {k: round(v, 4) for k, v in record.items()})
        # Model first, then the resume state: a crash in between repeats one epoch at worst.
        save_checkpoint(model, out / "model.safetensors", training=_training_record(cfg),
                        extra_tensors=structure.checkpoint_tensors() if structure is not None else None)  # fmt: skip
        atomic_write(out / "history.json", json.dumps(history, indent=1) + "\n")
        progress = {"epochs_done": epoch + 1, "step": step, "history": history}
        _save_state(state_path, model, optimizer, scaler, progress, structure)
        if publish is not None:
            publish()

    return TrainResult(out=out, checkpoint=out / "model.safetensors", epochs_done=progress["epochs_done"],
                       history=history)  # fmt: skip
