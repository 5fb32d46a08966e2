"""Public entry points: corruption specs, options, parsing, seeding and :func:`apply_corruption`."""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from avtta.shards.schema import FRAME_SIZE
from PIL import Image

from . import tables
from .registry import AUDIO, AV, VIDEO, AudioOp, Context, Params, VisualOp

try:  # importing registers the corruptions; their kernels need SciPy and OpenCV
    from . import audio, audio_visual, video  # noqa: F401
except ImportError as err:  # without them (a bare GPU machine) specs still parse; apply_corruption raises
    _KERNELS_MISSING: ImportError | None = err
else:
    _KERNELS_MISSING = None

MODALITIES = ("clean", "video", "audio", "av")
_REGISTRIES: dict[str, dict] = {"video": VIDEO, "audio": AUDIO, "av": AV}
_ORDERS = {"video": tables.VIDEO_ORDER, "audio": tables.AUDIO_ORDER, "av": tables.AV_ORDER}
_SPEC_RE = re.compile(r"^(?P<modality>[a-z]+):(?P<name>[a-z_]+)@(?P<sev>\d+(?:-\d+)?)$")


@dataclass(frozen=True)
class CorruptionSpec:
    """One corruption at one severity; ``CorruptionSpec("clean", "clean", 0)`` is the identity."""

    modality: str
    name: str
    severity: int

    def __post_init__(self) -> None:
        if self.modality == "clean":
            if (self.name, self.severity) != ("clean", 0):
                raise ValueError(f"clean spec must be CorruptionSpec('clean', 'clean', 0), got {self!r}")
            return
        if self.modality not in _REGISTRIES:
            raise ValueError(f"unknown corruption modality {self.modality!r}; valid: {', '.join(MODALITIES)}")
        names = _ORDERS[self.modality]
        if self.name not in names:
            raise ValueError(f"unknown {self.modality} corruption {self.name!r}; valid: {', '.join(names)}")
        if self.severity not in tables.SEVERITIES:
            raise ValueError(f"severity {self.severity!r} of {self.modality}:{self.name} is not one of 1..5")

    def __str__(self) -> str:
        return format_spec(self.modality, self.name, self.severity)

    @classmethod
    def parse(cls, text: str, *, strict: bool = True) -> CorruptionSpec:
        """One spec from ``"clean"`` / ``"none"`` / ``"MODALITY:NAME@SEVERITY"`` (no ``all``, no ranges).

        Args:
            text: the spec string.
            strict: check the name and severity against the registry. ``strict=False`` accepts any name and any
                non-negative severity (shard sets imported under a published name, joined pairs such as
                ``av:fog+rain@5``), with the same syntax.
        """
        modality, name, severity = parse_spec_text(text)
        if strict:
            return cls(modality, name, severity)
        spec = object.__new__(cls)  # the same frozen value without the registry checks
        for field, value in (("modality", modality), ("name", name), ("severity", severity)):
            object.__setattr__(spec, field, value)
        return spec


_ONE_RE = re.compile(r"^(?P<modality>[a-z]+):(?P<name>[^:@/\s]+)@(?P<sev>\d+)$")


def format_spec(modality: str, name: str, severity: int) -> str:
    """The one string form of a corruption / shard-set selection: ``clean`` or ``modality:name@severity``."""
    return "clean" if modality == "clean" else f"{modality}:{name}@{int(severity)}"


def parse_spec_text(text: str) -> tuple[str, str, int]:
    """``"clean"``/``"none"`` -> ("clean", "clean", 0); ``"video:fog@5"`` -> ("video", "fog", 5); else ValueError."""
    token = str(text).strip()
    if token.lower() in ("none", "clean"):
        return "clean", "clean", 0
    match = _ONE_RE.match(token)
    if match is None:
        raise ValueError(f"bad corruption spec {text!r}: expected 'clean' or MODALITY:NAME@SEVERITY (e.g. video:fog@5)")
    return match["modality"], match["name"], int(match["sev"])


CLEAN = CorruptionSpec("clean", "clean", 0)


