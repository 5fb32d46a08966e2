"""Pinned reader output: the sha256 of every batch both access modes yield on a small synthetic catalog.

The digests were taken from the reader before the reader-core refactor (issue 11); any change to the tensors, the
order, the join or the per-sample randomness changes them. The catalog is synthetic (float16 fbanks from a seeded
numpy generator, PIL-encoded JPEG frames of three sizes), so nothing depends on float kernels that vary by CPU:
JPEG decoding, PIL's fixed-point resize and the elementwise float32 normalisation give the same bits everywhere.
"""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pytest
from avtta.manifests import (
    ShardSetInfo,
    open_dataset,
    set_relpath,
    write_catalog,
    write_classes,
    write_json,
    write_set_tables,
)
from avtta.manifests.tables import part_members
from avtta.shards import ShardWriter
from avtta.shards.schema import METADATA_FIELDS, Sample
from PIL import Image

KEYS = [f"k{i:02d}" for i in range(10)]
SIZES = ((224, 224), (48, 36), (30, 40))  # (w, h): stored at model size, wider than high, higher than wide


def _sample(key: str, seed: int) -> Sample:
    rng = np.random.default_rng(seed)
    w, h = SIZES[seed % 3]
    jpegs = []
    for _ in range(6):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=75)
        jpegs.append(buf.getvalue())
    meta = dict.fromkeys(METADATA_FIELDS)
    meta.update(key=key, seed=seed)
    frames = 1000 if seed % 2 else 900  # a short fbank is zero-padded to 1024 rows
    return Sample(key, rng.normal(-5, 4, (frames, 128)).astype(np.float16), jpegs, seed % 3, meta)


def _write_set(root, modality: str, corruption: str, severity: int, keys: list[str], salt: int) -> None:
    rel = set_relpath("toy", "test", modality, corruption, severity)
    folder = root / rel
    folder.mkdir(parents=True)
    parts = []
    for j, chunk in enumerate([KEYS[0:4], KEYS[4:8], KEYS[8:10]]):  # one job: the same chunks of clips per set
        name = f"shard-{j:06d}.tar"
        rows = []
        with ShardWriter(folder / name) as w:
            for key in chunk:
                if key in keys:
                    s = _sample(key, salt + int(key[1:]))
                    w.write(s)
                    rows.append({"key": key, "video_id": key, "label": s.label, "shard": name})
        parts.append(
            {
                "shard": {"file": name, "samples": len(rows), "bytes": 0, "sha256": ""},
                "samples": rows,
                "failures": [],
                "members": part_members(w.members),
            }
        )
    samples, _, _ = write_set_tables(folder, parts)
    info = ShardSetInfo("toy", "test", modality, corruption, severity, rel, samples=len(samples), shards=3)
    info.num_frames = 6
    write_json(info.to_json(), folder / "set.json")


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    root = tmp_path_factory.mktemp("pin")
    write_classes(root / "toy" / "classes.csv", [("a", "a"), ("b", "b"), ("c", "c")])
    _write_set(root, "clean", "clean", 0, KEYS, 0)
    _write_set(root, "video", "fog", 5, [k for k in KEYS if k != "k05"], 100)  # k05 failed in the video set
    _write_set(root, "audio", "rain", 5, [k for k in KEYS if k != "k02"], 200)  # k02 failed in the audio set
    write_catalog(root)
    return root


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
def test_batches_are_pinned(catalog, case, access):
    kw, extra = CASES[case]
    kw = {"batch_size": 4, "num_workers": 0, **kw}
    if access == "stream":
        kw["shuffle_buffer"] = 6  # a setting of the stream mode only
    loader = open_dataset(catalog, "toy", "test", access=access, **kw)
    if "epoch" in extra:
        loader.set_epoch(extra["epoch"])
    assert digest(loader) == PINNED[case, access]


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize("access", ["index", "stream"])
def test_pinned_batches_with_workers(catalog, access):
    loader = open_dataset(
        catalog, "toy", "test", "clean", batch_size=4, seed=7, num_workers=2, access=access,
        **({"shuffle_buffer": 6} if access == "stream" else {}),
    )  # fmt: skip
    assert digest(loader) == PINNED["eval", access]
