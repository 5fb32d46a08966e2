"""What the two access modes share: the reader settings, frame decoding, the key join and the loader shell.

The index mode (:mod:`.indexed`, random access at the member index's byte ranges) and the stream mode
(:mod:`.reader`, webdataset's sequential tar iterators) differ only in how they find a sample's bytes and in what
order they visit samples. Everything a user sets or sees is here, once: :class:`ReaderConfig`, the JPEG decode
(:func:`load_image`), the audio/video join (:func:`join_keys`) and :class:`Loader` (batch-size check, ``set_epoch``,
``len()``, the torch ``DataLoader`` setup).
"""

from __future__ import annotations

import functools
import io
import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset

from .transforms import FRAME_SIZE, TARGET_LENGTH, resize_center_crop

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReaderConfig:
    """How samples become model inputs, the same in both access modes."""

    frame: str | int = "eval"  # "eval" (frame 5, READ/BriMPR), "random" (training), or a frame index
    im_res: int = FRAME_SIZE
    target_length: int = TARGET_LENGTH
    freqm: int = 0  # SpecAugment masks (CAV-MAE fine-tuning: 48 / 192); 0 at test time
    timem: int = 0
    shuffle: bool = True
    seed: int = 0
    with_metadata: bool = False


# ---------------------------------------------------------------------------------------------------------------
# frames


@functools.cache
def _torchvision_io() -> Any:
    """``torchvision.io``, imported on first use: importing torchvision costs about 0.9 s (its package imports its
    models, ops and ``torch._dynamo``), which every process importing this module (a shard job's Ray workers, the
    CLI) would pay for nothing. The readers import it before their ``DataLoader`` workers fork, so the workers
    inherit it instead of each importing it again."""
    import torchvision.io

    return torchvision.io


def decode_rgb(jpeg: bytes | bytearray) -> torch.Tensor:
    """JPEG bytes -> uint8 [3, H, W] RGB.

    ``torchvision.io.decode_jpeg`` gives the same pixels as PIL (both libjpeg-turbo with its default IDCT and fancy
    upsampling; a test holds them equal on real and generated frames) about 25 % faster and already channel-first.
    Anything it cannot decode goes through PIL, as the reference does.
    """
    data = jpeg if isinstance(jpeg, bytearray) else bytearray(jpeg)  # torch wants writable memory
    tvio = _torchvision_io()
    try:
        return tvio.decode_jpeg(torch.frombuffer(data, dtype=torch.uint8), mode=tvio.ImageReadMode.RGB)
    except RuntimeError:
        return torch.from_numpy(decode_rgb_array(jpeg)).permute(2, 0, 1)


def decode_rgb_array(jpeg: bytes | bytearray) -> np.ndarray:
    """JPEG bytes -> uint8 [H, W, 3] RGB with PIL: the same pixels as :func:`decode_rgb` (see there), without
    torchvision (what the shard job decodes its stored frames with before corrupting them)."""
    with Image.open(io.BytesIO(jpeg)) as img:
        return np.array(img.convert("RGB"), dtype=np.uint8)