@dataclass(frozen=True, kw_only=True)
class CorruptionOptions:
    """How corruptions are made (picklable; every field has a default).

    Attributes:
        noise_dir: folder of environmental noise recordings (``<category>.wav`` or ``<category>/``); None ->
            procedurally synthesised noise (not comparable with published numbers).
        reference_frames: reproduce how the Kinetics50-C / VGGSound-C generator prepared frames (spec items 26-27):
            ``Resize(256)`` (bilinear) + ``CenterCrop(224)`` before corrupting. Output frames are then 224 x 224.
        snr_db: mix every additive audio noise at this SNR (dB) instead of the severity table's level.
        reference_jpeg: also round-trip the corrupted frame through JPEG quality 85 (``optimize=True``), as the
            reference saved it (item 27); leave off when the frames are stored as JPEG later anyway.
        crowd_image_dir: folder of RGBA person cut-outs (AVRobustBench ``crowd_image``) for ``av:crowd``; None ->
            a procedurally drawn silhouette.
    """

    noise_dir: str | None = None
    reference_frames: bool = False
    snr_db: float | None = None
    reference_jpeg: bool = False
    crowd_image_dir: str | None = None


def list_corruptions() -> list[str]:
    """Every corruption as ``modality:name``, in the reference scripts' orders."""
    return [f"{m}:{n}" for m in ("video", "audio", "av") for n in _ORDERS[m]]


def _parse_one(text: str) -> list[CorruptionSpec]:
    token = text.strip()
    if token.lower() in ("none", "clean"):
        return [CLEAN]
    match = _SPEC_RE.match(token)
    if match is None:
        raise ValueError(
            f"bad corruption spec {text!r}: expected 'none', 'clean' or MODALITY:NAME@SEVERITY "
            f"(e.g. video:gaussian_noise@5, audio:all@1-5); modalities: video, audio, av"
        )
    modality, name, sev = match["modality"], match["name"], match["sev"]
    if modality not in _REGISTRIES:
        raise ValueError(f"unknown corruption modality {modality!r} in {text!r}; valid: video, audio, av, none")
    names = _ORDERS[modality]
    if name != "all" and name not in names:
        raise ValueError(f"unknown {modality} corruption {name!r} in {text!r}; valid: all, {', '.join(names)}")
    lo, _, hi = sev.partition("-")
    lo_i, hi_i = int(lo), int(hi or lo)
    if lo_i not in tables.SEVERITIES or hi_i not in tables.SEVERITIES or lo_i > hi_i:
        raise ValueError(f"bad severity {sev!r} in {text!r}; valid: 1..5 or a range such as 1-5")
    selected = names if name == "all" else (name,)
    return [CorruptionSpec(modality, n, s) for n in selected for s in range(lo_i, hi_i + 1)]


def parse_specs(texts: Iterable[str]) -> list[CorruptionSpec]:
    """Expand spec strings (``"video:all@1-5"``, ``"av:snow@3"``, ``"none"``) in order, without duplicates."""
    if isinstance(texts, str):
        raise TypeError(f"parse_specs expects a list of strings, got the string {texts!r}")
    out: dict[CorruptionSpec, None] = {}
    for text in texts:
        for spec in _parse_one(text):
            out.setdefault(spec, None)
    return list(out)


def spec_rng(seed: int, key: str, spec: CorruptionSpec, part: str) -> np.random.Generator:
    """The generator of one sample's corruption: a stable hash of (seed, key, modality, name, severity, part)."""
    text = "\x1f".join((str(int(seed)), str(key), spec.modality, spec.name, str(spec.severity), part))
    digest = hashlib.blake2b(text.encode(), digest_size=16).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


def _reference_frame(img: np.ndarray) -> np.ndarray:
    # torchvision Resize(256) (shorter side, PIL bilinear) + CenterCrop(224), as make_c_video.py
    h, w = img.shape[:2]
    if h <= w:
        size = (int(256 * w / h), 256)
    else:
        size = (256, int(256 * h / w))
    big = np.asarray(Image.fromarray(img).resize(size, Image.BILINEAR))
    bh, bw = big.shape[:2]
    top, left = int(round((bh - FRAME_SIZE) / 2.0)), int(round((bw - FRAME_SIZE) / 2.0))
    return big[top : top + FRAME_SIZE, left : left + FRAME_SIZE]


def _jpeg85(img: np.ndarray) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=85, optimize=True)
    return np.asarray(Image.open(buf).convert("RGB"))


def _to_uint8(x: np.ndarray) -> np.ndarray:
    # truncation toward zero after clipping, as NumPy's astype in the reference (never rounding)
    if x.dtype == np.uint8:
        return x
    if x.dtype == np.float32 and x.flags.writeable:  # kernels return fresh arrays: clip in place, one pass less
        return np.clip(x, 0, 255, out=x).astype(np.uint8)
    return np.clip(x, 0, 255).astype(np.uint8)


