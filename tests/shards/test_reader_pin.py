"""Pinned reader output: the sha256 of every batch both access modes yield on a small synthetic catalog.

The digests were taken from the reader before the reader-core refactor (issue 11); any change to the tensors, the
order, the join or the per-sample randomness changes them. The catalog (``conftest.synthetic_catalog``) is
synthetic (float16 fbanks from a seeded numpy generator, PIL-encoded JPEG frames of three sizes), so nothing depends
on float kernels that vary by CPU: JPEG decoding, PIL's fixed-point resize and the elementwise float32
normalisation give the same bits everywhere.
"""

from __future__ import annotations

import hashlib
import json

import pytest
from avtta.manifests import open_dataset


def digest(loader) -> str:
    h = hashlib.sha256()
    for b in loader:
        h.update(json.dumps(b["key"]).encode())
        h.update(b["label"].numpy().tobytes())
        h.update(b["audio"].numpy().tobytes())
        h.update(b["video"].numpy().tobytes())
        if "metadata" in b:
            h.update(json.dumps(b["metadata"], sort_keys=True).encode())
    return h.hexdigest()[:16]


CASES = {
    "eval": (dict(corruption="clean", seed=7), {}),
    "joined": (dict(corruption=("video:fog@5", "audio:rain@5"), seed=3, frame=1), {}),
    "training": (dict(corruption="clean", seed=2, frame="random", freqm=24, timem=96, batch_size=3, drop_last=True),
                 {"epoch": 1}),
    "metadata": (dict(corruption="video:fog@5", shuffle=False, with_metadata=True), {}),
}  # fmt: skip

PINNED = {  # taken from the reader before the issue-11 refactor (58bf201)
    ("eval", "index"): "b1997e25889bb318",
    ("eval", "stream"): "17ff92f3e0b5064a",
    ("joined", "index"): "b62e6806d9e31c6c",
    ("joined", "stream"): "dd29d1533f4f65ce",
    ("training", "index"): "80b27a5d77a8e578",
    ("training", "stream"): "dae8a1304b748c72",
    ("metadata", "index"): "1586340530c70e79",
    ("metadata", "stream"): "1586340530c70e79",
}


@pytest.mark.parametrize("access", ["index", "stream"])
@pytest.mark.parametrize("case", list(CASES))
def test_batches_are_pinned(synthetic_catalog, case, access):
    kw, extra = CASES[case]
    kw = {"batch_size": 4, "num_workers": 0, **kw}
    if access == "stream":
        kw["shuffle_buffer"] = 6  # a setting of the stream mode only
    loader = open_dataset(synthetic_catalog, "toy", "test", access=access, **kw)
    if "epoch" in extra:
        loader.set_epoch(extra["epoch"])
    assert digest(loader) == PINNED[case, access]


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize("access", ["index", "stream"])
def test_pinned_batches_with_workers(synthetic_catalog, access):
    loader = open_dataset(
        synthetic_catalog, "toy", "test", "clean", batch_size=4, seed=7, num_workers=2, access=access,
        **({"shuffle_buffer": 6} if access == "stream" else {}),
    )  # fmt: skip
    assert digest(loader) == PINNED["eval", access]
