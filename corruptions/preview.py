"""A contact sheet of every video corruption: one frame (rows: corruptions, columns: severities 1..5).

Corruption-only: it takes a decoded frame array. Reading a video file for it, and the corrupted mp4 preview, need
decoding and muxing and live beside them in :mod:`avtta.pipelines.preview` (``avtta preview``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from . import tables
from .core import CorruptionOptions, CorruptionSpec, apply_corruption

log = logging.getLogger(__name__)


def draw_contact_sheet(
    frame: np.ndarray,
    out: str | Path,
    *,
    key: str,
    seed: int = 0,
    cell: int = 224,
    options: CorruptionOptions = CorruptionOptions(),  # noqa: B008  (frozen, immutable default)
) -> tuple[int, int]:
    """Draw ``frame`` (uint8 RGB ``[H, W, 3]``) under every video corruption at severities 1..5 into ``out``.

    ``key`` is the sample key the corruption parameters are drawn for (the video's stem), as in a shard.

    Returns:
        The grid shape ``(rows, columns)`` = (15, 5).
    """
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"draw_contact_sheet takes one uint8 RGB frame [H, W, 3], got {frame.dtype} {frame.shape}")
    frames = frame[None]
    names, severities = tables.VIDEO_ORDER, tables.SEVERITIES
    font = ImageFont.load_default()
    label_w, head_h, pad = 150, 24, 4
    sheet = Image.new(
        "RGB", (label_w + len(severities) * (cell + pad), head_h + len(names) * (cell + pad)), (255, 255, 255)
    )
    draw = ImageDraw.Draw(sheet)
    for j, s in enumerate(severities):
        draw.text((label_w + j * (cell + pad) + cell // 2 - 30, 6), f"severity {s}", fill=(0, 0, 0), font=font)
    for i, name in enumerate(names):
        y = head_h + i * (cell + pad)
        draw.text((6, y + cell // 2 - 6), name, fill=(0, 0, 0), font=font)
        for j, s in enumerate(severities):
            img, _, _ = apply_corruption(
                CorruptionSpec("video", name, s), frames, None, seed=seed, key=key, options=options
            )
            tile = Image.fromarray(img[0])
            if tile.size != (cell, cell):
                tile = tile.resize((cell, cell), Image.BILINEAR)
            sheet.paste(tile, (label_w + j * (cell + pad), y))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    log.info("wrote %s (%d x %d corruptions x severities)", out, len(names), len(severities))
    return len(names), len(severities)