def _check_frames(frames: np.ndarray | None, spec: CorruptionSpec) -> np.ndarray:
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        desc = f"{frames.dtype} {frames.shape}" if isinstance(frames, np.ndarray) else type(frames).__name__
        raise TypeError(f"{spec}: frames must be a uint8 array [N, H, W, 3], got {desc}")
    return frames


def _check_waveform(waveform: np.ndarray | None, spec: CorruptionSpec) -> np.ndarray:
    if not isinstance(waveform, np.ndarray) or waveform.ndim != 1:
        desc = f"{waveform.dtype} {waveform.shape}" if isinstance(waveform, np.ndarray) else type(waveform).__name__
        raise TypeError(f"{spec}: waveform must be a 1-D float array [S], got {desc}")
    return waveform.astype(np.float32, copy=False)


def _apply_visual(
    op: VisualOp, spec: CorruptionSpec, frames: np.ndarray, seed_key: tuple[int, str] | None,
    recorded: Params | None, ctx: Context,
) -> tuple[np.ndarray, Params]:  # fmt: skip
    opts = ctx.options
    reference = recorded["reference_frames"] if recorded is not None else bool(opts.reference_frames)
    jpeg = recorded["reference_jpeg"] if recorded is not None else bool(opts.reference_jpeg)
    if recorded is not None and len(recorded["frames"]) != len(frames):
        raise ValueError(f"{spec}: recorded parameters hold {len(recorded['frames'])} frames, got {len(frames)}")
    out, per_frame = [], []
    for k, img in enumerate(frames):
        given = recorded["frames"][k] if recorded is not None else None
        res, p = _visual_frame(op, spec, img, k, seed_key, given, ctx, reference, jpeg)
        out.append(res)
        per_frame.append(p)
    params = {"op": op.name, "reference_frames": reference, "reference_jpeg": jpeg, "frames": per_frame}
    return (np.stack(out) if out else frames), params


def _visual_frame(
    op: VisualOp, spec: CorruptionSpec, img: np.ndarray, index: int, seed_key: tuple[int, str] | None,
    recorded: Params | None, ctx: Context, reference: bool | None = None, jpeg: bool | None = None,
) -> tuple[np.ndarray, Params]:  # fmt: skip
    """Frame ``index`` of a clip, corrupted with its own draws: they depend on (seed, key, spec, index) only."""
    reference = bool(ctx.options.reference_frames) if reference is None else reference
    jpeg = bool(ctx.options.reference_jpeg) if jpeg is None else jpeg
    src = _reference_frame(img) if reference else np.ascontiguousarray(img)
    if recorded is None:
        rng = spec_rng(seed_key[0], seed_key[1], spec, f"video:{int(index)}")
        recorded = op.sample(rng, spec.severity, src.shape[:2], ctx)
    res = _to_uint8(op.kernel(src, recorded, ctx))
    return (_jpeg85(res) if jpeg else res), recorded


def _apply_audio(
    op: AudioOp, spec: CorruptionSpec, waveform: np.ndarray, rng: np.random.Generator | None,
    recorded: Params | None, ctx: Context,
) -> tuple[np.ndarray, Params]:  # fmt: skip
    if recorded is not None:
        p = {k: v for k, v in recorded.items() if k not in ("op", "snr_db_effective")}
    else:
        p = op.sample(rng, spec.severity, waveform.size, ctx)
    if waveform.size == 0:  # nothing to corrupt (e.g. a clip filled for a missing audio stream of zero length)
        return waveform, {"op": op.name, **p, "snr_db_effective": None}
    out = np.asarray(op.kernel(waveform, p, ctx), dtype=np.float32)
    if out.shape != waveform.shape:
        raise AssertionError(f"{spec}: audio kernel changed the shape {waveform.shape} -> {out.shape}")
    return out, {"op": op.name, **p, "snr_db_effective": audio.effective_snr_db(waveform, out)}


def _parts(spec: CorruptionSpec) -> tuple[VisualOp | None, AudioOp | None]:
    if spec.modality == "video":
        return VIDEO[spec.name], None
    if spec.modality == "audio":
        return None, AUDIO[spec.name]
    if spec.modality == "av":
        return AV[spec.name]
    return None, None


def corrupts(spec: CorruptionSpec) -> tuple[bool, bool]:
    """Whether ``spec`` changes the frames and whether it changes the waveform (an ``av`` pair: both)."""
    visual, sound = _parts(spec)
    return visual is not None, sound is not None


