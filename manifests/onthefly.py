"""Corrupting a clean shard set while reading: the per-sample hook the shard reader applies.

``open_dataset(catalog, dataset, split, corruption="video:fog@5", source="clean")`` reads the clean set and hands
the reader an :class:`OnTheFly` hook. The reader (``avtta.shards.indexed``) keeps every CAV-MAE input transform
(frame decode and resize, the Kaldi fbank, the normalisation: ``avtta.shards.transforms`` and ``avtta.shards.fbank``);
the hook only turns the stored frame and waveform into the corrupted ones, with the seeded kernels
``avtta shard --corrupt`` uses, so every model input equals the one read from the written set:

* frame: the stored clean JPEG, decoded -> :func:`~avtta.corruptions.corrupt_frame` (only the frame the model sees:
  each frame has its own draws) -> JPEG at the corrupted sets' quality (85) -> decoded by the reader;
* audio: the stored ``wav.flac`` waveform -> :func:`~avtta.corruptions.corrupt_waveform` -> the PCM16 grid (floor,
  as the write path) -> the reader's fbank, rounded to float16 as a written set stores it.

Why here: ``shards/`` imports no other avtta package, so the corruption cannot live in the reader; the catalog
layer already depends on ``corruptions`` (one spec syntax) and ``shards``, and is where the clean set, its seed and
its corruption options are known. The fbank is an input transform of the reader (``shards/fbank.py``, re-exported
by ``avtta.pipelines.features``), so it needs nothing from ``pipelines`` (which depends on ``manifests``).
"""

from __future__ import annotations

from dataclasses import fields

import numpy as np
from avtta.corruptions import CorruptionOptions, CorruptionSpec, corrupt_frame, corrupt_waveform, corrupts
from avtta.shards.fbank import quantize_pcm16
from avtta.shards.loader import SampleHook, encode_jpeg
from avtta.shards.schema import JPEG_QUALITY_CORRUPTED

__all__ = ["OnTheFly", "options_of"]


def options_of(recorded: dict) -> CorruptionOptions:
    """The corruption options a set's ``set.json`` records (its non-default ones) as :class:`CorruptionOptions`."""
    known = {f.name for f in fields(CorruptionOptions)}
    unknown = sorted(set(recorded) - known)
    if unknown:
        raise ValueError(f"the set records corruption options {unknown} this version does not know")
    return CorruptionOptions(**recorded)


class OnTheFly(SampleHook):
    """Frames corrupted by ``video`` (its visual part), audio by ``audio`` (its audio part), seeded as the shard job.

    A single selection (``"av:rain@5"``) is both; a joined pair (``("video:fog@5", "audio:rain@5")``) takes the
    frames of the first and the audio of the second, as reading the two written sets joined by key does.

    Args:
        video, audio: the specs (registered names only); :data:`~avtta.corruptions.CLEAN` for none.
        seed: the shard job's seed (the clean set's ``seed``): with the key and the spec it seeds the draws.
        options: the job's corruption options (noise recordings, reference frames, SNR).
        fbank_device: see :class:`~avtta.shards.loader.SampleHook`.
    """

    def __init__(
        self,
        video: CorruptionSpec,
        audio: CorruptionSpec,
        seed: int,
        options: CorruptionOptions = CorruptionOptions(),  # noqa: B008  (frozen, immutable default)
        fbank_device: str | None = None,
    ):
        self.video_spec, self.audio_spec = video, audio
        self.video = corrupts(video)[0]
        self.audio = corrupts(audio)[1]
        self.seed = int(seed)
        self.options = options
        self.fbank_device = fbank_device

    def frame(self, key: str, index: int, rgb: np.ndarray) -> bytes:
        out = corrupt_frame(self.video_spec, rgb, index, seed=self.seed, key=key, options=self.options)
        return encode_jpeg(out, JPEG_QUALITY_CORRUPTED)

    def waveform(self, key: str, waveform: np.ndarray, sample_rate: int) -> np.ndarray:
        out = corrupt_waveform(
            self.audio_spec, waveform, seed=self.seed, key=key, sample_rate=sample_rate, options=self.options
        )
        return quantize_pcm16(out)

    def __repr__(self) -> str:
        return f"OnTheFly(video={self.video_spec}, audio={self.audio_spec}, seed={self.seed})"