def encode_jpeg(frame: np.ndarray, quality: int) -> bytes:
    """RGB uint8 [H, W, 3] -> JPEG bytes (PIL, fixed settings, so deterministic): how frames are stored, and how
    the on-the-fly reader stores a corrupted frame before decoding it again (the same round trip)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame), mode="RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def load_image(jpeg: bytes | bytearray, im_res: int = FRAME_SIZE) -> torch.Tensor:
    """JPEG -> uint8 [3, im_res, im_res]: decode, then Resize(im_res, PIL bicubic) + CenterCrop unless already square
    at that size (the reference's ``transforms.Resize`` on a PIL image)."""
    x = decode_rgb(jpeg)
    if x.shape[1:] == (im_res, im_res):
        return x
    rgb = resize_center_crop(x.permute(1, 2, 0).numpy(), im_res, Image.BICUBIC)
    return torch.from_numpy(rgb).permute(2, 0, 1)


# ---------------------------------------------------------------------------------------------------------------
# per-sample changes between the stored bytes and the model inputs (corruption while reading)


class SampleHook:
    """What a reader changes in a sample between its stored bytes and the model inputs; none by default.

    The reader owns the CAV-MAE input transforms (frame decode, resize, fbank, normalisation); a hook only says how
    a stored frame and a stored waveform become the ones those transforms see. The shard readers know nothing of
    corruptions: ``avtta.manifests.onthefly`` implements a hook that corrupts a clean set while reading and
    :func:`avtta.manifests.open_dataset` hands it to the reader.

    Attributes:
        video: :meth:`frame` changes frames (else the stored JPEG is decoded as it is).
        audio: :meth:`waveform` changes the audio: the fbank is computed from the stored ``wav.flac`` waveform it
            returns (else the stored fbank is read).
        fbank_device: where the fbanks of changed audio are computed. None: in the DataLoader workers, one clip at
            a time on the CPU (:func:`.fbank.compute_fbank`). A device (``"cuda"``): the workers send the changed
            waveforms and the consuming process computes the batch's fbanks there (:func:`.fbank.kaldi_fbank_batch`).
    """

    video: bool = False
    audio: bool = False
    fbank_device: str | None = None

    def frame(self, key: str, index: int, rgb: np.ndarray) -> bytes:
        """Stored frame ``index`` of sample ``key``, decoded (uint8 ``[H, W, 3]``) -> the JPEG the reader decodes."""
        raise NotImplementedError

    def waveform(self, key: str, waveform: np.ndarray, sample_rate: int) -> np.ndarray:
        """The stored waveform of sample ``key`` (float32 ``[S]``) -> the waveform its fbank is computed from."""
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------------------------
# the audio/video join


@dataclass(frozen=True)
class KeyJoin:
    """Frames from one set, fbank from another: the keys both hold, in the video set's order."""

    keys: list[str]
    video_only: int  # clips of the video set without a fbank in the audio set (failed there), left out
    audio_only: int  # clips of the audio set missing from the video set, left out


def join_keys(video: Sequence[str], audio: Sequence[str], video_name: str, audio_name: str) -> KeyJoin:
    """The one audio/video join: an inner join on sample keys.

    A clip that failed in one set only has no pair and is left out; both counts are logged. Joining sets with no
    clip in common, or a set that holds a key twice, is an error.

    Args:
        video, audio: the keys of each set, in reading order.
        video_name, audio_name: the sets, for messages.
    """
    for keys, name in ((video, video_name), (audio, audio_name)):
        if len(set(keys)) != len(keys):
            dup = next(k for k, n in Counter(keys).items() if n > 1)
            raise ValueError(f"sample key {dup!r} appears twice in {name}: it cannot be joined by key")
    have = set(audio)
    keys = [k for k in video if k in have]
    if not keys:
        raise ValueError(f"{video_name} and {audio_name} have no clip in common: they cannot be joined")
    joined = KeyJoin(keys, len(video) - len(keys), len(audio) - len(keys))
    if joined.video_only or joined.audio_only:
        log.warning(
            "joining %s with %s: %d clips only in the first and %d only in the second (failed in the other) "
            "are left out",
            video_name,
            audio_name,
            joined.video_only,
            joined.audio_only,
        )
    return joined


# ---------------------------------------------------------------------------------------------------------------
# the loader shell


class Loader:
    """Iterable of model-ready batches (dicts with audio, video, label, key); ``len()`` is the number of batches.

    Batches hold exactly ``batch_size`` samples, the last one fewer (or none, ``drop_last``), as the reference's
    ``DataLoader``; how many there are does not depend on ``num_workers``. Subclasses set ``dataset`` (whose
    ``epoch`` selects the shuffling and per-sample randomness) and yield the batches.
    """

    dataset: Any

    def __init__(self, num_samples: int, batch_size: int, num_workers: int = 2, drop_last: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.num_workers = max(0, num_workers)
        self.drop_last = drop_last

    def set_epoch(self, epoch: int) -> None:
        """Change the shuffling (and per-sample randomness) for another epoch (training)."""
        self.dataset.epoch = epoch

    def __len__(self) -> int:
        full, rest = divmod(self.num_samples, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        raise NotImplementedError

    @staticmethod
    def data_loader(dataset: Dataset | IterableDataset, workers: int, prefetch: int, **kwargs: Any) -> DataLoader:
        """The torch DataLoader both modes run their workers in: fresh workers per pass (they inherit the pass's
        state), ``prefetch`` items ahead per worker; pinning is done by the readers, into their own buffers."""
        if workers:
            _torchvision_io()  # imported here, before the workers fork, not once in each
        return DataLoader(
            dataset,
            num_workers=workers,
            pin_memory=False,
            persistent_workers=False,
            prefetch_factor=prefetch if workers else None,
            **kwargs,
        )


def resolve_pin_memory(pin_memory: bool | None) -> bool:
    """``None`` -> pin when CUDA is available (batches then go to the GPU asynchronously)."""
    return torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
