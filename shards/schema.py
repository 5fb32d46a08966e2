"""The avtta shard sample schema, declared once.

A shard is a plain POSIX tar written with the ``webdataset`` library's ``TarWriter``. One sample is a group of
tar members sharing a key (``<key>.<field>``). Writer, reader, manifest columns and tests all derive from the
declarations below.

| field          | tar member            | content                                                                  |
| -------------- | --------------------- | ------------------------------------------------------------------------ |
| fbank          | ``<key>.fbank.npy``   | float16 ``[1024, 128]`` Kaldi log-mel fbank, *before* normalisation      |
| frames         | ``<key>.frame_K.jpg`` | K = 0..N-1: RGB JPEG frames (224 square from ``avtta shard``) |
| label          | ``<key>.cls``         | primary class index as ASCII (the reference's argmax of the label vector) |
| metadata       | ``<key>.json``        | UTF-8 JSON object, keys sorted (see ``METADATA_FIELDS``)                |
| waveform (opt) | ``<key>.wav.flac``    | 16 kHz mono PCM16 FLAC, so audio corruptions can be applied while reading |

Keys contain no dots (webdataset splits the member name at the first dot) and no path separators; duplicate
keys inside a shard set are errors. Both are checked at write time.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

SCHEMA_VERSION = 1

FBANK_FIELD = "fbank.npy"
LABEL_FIELD = "cls"
META_FIELD = "json"
WAVE_FIELD = "wav.flac"
FRAME_FIELD = "frame_{}.jpg"
FRAME_RE = re.compile(r"^frame_(\d+)\.jpg$")

FBANK_DTYPE = np.float16
NUM_MEL_BINS = 128
TARGET_LENGTH = 1024
SAMPLE_RATE = 16000
FRAME_SIZE = 224
NUM_FRAMES = 10
EVAL_FRAME = 5  # READ/BriMPR evaluate frame_5 (int(total_frame / 2)); AVRobustBench used frame_4 (spec item 40)

# JPEG quality of stored frames: the CAV-MAE frame extractor saves clean frames with PIL's default (75); the
# Kinetics50-C / VGGSound-C scripts save corrupted frames at quality 85 (spec corruptions.md 1.1, item 27).
JPEG_QUALITY_CLEAN = 75
JPEG_QUALITY_CORRUPTED = 85

KEY_RE = re.compile(r"^[A-Za-z0-9_\-]+$")

# Metadata keys every sample carries (the writer checks them).
METADATA_FIELDS = (
    "schema_version",
    "key",
    "video_id",
    "source",
    "labels",
    "label_names",
    "corruption",
    "severity",
    "params",
    "seed",
    "fps",
    "duration",
    "sample_rate",
    "num_frames",
    "missing",
)


class SchemaError(ValueError):
    """A sample does not follow the shard schema."""


def validate_key(key: str) -> str:
    """Check a sample key: non-empty, only ``[A-Za-z0-9_-]`` (no dots, no slashes)."""
    if not isinstance(key, str) or not KEY_RE.match(key):
        raise SchemaError(
            f"invalid sample key {key!r}: keys may only contain letters, digits, '_' and '-' "
            "(webdataset splits member names at the first dot)"
        )
    return key


def sanitize_key(video_id: str) -> str:
    """Turn a video id into a valid key (characters outside ``[A-Za-z0-9_-]`` become ``_``)."""
    key = re.sub(r"[^A-Za-z0-9_\-]", "_", video_id)
    if not key:
        raise SchemaError(f"video id {video_id!r} gives an empty key")
    return key


@dataclass(frozen=True)
class Sample:
    """One decoded sample in memory (before encoding / after decoding)."""

    key: str
    fbank: np.ndarray  # float [T, 128], unnormalised
    frames: list[bytes]  # JPEG bytes, frame 0..N-1
    label: int
    metadata: dict[str, Any]
    waveform_flac: bytes | None = None


def encode_npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def decode_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def encode_json(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")


def encode_sample(sample: Sample) -> dict[str, Any]:
    """Sample -> the ``{"__key__": key, field: bytes}`` dict the webdataset writer takes."""
    validate_key(sample.key)
    fbank = np.asarray(sample.fbank)
    if fbank.ndim != 2 or fbank.shape[1] != NUM_MEL_BINS:
        raise SchemaError(f"sample {sample.key}: fbank must be [T, {NUM_MEL_BINS}], got {list(fbank.shape)}")
    if not sample.frames:
        raise SchemaError(f"sample {sample.key}: no frames")
    missing = [f for f in METADATA_FIELDS if f not in sample.metadata]
    if missing:
        raise SchemaError(f"sample {sample.key}: metadata lacks {missing}")
    out: dict[str, Any] = {
        "__key__": sample.key,
        FBANK_FIELD: encode_npy(fbank.astype(FBANK_DTYPE)),
        LABEL_FIELD: str(int(sample.label)).encode("ascii"),
        META_FIELD: encode_json(sample.metadata),
    }
    for k, jpeg in enumerate(sample.frames):
        if not isinstance(jpeg, (bytes, bytearray)) or jpeg[:2] != b"\xff\xd8":
            raise SchemaError(f"sample {sample.key}: frame {k} is not JPEG bytes")
        out[FRAME_FIELD.format(k)] = bytes(jpeg)
    if sample.waveform_flac is not None:
        out[WAVE_FIELD] = sample.waveform_flac
    return out


def decode_sample(raw: dict[str, Any]) -> Sample:
    """Inverse of :func:`encode_sample` on a dict of raw bytes (as webdataset's tar iterators yield)."""
    key = raw["__key__"]
    frames = sorted(
        ((int(m.group(1)), v) for k, v in raw.items() if (m := FRAME_RE.match(k))),
        key=lambda kv: kv[0],
    )
    return Sample(
        key=key,
        fbank=decode_npy(raw[FBANK_FIELD]),
        frames=[v for _, v in frames],
        label=int(raw[LABEL_FIELD]),
        metadata=json.loads(raw[META_FIELD]),
        waveform_flac=raw.get(WAVE_FIELD),
    )
