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

# 2: corruptions act on the clip as the clean set stores it (decoded clean JPEGs), one generator per frame
SCHEMA_VERSION = 2

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


# ---------------------------------------------------------------------------------------------------------------
# the per-sample record: one declaration for the tar metadata (``<key>.json``) and the ``samples.parquet`` row


@dataclass(frozen=True)
class SampleRecord:
    """What is known about one written sample; :meth:`metadata` and :meth:`row` both derive from it.

    ``fps`` and ``duration`` are kept unrounded (the manifest row); the metadata rounds them to 6 decimals.
    ``extra`` holds the producer's provenance block (``{"decode": ...}`` from ``avtta shard``, ``{"import": ...}``
    from ``avtta import``), stored in the metadata only.
    """

    key: str
    video_id: str
    source: str
    labels: tuple[int, ...]
    label_names: tuple[str, ...]
    corruption: str
    severity: int
    params: dict[str, Any]
    seed: int
    fps: float
    duration: float
    sample_rate: int
    num_frames: int
    missing: tuple[str, ...] = ()
    extra: dict[str, Any] | None = None

    @property
    def label(self) -> int:
        """Primary label: the lowest index (the reference's argmax of the multi-hot vector); -1 when unlabelled."""
        return min(self.labels) if self.labels else -1

    def metadata(self) -> dict[str, Any]:
        """The ``<key>.json`` object (every key of :data:`METADATA_FIELDS`, plus ``extra``)."""
        meta = {
            "schema_version": SCHEMA_VERSION,
            "key": self.key,
            "video_id": self.video_id,
            "source": self.source,
            "labels": list(self.labels),
            "label_names": list(self.label_names),
            "corruption": self.corruption,
            "severity": self.severity,
            "params": self.params,
            "seed": self.seed,
            "fps": round(float(self.fps), 6),
            "duration": round(float(self.duration), 6),
            "sample_rate": int(self.sample_rate),
            "num_frames": self.num_frames,
            "missing": list(self.missing),
        }
        return {**meta, **(self.extra or {})}

    def row(self, shard: str) -> dict[str, Any]:
        """The ``samples.parquet`` row of this sample stored in ``shard`` (columns of :data:`SAMPLES_SCHEMA`)."""
        return {
            "key": self.key,
            "video_id": self.video_id,
            "source": self.source,
            "label": self.label,
            "labels": list(self.labels),
            "shard": shard,
            "corruption": self.corruption,
            "severity": self.severity,
            "params": json.dumps(self.params, sort_keys=True),
            "fps": float(self.fps),
            "duration": float(self.duration),
            "missing": ",".join(self.missing),
        }

    def sample(self, fbank: np.ndarray, frames: list[bytes], waveform_flac: bytes | None = None) -> Sample:
        """The shard sample carrying this record as its metadata."""
        return Sample(self.key, fbank, frames, self.label, self.metadata(), waveform_flac)


def _samples_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("key", pa.string()),
            ("video_id", pa.string()),
            ("source", pa.string()),
            ("label", pa.int32()),
            ("labels", pa.list_(pa.int32())),
            ("shard", pa.string()),
            ("corruption", pa.string()),
            ("severity", pa.int32()),
            ("params", pa.string()),  # JSON of the sampled corruption parameters
            ("fps", pa.float64()),
            ("duration", pa.float64()),
            ("missing", pa.string()),  # comma-separated filled modalities ("" when none)
        ]
    )


SAMPLES_SCHEMA = _samples_schema()  # the samples.parquet columns: SampleRecord.row, one column per key
