"""Look at corruptions: a corrupted copy of a video (mp4) and a contact sheet of every video corruption.

This module composes decoding (``avtta.pipelines.decode``) and muxing (``avtta.pipelines.synth.write_video``) with the
corruptions, so it imports them lazily: the rest of ``avtta.corruptions`` depends on NumPy / OpenCV / SciPy only.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from . import tables
from .core import CorruptionOptions, CorruptionSpec, apply_corruption

log = logging.getLogger(__name__)


def _decode_frames(path: Path, seconds: float, size: int) -> tuple[np.ndarray, float]:
    """Every video frame of the first ``seconds`` (resized + centre-cropped like the pipeline) and the frame rate.

    ``decode_clip`` samples the model's 10 frames only; a playable preview needs them all, hence this small helper.
    """
    import av
    from avtta.shards.transforms import resize_center_crop

    frames = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"{path} has no video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 25)
            for frame in container.decode(stream):
                if frame.time is not None and frame.time >= seconds:
                    break
                frames.append(resize_center_crop(frame.to_ndarray(format="rgb24"), size))
    except av.error.FFmpegError as err:
        raise ValueError(f"cannot decode {path}: {err}") from err
    if not frames:
        raise ValueError(f"{path}: no video frame in the first {seconds} s")
    return np.stack(frames), fps


def write_preview(
    video: str | Path,
    spec: CorruptionSpec,
    out: str | Path,
    *,
    seed: int = 0,
    seconds: float = 10.0,
    size: int = 224,
    options: CorruptionOptions = CorruptionOptions(),  # noqa: B008  (frozen, immutable default)
) -> dict:
    """Write ``out`` (mp4: H.264 + AAC) with every frame and the audio of ``video`` corrupted by ``spec``.

    Frames are decoded, resized and centre-cropped to ``size`` as the pipeline does; each frame gets its own draws
    (as AVRobustBench's ``create_video``); the audio is the pipeline's 16 kHz mono waveform, clipped to [-1, 1].

    Returns:
        The corruption parameters (as recorded in shards) plus ``frames`` and ``fps`` of the written video.
    """
    from avtta.pipelines.decode import decode_clip
    from avtta.pipelines.synth import write_video

    video, out = Path(video), Path(out)
    if out.suffix.lower() != ".mp4":
        raise ValueError(f"preview output must be an .mp4 file, got {out}")
    frames, fps = _decode_frames(video, seconds, size)
    clip = decode_clip(video, num_frames=1, frame_size=size, missing="fill", max_audio_samples=int(seconds * 16000))
    wave = clip.waveform
    frames_c, wave_c, params = apply_corruption(
        spec, frames, wave, seed=seed, key=video.stem, sample_rate=clip.sample_rate, options=options
    )
    audio = np.clip(wave_c, -1, 1)[None] if wave_c.size else None
    write_video(out, frames_c, fps, audio, clip.sample_rate, video_codec="libx264", audio_codec="aac")
    log.info("wrote %s: %d frames at %.2f fps, %s", out, len(frames_c), fps, spec)
    return {**params, "frames": len(frames_c), "fps": fps}


def contact_sheet(
    video: str | Path,
    out: str | Path,
    *,
    seed: int = 0,
    frame_index: int = 5,
    cell: int = 224,
    options: CorruptionOptions = CorruptionOptions(),  # noqa: B008
) -> tuple[int, int]:
    """Draw one frame of ``video`` under every video corruption (rows) at severities 1..5 (columns) into ``out``.

    The frame is the model's ``frame_index``-th of 10 sampled frames (``frame_5`` is the one the TTA loaders use).

    Returns:
        The grid shape ``(rows, columns)`` = (15, 5).
    """
    from avtta.pipelines.decode import decode_clip

    video = Path(video)
    frame = decode_clip(video, num_frames=10, missing="fill").frames[frame_index][None]
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
                CorruptionSpec("video", name, s), frame, None, seed=seed, key=video.stem, options=options
            )
            tile = Image.fromarray(img[0])
            if tile.size != (cell, cell):
                tile = tile.resize((cell, cell), Image.BILINEAR)
            sheet.paste(tile, (label_w + j * (cell + pad), y))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    log.info("wrote %s (%d x %d corruptions x severities)", out, len(names), len(severities))
    return len(names), len(severities)
