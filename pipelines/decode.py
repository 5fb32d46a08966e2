"""Decode a video file into the CAV-MAE model's raw inputs: N sampled RGB frames and a 16 kHz mono waveform.

Reproduces the reference's offline extraction (spec/preprocessing.md 1.1-1.2) with PyAV, in one demuxing pass:

* frames as CAV-MAE's ``extract_video_frame.py`` picks them: ``fps`` = the reported rate, ``total = min(reported
  frame count, int(fps * 10))``, ``idx_i = int(i * (total / N))``, and the frame at position ``idx_i - 1`` in the
  decoder's output order (position 0 for ``idx_i = 0``, as OpenCV treats a seek to -1); then torchvision
  ``Resize(frame_size)`` (PIL bilinear, antialiased) and ``CenterCrop``, through the code base's one resize + crop
  (``avtta.shards.transforms.resize_center_crop``). PyAV's ``rgb24`` conversion equals OpenCV's ``BGR2RGB`` of its
  decode bit for bit, so the frames equal the reference's before its JPEG write.
* audio as ``ffmpeg -ar 16000`` + ``sox remix 1``: libswresample through ``av.AudioResampler`` to 16 kHz signed
  16-bit with the source channel layout kept, then the first channel; values are ``k / 32768`` (bit-exact with
  the reference WAV on the shared real clip).

Decoding stops once the last needed frame and enough audio are in hand. Audio is kept up to ``max_audio_samples``
(default: what 1024 fbank frames read, ``(1024 - 1) * 160 + 400``). Cutting there changes nothing but float
rounding in the fbank: the loader's global mean removal is undone anyway by Kaldi's per-frame mean removal.

Every problem with the file itself raises :class:`DecodeError` with a human-readable reason.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import av
import numpy as np
from avtta.shards.transforms import FRAME_SIZE, NUM_FRAMES, SAMPLE_RATE, resize_center_crop

from .features import max_samples_for_frames

__all__ = ["DecodedClip", "DecodeError", "decode_clip", "frame_positions", "resize_center_crop"]

log = logging.getLogger(__name__)

MAX_SECONDS = 10  # the reference caps the frame range at 10 s (VGGSound frame counts are unreliable)
DEFAULT_MAX_AUDIO_SAMPLES = max_samples_for_frames()  # what TARGET_LENGTH (1024) fbank frames read


class DecodeError(Exception):
    """A file cannot be decoded as requested; ``reason`` is a short human-readable explanation."""

    def __init__(self, reason: str, path: str | os.PathLike | None = None):
        super().__init__(reason)
        self.reason = reason
        self.path = None if path is None else str(path)


@dataclass
class DecodedClip:
    """Raw model inputs of one clip.

    Attributes:
        frames: uint8 ``[N, frame_size, frame_size, 3]`` RGB.
        waveform: float32 ``[S]`` mono at ``sample_rate``, values on the PCM16 grid ``k / 32768``.
        sample_rate: Hz.
        fps: the video stream's reported frame rate (0.0 when the video was filled).
        duration: seconds (container duration when reported).
        missing: modalities filled with zeros (``"audio"`` / ``"video"``).
        info: JSON-serialisable facts about the source (codecs, original size, rate, channels, positions, ...).
    """

    frames: np.ndarray
    waveform: np.ndarray
    sample_rate: int
    fps: float
    duration: float
    missing: tuple[str, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)


def frame_positions(total: int, num_frames: int) -> list[int]:
    """Decoded-frame positions the reference extractor reads: ``max(int(i * (total / N)) - 1, 0)``.

    The expression ``i * (total / N)`` (float division first) is the reference's own, kept for identical
    truncation.
    """
    return [max(int(i * (total / num_frames)) - 1, 0) for i in range(num_frames)]


def _fail(reason: str, path: Path) -> DecodeError:
    return DecodeError(reason, path)


def _libav_message(err: BaseException) -> str:
    # PyAV errors carry the libav string plus the file name; keep the libav part only (the path is in the row).
    strerror = getattr(err, "strerror", None)
    return str(strerror or err)


def decode_clip(
    path: str | os.PathLike,
    *,
    num_frames: int = NUM_FRAMES,
    frame_size: int = FRAME_SIZE,
    sample_rate: int = SAMPLE_RATE,
    missing: Literal["fail", "fill"] = "fail",
    max_audio_samples: int | None = DEFAULT_MAX_AUDIO_SAMPLES,
    threads: bool = True,
) -> DecodedClip:
    """Decode ``num_frames`` frames and the mono audio track of a video file.

    Args:
        path: the media file.
        num_frames: frames sampled over the first (at most) 10 s.
        frame_size: side of the square output frames.
        sample_rate: output audio rate.
        missing: ``"fail"`` raises ``DecodeError("no audio stream")`` (or video) when a stream is absent;
            ``"fill"`` substitutes silence of the clip's duration (or black frames) and names it in ``missing``.
        max_audio_samples: keep at most this many output samples (``None``: the whole track).
        threads: let libavcodec decode video with threads (``thread_type="AUTO"``); output is unchanged.

    Raises:
        DecodeError: the file is empty, unreadable, lacks a required stream or has fewer frames than needed.
        ValueError: a bad argument.
    """
    if missing not in ("fail", "fill"):
        raise ValueError(f"missing must be 'fail' or 'fill', got {missing!r}")
    if num_frames < 1 or frame_size < 1 or sample_rate < 1:
        raise ValueError(
            f"num_frames, frame_size and sample_rate must be >= 1, got {num_frames}, {frame_size}, {sample_rate}"
        )
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise _fail("file not found", path) from None
    except OSError as err:
        raise _fail(f"cannot read file: {err.strerror or err}", path) from None
    if path.is_dir():
        raise _fail("is a directory, not a media file", path)
    if size == 0:
        raise _fail("empty file (0 bytes)", path)
    try:
        container = av.open(str(path), mode="r")
    except av.FFmpegError as err:
        kind = _known_container(path)
        if kind:
            # The header says it is a media file, so libav's refusal means damage, typically a cut-off download
            # (an MP4 written without faststart keeps its index at the end).
            raise _fail(f"damaged or truncated {kind} file: {_libav_message(err)}", path) from None
        raise _fail(f"not a media file: {_libav_message(err)}", path) from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise _fail(f"not a media file: {err}", path) from None
    args = (path, num_frames, frame_size, sample_rate, missing, max_audio_samples, threads)
    try:
        try:
            return _decode_open(container, *args)
        except _ShortStream as short:
            # The stream ended cleanly before the reported/estimated frame count: the count was wrong (an edit
            # list, an estimate from a longer audio track), not the file. OpenCV would fail to seek there; we
            # sample again over the frames that exist, and say so in ``info``.
            container.close()
            container = av.open(str(path), mode="r")
            return _decode_open(container, *args, actual_frames=short.frames)
    except DecodeError:
        raise
    except av.FFmpegError as err:  # anything libav says about the file itself
        raise _fail(f"decode error: {_libav_message(err)}", path) from None
    except Exception as err:  # noqa: BLE001 - e.g. PyAV's ValueError on a mid-stream format change: still the file
        log.debug("%s: unexpected error while decoding", path, exc_info=True)
        raise _fail(f"decode error ({type(err).__name__}): {err}", path) from None
    finally:
        container.close()


class _ShortStream(Exception):
    """Internal: the video stream ended cleanly after ``frames`` frames, fewer than planned."""

    def __init__(self, frames: int):
        super().__init__(frames)
        self.frames = frames


def _decode_open(
    container: Any,
    path: Path,
    num_frames: int,
    frame_size: int,
    sample_rate: int,
    missing: str,
    max_audio_samples: int | None,
    threads: bool,
    actual_frames: int | None = None,
) -> DecodedClip:
    vstream = container.streams.video[0] if container.streams.video else None
    astream = container.streams.audio[0] if container.streams.audio else None
    if vstream is None and astream is None:
        raise _fail("no audio or video stream", path)
    if vstream is None and missing == "fail":
        raise _fail("no video stream", path)
    if astream is None and missing == "fail":
        raise _fail("no audio stream", path)

    info: dict[str, Any] = {"container": container.format.name, "file_bytes": path.stat().st_size}
    duration = _container_duration(container, vstream, astream)
    warnings: list[str] = []

    # ---- video plan: which decoded positions to keep
    fps = 0.0
    positions: list[int] = []
    if vstream is not None:
        cc = vstream.codec_context
        rate = vstream.guessed_rate or vstream.average_rate or vstream.base_rate
        fps = float(rate) if rate else 0.0
        reported = int(vstream.frames or 0)
        count_source = "container"
        if reported <= 0:
            # As OpenCV does: frame count = round(duration * fps) when the container has no count.
            reported = int(np.floor(duration * fps + 0.5)) if duration > 0 and fps > 0 else 0
            count_source = "estimated from duration"
            log.debug("%s: no frame count in the container, estimated %d from %.3f s", path, reported, duration)
        if actual_frames is not None:
            count_source = f"decoded ({count_source} count {reported} was too high)"
            reported = actual_frames
        if fps <= 0 and reported <= 0:
            raise _fail("video stream reports neither a frame rate nor a frame count", path)
        total = min(reported, int(fps * MAX_SECONDS)) if fps > 0 else reported
        if total <= 0:
            raise _fail(f"video stream has no frames (reported {reported} at {fps:.3f} fps)", path)
        positions = frame_positions(total, num_frames)
        info.update(
            video_codec=cc.name,
            width=cc.width,
            height=cc.height,
            pix_fmt=cc.pix_fmt,
            fps=fps,
            frame_count=reported,
            frame_count_source=count_source,
            frames_considered=total,
            frame_positions=positions,
        )
        if threads:
            vstream.thread_type = "AUTO"
    if astream is not None:
        acc = astream.codec_context
        info.update(
            audio_codec=acc.name,
            audio_rate=acc.sample_rate,
            audio_channels=acc.channels,
            audio_layout=acc.layout.name if acc.layout else None,
        )

    # ---- one demuxing pass over both streams
    needed_set = set(positions)
    last_needed = max(positions, default=-1)
    picked: dict[int, np.ndarray] = {}
    n_video = 0
    chunks: list[np.ndarray] = []
    n_audio = 0
    resampler = None
    audio_cap = max_audio_samples if max_audio_samples is not None else None
    video_done = vstream is None
    audio_done = astream is None
    audio_cut = False
    decode_errors = 0
    last_time: float | None = None

    def take_audio(frames: list[Any]) -> None:
        nonlocal n_audio
        for out in frames:
            # s16p: one plane per channel; the reference keeps channel 1 (``sox remix 1``).
            mono = out.to_ndarray()[0]
            chunks.append(mono)
            n_audio += mono.shape[0]

    streams = [s for s in (vstream, astream) if s is not None]
    try:
        for packet in container.demux(streams):
            is_video = packet.stream is vstream
            if (is_video and video_done) or (not is_video and audio_done):
                continue
            try:
                decoded = packet.decode()
            except av.FFmpegError as err:
                # ffmpeg and OpenCV skip a damaged packet and go on; so do we, and count it.
                decode_errors += 1
                log.debug("%s: skipped a damaged %s packet: %s", path, packet.stream.type, err)
                continue
            if is_video:
                for frame in decoded:
                    if frame.time is not None:
                        last_time = frame.time
                    if n_video == 0 and frame.rotation:
                        # Recorded, not applied: the reference's OpenCV version decides whether it auto-rotated.
                        info["rotation"] = int(frame.rotation)
                    if n_video in needed_set and n_video not in picked:
                        picked[n_video] = resize_center_crop(frame.to_ndarray(format="rgb24"), frame_size)
                    n_video += 1
                if n_video > last_needed:
                    video_done = True
            else:
                for frame in decoded:
                    if resampler is None:
                        resampler = av.AudioResampler(format="s16p", layout=frame.layout, rate=sample_rate)
                    take_audio(resampler.resample(frame))
                if audio_cap is not None and n_audio >= audio_cap:
                    audio_done = audio_cut = True
            if video_done and audio_done:
                break
        else:
            if resampler is not None and not audio_done:
                take_audio(resampler.resample(None))  # flush the resampler's delay line at end of stream
    except av.FFmpegError as err:
        # A truncated or damaged file: keep what was decoded, judge below whether it is enough.
        warnings.append(f"demuxing stopped early: {_libav_message(err)}")
        log.debug("%s: demuxing stopped early: %s", path, err)
        if resampler is not None and not audio_done:
            take_audio(resampler.resample(None))

    filled: list[str] = []
    # ---- frames
    if vstream is not None:
        if (
            len(picked) < len(needed_set)
            and actual_frames is None
            and n_video > 0
            and not warnings
            and not decode_errors
            and not _ends_early(vstream, last_time, fps)
        ):
            raise _ShortStream(n_video)
        if len(picked) < len(needed_set):
            got = sum(1 for p in positions if p in picked)
            reason = f"truncated: decoded {got} of {num_frames} frames"
            reason += f" (the video stream ends after {n_video} frames, frame {last_needed} needed"
            reason += f"; {info['frame_count_source']} frame count {info['frame_count']} at {fps:.3f} fps)"
            if decode_errors:
                reason += f"; {decode_errors} damaged packets"
            raise _fail(reason, path)
        frames = np.stack([picked[p] for p in positions])
    else:
        frames = np.zeros((num_frames, frame_size, frame_size, 3), dtype=np.uint8)
        filled.append("video")

    # ---- audio
    if n_audio > 0:
        wav16 = np.concatenate(chunks)
        if audio_cap is not None and wav16.shape[0] > audio_cap:
            wav16 = wav16[:audio_cap]
        waveform = wav16.astype(np.float32) / np.float32(32768.0)
    elif astream is not None and missing == "fail":
        raise _fail("audio stream has no decodable samples", path)
    else:
        if duration <= 0 and fps > 0 and vstream is not None:
            duration = n_video / fps
        n = int(round(duration * sample_rate))
        if audio_cap is not None:
            n = min(n, audio_cap)
        if n <= 0:
            raise _fail("no audio stream, and no duration to fill it with silence", path)
        waveform = np.zeros(n, dtype=np.float32)
        filled.append("audio")
        if astream is not None:
            warnings.append("audio stream has no decodable samples; filled with silence")

    if duration <= 0:
        duration = n_audio / sample_rate if n_audio else (n_video / fps if fps > 0 else 0.0)
    info.update(
        frames_decoded=n_video,
        audio_samples=int(waveform.shape[0]),
        audio_cut=audio_cut,
        decode_errors=decode_errors,
    )
    if warnings:
        info["warnings"] = warnings
    return DecodedClip(
        frames=frames,
        waveform=waveform,
        sample_rate=sample_rate,
        fps=fps,
        duration=float(duration),
        missing=tuple(filled),
        info=info,
    )


def _ends_early(vstream: Any, last_time: float | None, fps: float) -> bool:
    """True when the last decoded frame lies well before the stream's announced end (a cut-off file)."""
    # Only the stream's own duration (an index entry) counts: a container duration may come from a longer audio
    # track, which is no sign of damage.
    expected = float(vstream.duration * vstream.time_base) if vstream.duration and vstream.time_base else 0.0
    if last_time is None or expected <= 0 or fps <= 0:
        return False
    return last_time + 1.0 / fps < expected - max(2.0 / fps, 0.05 * expected)


def _known_container(path: Path) -> str | None:
    """Name of the container family announced by the file's first bytes, if recognisable."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(12)
    except OSError:
        return None
    if head[4:8] == b"ftyp":
        return "MP4/MOV"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "Matroska/WebM"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "AVI"
    return None


def _container_duration(container: Any, vstream: Any, astream: Any) -> float:
    """Seconds: the container's duration, else the longest stream duration, else 0 (unknown)."""
    if container.duration:
        return container.duration / 1_000_000
    best = 0.0
    for s in (vstream, astream):
        if s is not None and s.duration and s.time_base:
            best = max(best, float(s.duration * s.time_base))
    return best
