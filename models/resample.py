"""Valuation-based re-sampling of a training epoch (sample level and modality level).

Paper: Y. Wei, R. Feng, Z. Wang, D. Hu, "Enhancing Multimodal Cooperation via Sample-level Modality Valuation",
CVPR 2024. Upstream: GeWu-Lab/Valuate-and-Enhance-Multimodal-Cooperation, ``code/sample_level.py``,
``code/modality_level.py`` and the datasets ``AV_KS_Dataset_sample_level`` / ``AV_KS_Dataset_modality_level`` in
``code/datasets/dataloader.py``. Behaviour and the official-code bugs (each FIX or KEEP):
``docs/faithfulness.md`` (balanced source training).

Input: per-sample Shapley values ``phi_a``, ``phi_v`` in dataset (manifest) order, as computed by the valuation
pass (``phi_a = (v_a + v_both - v_v) / 2`` with ``v_both = 2 * fused correct``, ``v_a`` / ``v_v`` = audio-only /
video-only correct). Output: a :class:`ResamplePlan`, the epoch as rows ``(sample index, dropped modality, copy)``,
a deterministic function of ``(seed, epoch, valuation)``:

* every sample once with nothing dropped, then the extra copies, in the official order;
* shuffled with the same seeded permutation as avtta's plain epoch (``random.Random("<seed>:<epoch>:order")``, as
  ``shards/indexed.py`` ``IndexedLoader.order``): a plan without extra copies is exactly the plain epoch order.

Drop codes are the official ones: 0 = nothing dropped, 1 = audio dropped (the row trains video), 2 = video dropped
(the row trains audio). A plan serialises to JSON (:func:`save_plan` / :func:`load_plan`) and to plain columns
(:meth:`ResamplePlan.to_columns`, e.g. for a Parquet table), so a killed epoch resumes with the same rows.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DROPS",
    "METHODS",
    "PLAN_FORMAT",
    "ResampleConfig",
    "ResamplePlan",
    "load_plan",
    "modality_level_plan",
    "sample_level_copies",
    "sample_level_plan",
    "save_plan",
    "valuation_digest",
]

PLAN_FORMAT = "avtta.resample_plan"
PLAN_VERSION = 1
METHODS = ("none", "sample", "modality")
# Index = the drop code of the official datasets ("#visual = 2, audio = 1, none = 0").
DROPS = ("none", "audio", "video")
DROP_NONE, DROP_AUDIO, DROP_VIDEO = 0, 1, 2
FUNCS = ("linear", "tanh", "square")


@dataclass(frozen=True)
class ResampleConfig:
    """Re-sampling of the training epochs (the defaults are the official ones).

    Attributes:
        method: ``none``, ``sample`` (sample-level, ``sample_level.py``) or ``modality`` (``modality_level.py``).
        warmup: plain epochs before the first re-sampled one (official ``--warmup 5``): epochs ``0 .. warmup-1``
            are plain, epoch ``e >= warmup`` uses the valuation of the model after epoch ``e - 1``.
        part_ratio: modality level: share of the training set whose mean phi estimates the modality gap
            (official ``--part_ratio 0.2``).
        alpha: modality level: scale of the re-sampled share (official ``--alpha 1``).
        func: modality level: ``linear`` (official default), ``tanh`` or ``square``.
        subset_replace: modality level: draw the estimation subset with replacement, as the official
            ``np.random.choice(N, num)`` does (KEEP); default ``False`` draws a true subset (FIX, see the docs).
    """

    method: str = "none"
    warmup: int = 5
    part_ratio: float = 0.2
    alpha: float = 1.0
    func: str = "linear"
    subset_replace: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"resample method must be one of {METHODS}, got {self.method!r}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 1:
            raise ValueError(f"resample warmup must be an int >= 1 (the first valuation needs a trained model), got "
                             f"{self.warmup!r}")  # fmt: skip
        if not 0 < self.part_ratio <= 1:
            raise ValueError(f"resample part_ratio must be in (0, 1], got {self.part_ratio!r}")
        if not (math.isfinite(self.alpha) and self.alpha >= 0):
            raise ValueError(f"resample alpha must be finite and >= 0, got {self.alpha!r}")
        if self.func not in FUNCS:
            raise ValueError(f"resample func must be one of {FUNCS}, got {self.func!r}")

    def active(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` (0-based) is re-sampled (and so needs a valuation pass before it)."""
        return self.method != "none" and epoch >= self.warmup