def corrupt_frame(
    spec: CorruptionSpec,
    frame: np.ndarray,
    index: int,
    *,
    seed: int,
    key: str,
    options: CorruptionOptions = CorruptionOptions(),  # noqa: B008  (frozen, immutable default)
) -> np.ndarray:
    """Frame ``index`` of a clip with the visual part of ``spec`` (a video corruption or an ``av`` pair's).

    The same pixels as :func:`apply_corruption` on all the clip's frames and keeping frame ``index``: each frame's
    draws depend only on (seed, key, spec, index). The identity when ``spec`` has no visual part.

    Args:
        frame: uint8 ``[H, W, 3]`` RGB.
    """
    visual, _ = _parts(spec)
    if visual is None:
        return frame
    _check_frames(frame[None] if isinstance(frame, np.ndarray) else frame, spec)
    res, _ = _visual_frame(visual, spec, frame, index, (int(seed), str(key)), None, Context(16000, options))
    return res


def corrupt_waveform(
    spec: CorruptionSpec,
    waveform: np.ndarray,
    *,
    seed: int,
    key: str,
    sample_rate: int = 16000,
    options: CorruptionOptions = CorruptionOptions(),  # noqa: B008  (frozen, immutable default)
) -> np.ndarray:
    """The waveform with the audio part of ``spec`` (an audio corruption or an ``av`` pair's), as
    :func:`apply_corruption` makes it; the identity when ``spec`` has no audio part."""
    _, sound = _parts(spec)
    if sound is None:
        return waveform
    waveform = _check_waveform(waveform, spec)
    rng = spec_rng(seed, key, spec, "audio")
    out, _ = _apply_audio(sound, spec, waveform, rng, None, Context(int(sample_rate), options))
    return out


def apply_corruption(
    spec: CorruptionSpec,
    frames: np.ndarray | None,
    waveform: np.ndarray | None,
    *,
    seed: int,
    key: str,
    sample_rate: int = 16000,
    options: CorruptionOptions = CorruptionOptions(),  # noqa: B008  (frozen, immutable default)
    params: Params | None = None,
) -> tuple[np.ndarray | None, np.ndarray | None, Params]:
    """Corrupt one clip.

    Args:
        spec: what to apply.
        frames: uint8 [N, H, W, 3] RGB; each frame is corrupted with its own draws (as the reference). Returned
            uint8, same shape (224 x 224 when ``options.reference_frames``), values truncated as the reference.
        waveform: float32 [S] mono at ``sample_rate``, in [-1, 1]; returned float32 [S], not clipped.
        seed, key: the run seed and the sample key; with the spec they seed the draws (stable across processes).
        sample_rate: rate of ``waveform``.
        options: noise sources and fidelity switches.
        params: parameters recorded by an earlier call; when given they are replayed (seed and key are ignored).

    Returns:
        ``(frames, waveform, params)``; params is JSON-serialisable: ``{"video": {...}}``, ``{"audio": {...}}`` or
        both, ``{}`` for clean. The modality not corrupted is returned unchanged (the same object).
    """
    if not isinstance(spec, CorruptionSpec):
        raise TypeError(f"spec must be a CorruptionSpec, got {type(spec).__name__} {spec!r}")
    if spec.modality == "clean":
        return frames, waveform, {}
    if _KERNELS_MISSING is not None:
        raise ImportError(f"{spec}: the corruption kernels need {_KERNELS_MISSING.name!r} ({_KERNELS_MISSING})")
    ctx = Context(int(sample_rate), options)
    params = params or {}
    out_params: Params = {}
    if spec.modality == "video":
        visual, sound = VIDEO[spec.name], None
    elif spec.modality == "audio":
        visual, sound = None, AUDIO[spec.name]
    else:
        visual, sound = AV[spec.name]
    if visual is not None:
        frames = _check_frames(frames, spec)
        seed_key = None if "video" in params else (int(seed), str(key))
        frames, out_params["video"] = _apply_visual(visual, spec, frames, seed_key, params.get("video"), ctx)
    if sound is not None:
        waveform = _check_waveform(waveform, spec)
        rng = None if "audio" in params else spec_rng(seed, key, spec, "audio")
        waveform, out_params["audio"] = _apply_audio(sound, spec, waveform, rng, params.get("audio"), ctx)
    return frames, waveform, out_params
