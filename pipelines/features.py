"""Audio features as the CAV-MAE data loader computes them (spec/preprocessing.md section 2.1).

``compute_fbank`` returns the *unnormalised* Kaldi filterbank; normalisation with ``FBANK_MEAN`` /
``FBANK_STD`` happens after zero-padding (spec item 25), at model-input time, in the readers (the statistics and the
normalisation live in ``avtta.shards.transforms``; re-exported here). ``quantize_pcm16`` maps a float
waveform onto the 16-bit PCM grid, as writing and re-reading a 16-bit WAV does. Both live in
``avtta.shards.fbank``, beside the readers, so that a reader corrupting a clean set's waveform while reading computes
the fbank with the same function as the write path; they are re-exported here.
"""

from __future__ import annotations

from avtta.shards.fbank import compute_fbank, kaldi_fbank_batch, max_samples_for_frames, quantize_pcm16
from avtta.shards.transforms import FBANK_MEAN, FBANK_STD

__all__ = [
    "FBANK_MEAN",
    "FBANK_STD",
    "compute_fbank",
    "kaldi_fbank_batch",
    "max_samples_for_frames",
    "quantize_pcm16",
]
