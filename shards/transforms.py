"""The CAV-MAE input transforms, in one place: statistics, frame selection, resize + centre crop, normalisation.

Both readers (:mod:`.indexed`, :mod:`.reader`) turn a stored sample into model inputs with these functions, and the
pipeline's decoder (``avtta.pipelines.decode``) and feature extractor (``avtta.pipelines.features``) take their
resize and statistics from here. The shapes (128 mel bins, 1024 frames, 224 pixels, 10 frames, frame 5 for
evaluation) are the schema's constants (:mod:`.schema`), re-exported here.

The order of operations is the reference's: the fbank is zero-padded / cut and masked *before* normalisation (spec
items 23, 25), the frame is resized (PIL bicubic) and centre-cropped, then ``ToTensor`` + ImageNet ``Normalize``.
The readers normalise in place, one sample at a time, into the batch tensor (:func:`fill_fbank`, :func:`fill_image`).
"""

from __future__ import annotations

import random

import numpy as np
import torch
from PIL import Image

from .schema import EVAL_FRAME, FRAME_SIZE, NUM_FRAMES, NUM_MEL_BINS, SAMPLE_RATE, TARGET_LENGTH

__all__ = [
    "EVAL_FRAME",
    "FBANK_MEAN",
    "FBANK_STD",
    "FRAME_SIZE",
    "IMAGE_MEAN",
    "IMAGE_STD",
    "NUM_FRAMES",
    "NUM_MEL_BINS",
    "SAMPLE_RATE",
    "TARGET_LENGTH",
    "eval_frame_index",
    "fill_fbank",
    "fill_image",
    "fixed_frame_index",
    "frame_index",
    "load_fbank",
    "resize_center_crop",
]

# Data-loader statistics, the same for every data set (spec item 23, KEEP: the checkpoints were trained with them).
FBANK_MEAN = -5.081
FBANK_STD = 4.4849
IMAGE_MEAN = (0.485, 0.456, 0.406)  # ImageNet, as the reference's transforms.Normalize
IMAGE_STD = (0.229, 0.224, 0.225)


# ---------------------------------------------------------------------------------------------------------------
# frame selection


def eval_frame_index(num_frames: int) -> int:
    """Frame 5 (READ/BriMPR: ``int(total_frame / 2)`` of 10); the middle one when a clip has fewer frames."""
    return EVAL_FRAME if num_frames > EVAL_FRAME else num_frames // 2


def frame_index(frame: str | int, num_frames: int, rng: random.Random | None = None) -> int:
    """The stored frame a sample is read at.

    Args:
        frame: ``"eval"`` (:func:`eval_frame_index`), ``"random"`` (training: uniform over the stored frames, drawn
            from ``rng``) or a frame index.
        num_frames: frames the sample holds.
        rng: the sample's generator (only ``"random"`` draws from it).
    """
    if frame == "eval":
        return eval_frame_index(num_frames)
    if frame == "random":
        if rng is None:
            raise ValueError("frame='random' needs the sample's random generator")
        return rng.randrange(num_frames)
    idx = int(frame)
    if not 0 <= idx < num_frames:
        raise ValueError(f"frame index {idx} out of range: the shards hold {num_frames} frames")
    return idx


def fixed_frame_index(frame: str | int, num_frames: int) -> int | None:
    """The frame every sample of a set with ``num_frames`` frames is read at; None for ``"random"``."""
    return None if frame == "random" else frame_index(frame, num_frames)


# ---------------------------------------------------------------------------------------------------------------
# resize + centre crop


def resize_center_crop(rgb: np.ndarray, size: int, resample: int = Image.BILINEAR) -> np.ndarray:
    """torchvision ``Resize(size)`` (PIL backend) then ``CenterCrop(size)`` of a uint8 ``[H, W, 3]`` image.

    The shorter side becomes ``size`` and the longer ``int(size * long / short)``; the crop offsets are
    ``int(round((dim - size) / 2))`` (Python rounding), as torchvision computes them. The extractor resizes
    bilinearly (``avtta shard``); the reference's data loader bicubically (the readers).

    Returns:
        a fresh, writable uint8 ``[size, size, 3]`` array.
    """
    h, w = rgb.shape[:2]
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    img = Image.fromarray(rgb)
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), resample)
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    return np.array(img.crop((left, top, left + size, top + size)), dtype=np.uint8)  # np.array: one writable copy


# ---------------------------------------------------------------------------------------------------------------
# fbank: length and SpecAugment (before normalisation)


def load_fbank(
    fbank: np.ndarray,
    target_length: int = TARGET_LENGTH,
    freqm: int = 0,
    timem: int = 0,
    gen: torch.Generator | None = None,
) -> torch.Tensor:
    """Raw fbank ``[T, 128]`` -> ``[target_length, 128]``, still unnormalised and in its stored dtype.

    Zero rows are appended (or trailing rows cut) and the SpecAugment masks (widths drawn from ``gen``: up to
    ``freqm`` bins and ``timem`` frames; CAV-MAE fine-tuning uses 48 / 192, 0 at test time) set to 0: the reference
    masks before it normalises. The result is normalised later, into the batch (:func:`fill_fbank`).
    """
    x = torch.from_numpy(np.asarray(fbank))
    t = x.shape[0]
    if t < target_length:
        x = torch.nn.functional.pad(x, (0, 0, 0, target_length - t))
    elif t > target_length:
        x = x[:target_length]
    if freqm or timem:
        x = x.clone()
        if freqm:
            w = int(torch.randint(0, freqm + 1, (1,), generator=gen))
            f0 = int(torch.randint(0, x.shape[1] - w + 1, (1,), generator=gen))
            x[:, f0 : f0 + w] = 0.0
        if timem:
            w = int(torch.randint(0, timem + 1, (1,), generator=gen))
            t0 = int(torch.randint(0, x.shape[0] - w + 1, (1,), generator=gen))
            x[t0 : t0 + w, :] = 0.0
    return x


# ---------------------------------------------------------------------------------------------------------------
# normalisation, written into a row of the batch

_IMAGE_MEAN_255 = torch.tensor(IMAGE_MEAN).view(3, 1, 1).mul_(255.0)
_IMAGE_STD_255 = torch.tensor(IMAGE_STD).view(3, 1, 1).mul_(255.0)


def fill_fbank(out: torch.Tensor, fbank: torch.Tensor) -> None:
    """Write one normalised fbank into ``out`` (a float32 ``[T, 128]`` row of a batch): copy, then normalise in place.

    ``(x - mean) / std`` (divided by std, not 2 * std as in AST); per sample, so the passes run over data still in
    the CPU cache.
    """
    out.copy_(fbank)
    out.sub_(FBANK_MEAN).div_(FBANK_STD)


def fill_image(out: torch.Tensor, image: torch.Tensor) -> None:
    """Write one normalised uint8 ``[3, H, W]`` frame into ``out`` (float32): ToTensor + Normalize, per sample."""
    out.copy_(image)
    out.sub_(_IMAGE_MEAN_255).div_(_IMAGE_STD_255)  # == (x / 255 - mean) / std to within 1 ulp
