"""Test-video builders: write small, deterministic media files with PyAV (no network, no fixtures needed).

Two levels:

* :func:`write_video` muxes given arrays: frames ``uint8 [N, H, W, 3]`` and audio ``float32 [C, S]``.
* :func:`write_test_video` makes the arrays from a seed and writes them; its frames carry their own index as a
  colour code (:func:`frame_code_colour` / :func:`read_frame_code`) so a test can tell which source frame a decoder
  returned, and audio channel ``c`` is dominated by a sine at ``CHANNEL_TONES_HZ[c]`` so a test can tell which
  channel it got.

Also :func:`write_random_bytes` and :func:`truncate_file` for broken inputs, and writers of the reference
*extracted* layout (JPEG frame folders, 16-bit WAVs, JSON lists, label CSVs) for the importer:
:func:`write_reference_clip`, :func:`write_json_list`, :func:`write_label_csv`. Used by the decode tests, the
pipeline tests and the demo.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

__all__ = [
    "CHANNEL_TONES_HZ",
    "CODECS",
    "SynthClip",
    "frame_code_colour",
    "read_frame_code",
    "make_frames",
    "make_audio",
    "write_video",
    "write_test_video",
    "write_random_bytes",
    "truncate_file",
    "write_jpeg",
    "write_wav",
    "write_json_list",
    "write_label_csv",
    "write_reference_clip",
]

# Sine frequency of each synthetic audio channel (distinct, below 4 kHz so 8 kHz audio keeps them).
CHANNEL_TONES_HZ = (440.0, 1250.0, 2100.0, 3100.0, 700.0, 1700.0, 2600.0, 3500.0)

# container -> (video codec, audio codec, pixel format) used when the caller does not choose.
CODECS = {
    "mp4": ("libx264", "aac", "yuv420p"),
    "mkv": ("mpeg4", "libmp3lame", "yuv420p"),
    "webm": ("libvpx-vp9", "libopus", "yuv420p"),
    "avi": ("mpeg4", "libmp3lame", "yuv420p"),
    "mov": ("libx264", "aac", "yuv420p"),
}

_TIME_BASE = Fraction(1, 30000)

# Colour-code grid: frame index -> (R, G) levels in steps of 8, so ~3 levels of codec error stay decodable.
_STEP = 8
_LEVELS = 32


def frame_code_colour(index: int) -> tuple[int, int]:
    """(R, G) of the flat colour that encodes ``index`` (0 <= index < 1024)."""
    if not 0 <= index < _LEVELS * _LEVELS:
        raise ValueError(f"frame index {index} cannot be colour-coded (0..{_LEVELS * _LEVELS - 1})")
    return _STEP * (index % _LEVELS) + _STEP // 2, _STEP * (index // _LEVELS) + _STEP // 2


def read_frame_code(frame: np.ndarray) -> int:
    """Inverse of :func:`frame_code_colour` on a decoded ``[H, W, 3]`` frame (median colour)."""
    r = float(np.median(frame[..., 0]))
    g = float(np.median(frame[..., 1]))
    lo = int(np.clip(round((r - _STEP // 2) / _STEP), 0, _LEVELS - 1))
    hi = int(np.clip(round((g - _STEP // 2) / _STEP), 0, _LEVELS - 1))
    return hi * _LEVELS + lo


def make_frames(n: int, width: int, height: int, seed: int = 0) -> np.ndarray:
    """``uint8 [n, height, width, 3]``: frame i is flat ``(R, G) = frame_code_colour(i)``, B a seeded constant."""
    rng = np.random.default_rng([seed, 1])
    blue = int(rng.integers(40, 216))
    frames = np.empty((n, height, width, 3), dtype=np.uint8)
    for i in range(n):
        frames[i, ..., 0], frames[i, ..., 1] = frame_code_colour(i % (_LEVELS * _LEVELS))
        frames[i, ..., 2] = blue
    return frames


def make_audio(seconds: float, rate: int, channels: int, seed: int = 0, amplitude: float = 0.4) -> np.ndarray:
    """``float32 [channels, round(seconds * rate)]``: channel c = sine at ``CHANNEL_TONES_HZ[c]`` + 1% seeded noise."""
    n = int(round(seconds * rate))
    rng = np.random.default_rng([seed, 2])
    t = np.arange(n) / rate
    out = np.empty((channels, n), dtype=np.float32)
    for c in range(channels):
        tone = CHANNEL_TONES_HZ[c % len(CHANNEL_TONES_HZ)]
        out[c] = amplitude * np.sin(2 * np.pi * tone * t) + 0.01 * rng.standard_normal(n)
    return out


def _layout(channels: int) -> str:
    return {1: "mono", 2: "stereo", 6: "5.1"}.get(channels, f"{channels}c")


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray | None,
    fps: float,
    audio: np.ndarray | None = None,
    audio_rate: int = 16000,
    *,
    video_codec: str | None = None,
    audio_codec: str | None = None,
    pix_fmt: str | None = None,
    frame_times: np.ndarray | None = None,
    faststart: bool = False,
) -> Path:
    """Mux frames and audio into a media file; the container follows the file extension.

    Args:
        path: output file (``.mp4``, ``.mkv``, ``.webm``, ``.avi``, ``.mov``).
        frames: ``uint8 [N, H, W, 3]`` RGB, or None for an audio-only file.
        fps: nominal frame rate (the stream's reported rate).
        audio: ``float32 [C, S]`` in [-1, 1], or None for a video-only file.
        audio_rate: sampling rate of ``audio``.
        video_codec, audio_codec, pix_fmt: override the defaults of :data:`CODECS` for the extension.
        frame_times: optional presentation time (s) of each frame, for variable frame rate; default ``i / fps``.
        faststart: for mp4/mov, put the index first (so a truncated file still opens).

    Returns:
        ``path`` as a Path.
    """
    path = Path(path)
    ext = path.suffix.lstrip(".").lower()
    if ext not in CODECS:
        raise ValueError(f"unsupported container {ext!r} for {path} (choose from {sorted(CODECS)})")
    if frames is None and audio is None:
        raise ValueError(f"{path}: nothing to write (no frames and no audio)")
    d_vcodec, d_acodec, d_pix = CODECS[ext]
    options = {"movflags": "+faststart"} if faststart and ext in ("mp4", "mov") else {}
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w", options=options) as container:
        vstream = astream = None
        if frames is not None:
            frames = np.asarray(frames)
            if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
                raise ValueError(f"{path}: frames must be uint8 [N, H, W, 3], got {frames.dtype} {frames.shape}")
            rate = Fraction(fps).limit_denominator(1001)
            vstream = container.add_stream(video_codec or d_vcodec, rate=rate)
            vstream.width, vstream.height = frames.shape[2], frames.shape[1]
            vstream.pix_fmt = pix_fmt or d_pix
            # Explicit fine timestamps allow variable frame rate in every container (MPEG-4 part 2 caps the
            # time-base denominator at 65535, hence 1/30000 rather than 1/90000).
            vstream.codec_context.time_base = _TIME_BASE
            if (video_codec or d_vcodec) == "libx264":
                vstream.options = {"preset": "ultrafast", "crf": "18"}
            else:
                vstream.bit_rate = 4_000_000  # default rates are low enough to blur the colour code
        if audio is not None:
            audio = np.asarray(audio, dtype=np.float32)
            if audio.ndim != 2:
                raise ValueError(f"{path}: audio must be float32 [C, S], got shape {audio.shape}")
            astream = container.add_stream(audio_codec or d_acodec, rate=audio_rate)
            astream.layout = _layout(audio.shape[0])
        if vstream is not None:
            times = np.arange(len(frames)) / fps if frame_times is None else np.asarray(frame_times, dtype=float)
            if len(times) != len(frames) or np.any(np.diff(times) <= 0):
                raise ValueError(f"{path}: frame_times must be increasing, one per frame")
            for img, t in zip(frames, times, strict=True):
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
                frame.pts = int(round(t * _TIME_BASE.denominator))
                frame.time_base = _TIME_BASE
                container.mux(vstream.encode(frame))
            container.mux(vstream.encode(None))
        if astream is not None:
            chunk = 1024
            for start in range(0, audio.shape[1], chunk):
                block = np.ascontiguousarray(audio[:, start : start + chunk])
                frame = av.AudioFrame.from_ndarray(block, format="fltp", layout=_layout(audio.shape[0]))
                frame.sample_rate = audio_rate
                frame.pts = start
                frame.time_base = Fraction(1, audio_rate)
                container.mux(astream.encode(frame))
            container.mux(astream.encode(None))
    return path


@dataclass(frozen=True)
class SynthClip:
    """What :func:`write_test_video` wrote."""

    path: Path
    num_frames: int
    fps: float
    size: tuple[int, int]  # (width, height)
    audio_rate: int
    channels: int
    frame_times: tuple[float, ...]


def write_test_video(
    path: str | os.PathLike,
    *,
    seconds: float = 2.0,
    fps: float = 25.0,
    size: tuple[int, int] = (64, 48),
    audio_rate: int = 16000,
    channels: int = 1,
    video: bool = True,
    audio: bool = True,
    vfr: bool = False,
    seed: int = 0,
    video_codec: str | None = None,
    audio_codec: str | None = None,
    pix_fmt: str | None = None,
    faststart: bool = False,
) -> SynthClip:
    """Write a deterministic test clip (colour-coded frames, one tone per audio channel).

    Args:
        path: output file; the extension picks the container and default codecs (:data:`CODECS`).
        seconds: clip length.
        fps: nominal frame rate.
        size: (width, height); odd sizes use ``yuv444p`` with H.264 (4:2:0 needs even sizes).
        audio_rate, channels: audio format.
        video, audio: which streams to write.
        vfr: variable frame rate: frame gaps alternate irregularly between 0.5 and 1.5 frame periods (seeded).
        seed: content seed.
    """
    width, height = size
    n = max(1, int(round(seconds * fps)))
    times = np.arange(n) / fps
    if vfr:
        rng = np.random.default_rng([seed, 3])
        gaps = rng.uniform(0.5, 1.5, size=n) / fps
        times = np.concatenate([[0.0], np.cumsum(gaps[:-1])])
    ext = Path(path).suffix.lstrip(".").lower()
    vcodec = video_codec or CODECS.get(ext, ("libx264",))[0]
    if pix_fmt is None and vcodec == "libx264" and (width % 2 or height % 2):
        pix_fmt = "yuv444p"
    write_video(
        path,
        make_frames(n, width, height, seed) if video else None,
        fps,
        make_audio(seconds, audio_rate, channels, seed) if audio else None,
        audio_rate,
        video_codec=video_codec,
        audio_codec=audio_codec,
        pix_fmt=pix_fmt,
        frame_times=times if vfr else None,
        faststart=faststart,
    )
    return SynthClip(Path(path), n, fps, (width, height), audio_rate, channels, tuple(float(t) for t in times))


def write_random_bytes(path: str | os.PathLike, n: int = 4096, seed: int = 0) -> Path:
    """A file of ``n`` seeded random bytes (e.g. named ``.mp4`` to look like a video)."""
    path = Path(path)
    path.write_bytes(np.random.default_rng([seed, 4]).integers(0, 256, size=n, dtype=np.uint8).tobytes())
    return path


def truncate_file(src: str | os.PathLike, dst: str | os.PathLike, fraction: float) -> Path:
    """Copy the first ``fraction`` of ``src``'s bytes to ``dst`` (a download cut short)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    data = Path(src).read_bytes()
    dst = Path(dst)
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


# ---------------------------------------------------------------------------------------------------------------
# the reference extracted layout (what the importer reads)


def write_jpeg(path: str | os.PathLike, rgb: np.ndarray, quality: int = 75) -> Path:
    """Save ``uint8 [H, W, 3]`` as a JPEG with PIL (default quality 75, as torchvision's ``save_image``)."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), mode="RGB").save(path, format="JPEG", quality=quality)
    return path


def write_wav(path: str | os.PathLike, waveform: np.ndarray, rate: int = 16000) -> Path:
    """Save float audio ``[S]`` (mono) or ``[C, S]`` as a 16-bit PCM WAV with soundfile."""
    import soundfile as sf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.asarray(waveform, dtype=np.float32)
    sf.write(path, data.T if data.ndim == 2 else data, rate, subtype="PCM_16")
    return path


def write_reference_clip(
    frames_root: str | os.PathLike,
    audio_root: str | os.PathLike | None,
    video_id: str,
    frames: np.ndarray,
    waveform: np.ndarray | None = None,
    rate: int = 16000,
) -> tuple[Path | None, list[Path]]:
    """Write one clip as the reference scripts lay it out: ``FRAMES/frame_K/<id>.jpg`` and ``AUDIO/<id>.wav``.

    Returns:
        (wav path or None, frame paths).
    """
    paths = [write_jpeg(Path(frames_root) / f"frame_{k}" / f"{video_id}.jpg", f) for k, f in enumerate(frames)]
    wav = None
    if audio_root is not None and waveform is not None:
        wav = write_wav(Path(audio_root) / f"{video_id}.wav", waveform, rate)
    return wav, paths


def write_json_list(path: str | os.PathLike, entries: list[dict]) -> Path:
    """Write a reference JSON list ``{"data": [{"wav", "labels", "video_id", "video_path"}, ...]}``."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"data": entries}, indent=1))
    return path


def write_label_csv(path: str | os.PathLike, mids: list[str], display: list[str] | None = None) -> Path:
    """Write a reference label CSV ``index,mid,display_name``."""
    import csv

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["index", "mid", "display_name"])
        for i, mid in enumerate(mids):
            w.writerow([i, mid, (display or mids)[i]])
    return path