@dataclass(frozen=True)
class ResamplePlan:
    """One epoch as rows: ``index[r]`` (sample in dataset order), ``drop[r]`` (code, see :data:`DROPS`) and
    ``copy[r]`` (0 for the sample's own row, 1, 2, ... for its extra copies). Rows are in reading order.

    Attributes:
        method, seed, epoch, num_samples: what the plan was made for.
        valuation: :func:`valuation_digest` of the phis it was made from.
        stats: what the plan was derived from (means, counts), JSON-ready; goes to ``history.json``.
    """

    method: str
    seed: int
    epoch: int
    num_samples: int
    valuation: str
    index: np.ndarray
    drop: np.ndarray
    copy: np.ndarray
    stats: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ResamplePlan):
            return NotImplemented
        return self.header() == other.header() and all(
            np.array_equal(getattr(self, name), getattr(other, name)) for name in ("index", "drop", "copy")
        )

    __hash__ = None  # type: ignore[assignment]  # mutable numpy payload

    def header(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT, "version": PLAN_VERSION, "method": self.method, "seed": self.seed,
            "epoch": self.epoch, "num_samples": self.num_samples, "valuation": self.valuation, "stats": self.stats,
        }  # fmt: skip

    def to_columns(self) -> dict[str, np.ndarray]:
        """The rows as columns (``index`` int64, ``drop`` int8 code, ``copy`` int16), e.g. ``pa.table(...)``."""
        return {"index": self.index.copy(), "drop": self.drop.copy(), "copy": self.copy.copy()}

    def drop_names(self) -> list[str]:
        return [DROPS[d] for d in self.drop.tolist()]

    def to_json(self) -> dict[str, Any]:
        return {**self.header(), "drops": list(DROPS), "index": self.index.tolist(), "drop": self.drop.tolist(),
                "copy": self.copy.tolist()}  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str = "plan") -> ResamplePlan:
        if not isinstance(data, Mapping) or data.get("format") != PLAN_FORMAT:
            raise ValueError(f"{source}: not a re-sampling plan (expected format {PLAN_FORMAT!r})")
        if data.get("version") != PLAN_VERSION:
            raise ValueError(f"{source}: plan version {data.get('version')!r} != {PLAN_VERSION}")
        if list(data.get("drops", [])) != list(DROPS):
            raise ValueError(f"{source}: drop codes {data.get('drops')!r} != {list(DROPS)}")
        try:
            plan = cls(
                method=str(data["method"]), seed=int(data["seed"]), epoch=int(data["epoch"]),
                num_samples=int(data["num_samples"]), valuation=str(data["valuation"]),
                index=np.asarray(data["index"], dtype=np.int64), drop=np.asarray(data["drop"], dtype=np.int8),
                copy=np.asarray(data["copy"], dtype=np.int16), stats=dict(data.get("stats", {})),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{source}: malformed plan ({type(err).__name__}: {err})") from None
        plan.validate(source)
        return plan

    def validate(self, source: str = "plan") -> None:
        """Raise ``ValueError`` (naming ``source``) unless the rows are consistent."""
        n = len(self)
        if self.method not in METHODS or self.method == "none":
            raise ValueError(f"{source}: plan method {self.method!r} is not one of {METHODS[1:]}")
        if self.index.shape != (n,) or self.drop.shape != (n,) or self.copy.shape != (n,):
            raise ValueError(f"{source}: index, drop and copy have different lengths")
        if n and (self.index.min() < 0 or self.index.max() >= self.num_samples):
            raise ValueError(f"{source}: sample index outside [0, {self.num_samples})")
        if n and (self.drop.min() < 0 or self.drop.max() >= len(DROPS)):
            raise ValueError(f"{source}: drop code outside [0, {len(DROPS)})")
        if np.bincount(self.index[self.copy == 0], minlength=self.num_samples).tolist() != [1] * self.num_samples:
            raise ValueError(f"{source}: every sample must have exactly one copy-0 row")


def valuation_digest(phi_a: np.ndarray, phi_v: np.ndarray) -> str:
    """SHA-256 (hex, 16 characters) of the two phi arrays as float64: names the valuation a plan came from."""
    h = hashlib.sha256()
    for phi in (phi_a, phi_v):
        h.update(np.ascontiguousarray(phi, dtype=np.float64).tobytes())
    return h.hexdigest()[:16]


def _check_phis(phi_a: np.ndarray, phi_v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(phi_a, dtype=np.float64)
    v = np.asarray(phi_v, dtype=np.float64)
    if a.ndim != 1 or a.shape != v.shape:
        raise ValueError(f"phi_a and phi_v must be 1-D arrays of one length, got {a.shape} and {v.shape}")
    if a.size == 0:
        raise ValueError("phi_a / phi_v are empty: no training samples were valuated")
    if not (np.isfinite(a).all() and np.isfinite(v).all()):
        raise ValueError("phi_a / phi_v contain NaN or inf")
    return a, v


def _check_seed_epoch(seed: int, epoch: int) -> None:
    for name, value in (("seed", seed), ("epoch", epoch)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")


def _shuffled(method: str, seed: int, epoch: int, n: int, rows: list[tuple[int, int, int]], stats) -> ResamplePlan:
    # The plain epoch's permutation (IndexedLoader.order): same generator, same string, a list of the same length.
    random.Random(f"{seed}:{epoch}:order").shuffle(rows)
    table = np.asarray(rows, dtype=np.int64).reshape(-1, 3)
    index, drop, copy = table[:, 0].copy(), table[:, 1].astype(np.int8), table[:, 2].astype(np.int16)
    return ResamplePlan(method, int(seed), int(epoch), n, stats.pop("valuation"), index, drop, copy, stats)


def sample_level_copies(phi: np.ndarray) -> np.ndarray:
    """Extra copies per sample for one modality's phi (``dataloader.py`` ``AV_KS_Dataset_sample_level``).

    Bands (half-open, FIX of the official strict ``0.4 < phi < 1`` / ``-0.1 < phi < 0.4`` / ``phi < -0.1``, which
    give a phi of exactly 0.4 or -0.1 no copy; with the 0/1/2 valuation phi is always one of -0.5, 0, 0.5, 1, 1.5,
    so the two agree on every reachable value): ``phi >= 1``: 0; ``0.4 <= phi < 1``: 1; ``-0.1 <= phi < 0.4``: 2;
    ``phi < -0.1``: 3.
    """
    phi = np.asarray(phi, dtype=np.float64)
    copies = np.zeros(phi.shape, dtype=np.int64)
    copies[(phi >= 0.4) & (phi < 1.0)] = 1
    copies[(phi >= -0.1) & (phi < 0.4)] = 2
    copies[phi < -0.1] = 3
    return copies


def sample_level_plan(phi_a: np.ndarray, phi_v: np.ndarray, seed: int, epoch: int) -> ResamplePlan:
    """The sample-level epoch (``sample_level.py``): each sample once, plus extra copies by its phis.

    As the official code, **both** modalities are checked, independently (not only the weaker one): ``phi_a``
    gives ``sample_level_copies(phi_a)`` copies with the **video dropped** (drop 2: they train the audio whose
    contribution was low), ``phi_v`` gives copies with the **audio dropped** (drop 1). A sample whose fused
    prediction is wrong can so get copies for both. Extra rows are appended sample by sample, audio-based copies
    first (the official append order), then everything is shuffled like the plain epoch.
    """
    a, v = _check_phis(phi_a, phi_v)
    _check_seed_epoch(seed, epoch)
    n = a.shape[0]
    rows = [(i, DROP_NONE, 0) for i in range(n)]
    copies_a, copies_v = sample_level_copies(a).tolist(), sample_level_copies(v).tolist()
    for i in range(n):
        rows.extend((i, DROP_VIDEO, 1 + c) for c in range(copies_a[i]))
        rows.extend((i, DROP_AUDIO, 1 + copies_a[i] + c) for c in range(copies_v[i]))
    stats = {
        "valuation": valuation_digest(a, v), "phi_a_mean": float(a.mean()), "phi_v_mean": float(v.mean()),
        "extra_drop_video": int(sum(copies_a)), "extra_drop_audio": int(sum(copies_v)), "rows": len(rows),
    }  # fmt: skip
    return _shuffled("sample", seed, epoch, n, rows, stats)


def modality_level_plan(
    phi_a: np.ndarray, phi_v: np.ndarray, seed: int, epoch: int, cfg: ResampleConfig | None = None
) -> ResamplePlan:
    """The modality-level epoch (``modality_level.py`` + ``AV_KS_Dataset_modality_level``).

    1. Means ``m_a``, ``m_v`` of phi over a random ``part_ratio`` share of the samples (``max(1, int(N * ratio))``
       of them; seeded from ``(seed, epoch)``).
    2. ``gap = 1 - m``; ``d = |gap_a - gap_v| / 3 * 2`` and ``linear``: ``d * alpha``, ``tanh``: ``tanh(d * alpha)``,
       ``square``: ``d ** 1.5 * alpha``.
    3. ``int(d * N)`` samples drawn uniformly **with replacement** (as the official ``np.random.choice``) are added
       once more with the **stronger modality dropped**: video (drop 2) when ``gap_a > gap_v`` (audio contributes
       less), else audio (drop 1).
    """
    cfg = cfg or ResampleConfig(method="modality")
    a, v = _check_phis(phi_a, phi_v)
    _check_seed_epoch(seed, epoch)
    n = a.shape[0]
    num = max(1, int(n * cfg.part_ratio))  # the official int() gives 0 below 5 samples and divides by it (FIX)
    pick = random.Random(f"{seed}:{epoch}:valuation-subset")
    subset = pick.choices(range(n), k=num) if cfg.subset_replace else pick.sample(range(n), num)
    # Sequential float64 sums in subset order, as the official Python loop (exact for the 0/1/2 valuation's phis).
    mean_a = math.fsum(a[subset].tolist()) / num
    mean_v = math.fsum(v[subset].tolist()) / num
    gap_a, gap_v = 1.0 - mean_a, 1.0 - mean_v
    base = abs(gap_a - gap_v) / 3 * 2
    if cfg.func == "linear":
        difference = base * cfg.alpha
    elif cfg.func == "tanh":
        difference = math.tanh(base * cfg.alpha)
    else:
        difference = base**1.5 * cfg.alpha
    count = int(difference * n)
    drop = DROP_VIDEO if gap_a > gap_v else DROP_AUDIO
    chosen = random.Random(f"{seed}:{epoch}:resample").choices(range(n), k=count)
    rows = [(i, DROP_NONE, 0) for i in range(n)]
    seen: dict[int, int] = {}
    for i in chosen:
        seen[i] = seen.get(i, 0) + 1
        rows.append((i, drop, seen[i]))
    stats = {
        "valuation": valuation_digest(a, v), "phi_a_mean": float(a.mean()), "phi_v_mean": float(v.mean()),
        "subset_size": num, "subset_phi_a_mean": mean_a, "subset_phi_v_mean": mean_v, "difference": difference,
        "extra_drop_video": count if drop == DROP_VIDEO else 0, "extra_drop_audio": count if drop == DROP_AUDIO else 0,
        "rows": len(rows),
    }  # fmt: skip
    return _shuffled("modality", seed, epoch, n, rows, stats)


def save_plan(plan: ResamplePlan, path: str | Path) -> Path:
    """Write ``plan`` as JSON, atomically (a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(plan.to_json(), separators=(",", ":")) + "\n")
    os.replace(tmp, path)
    return path


def load_plan(path: str | Path, **expect: Any) -> ResamplePlan:
    """Read a plan written by :func:`save_plan`.

    Args:
        path: the JSON file.
        **expect: header values it must have (e.g. ``seed=0, epoch=5, method="sample", num_samples=N``).

    Raises:
        ValueError: unreadable, malformed, or a header value differs from ``expect`` (named with the file).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: unreadable re-sampling plan ({err})") from None
    plan = ResamplePlan.from_json(data, source=str(path))
    header = plan.header()
    wrong = {k: (header.get(k), v) for k, v in expect.items() if header.get(k) != v}
    if wrong:
        raise ValueError(f"{path}: plan made for another run: {wrong} (in file, expected)")
    return plan
