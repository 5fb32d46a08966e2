"""``avtta preview``: a corrupted copy of a video (mp4), and a contact sheet of every video corruption for a video.

What needs decoding and muxing (:mod:`.decode`, :func:`.synth.write_video`) lives here; the contact sheet itself is
drawn from a frame array by :func:`avtta.corruptions.preview.draw_contact_sheet`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from avtta.corruptions import CorruptionOptions, CorruptionSpec, apply_corruption
from avtta.corruptions.preview import draw_contact_sheet
from avtta.shards import storage
from avtta.shards.transforms import resize_center_crop

from .decode import decode_clip
from .synth import write_video

__all__ = ["contact_sheet", "write_preview"]

log = logging.getLogger(__name__)


def _decode_frames(path: Path, seconds: float, size: int) -> tuple[np.ndarray, float]:
    """Every video frame of the first ``seconds`` (resized + centre-cropped like the pipeline) and the frame rate.

    ``decode_clip`` samples the model's 10 frames only; a playable preview needs them all, hence this small helper.
    """
    import av

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
    if not str(out).lower().endswith(".mp4"):
        raise ValueError(f"preview output must be an .mp4 file, got {out}")
    with storage.local_copy(video) as local:
        frames, fps = _decode_frames(local, seconds, size)
        clip = decode_clip(local, num_frames=1, frame_size=size, missing="fill", max_audio_samples=int(seconds * 16000))
    wave = clip.waveform
    frames_c, wave_c, params = apply_corruption(
        spec, frames, wave, seed=seed, key=Path(local).stem, sample_rate=clip.sample_rate, options=options
    )
    audio = np.clip(wave_c, -1, 1)[None] if wave_c.size else None
    with _output(out) as target:
        write_video(target, frames_c, fps, audio, clip.sample_rate, video_codec="libx264", audio_codec="aac")
    log.info("wrote %s: %d frames at %.2f fps, %s", out, len(frames_c), fps, spec)
    return {**params, "frames": len(frames_c), "fps": fps}


def contact_sheet(
    video: str | Path,
    out: str | Path,
    *,
    seed: int = 0,
    frame_index: int = 5,
    cell: int = 224,
    options: CorruptionOptions = CorruptionOptions(),  # noqa: B008  (frozen, immutable default)
) -> tuple[int, int]:
    """Draw one frame of ``video`` under every video corruption (rows) at severities 1..5 (columns) into ``out``.

    The frame is the model's ``frame_index``-th of 10 sampled frames (``frame_5`` is the one the TTA loaders use).

    Returns:
        The grid shape ``(rows, columns)`` = (15, 5).
    """
    with storage.local_copy(video) as local:
        frame = decode_clip(local, num_frames=10, missing="fill").frames[frame_index]
    with _output(out) as target:
        return draw_contact_sheet(frame, target, key=Path(local).stem, seed=seed, cell=cell, options=options)


@contextlib.contextmanager
def _output(out: str | Path) -> Iterator[Path]:
    """Where a preview is written: the path itself locally (as before), else a local file uploaded whole after.

    (The local atomic temporary name would hide the extension the encoders choose their format by.)
    """
    if storage.is_local(out):
        yield storage.local_path(out)
    else:
        with storage.staged_path(out) as tmp:
            yield tmp
