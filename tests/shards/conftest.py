"""A small synthetic catalog for the reader tests (no decoding, no float kernels that vary by CPU)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from avtta.manifests import ShardSetInfo, set_relpath, write_catalog, write_classes, write_json, write_set_tables
from avtta.manifests.tables import part_members
from avtta.shards import ShardWriter
from avtta.shards.schema import METADATA_FIELDS, Sample
from PIL import Image

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


def _write_set(root, spec: str, salt: int, failed: tuple[str, ...] = (), prefix: str = "k") -> None:
    """One set of the ten clips ``<prefix>00..09`` in shards of 4, 4 and 2 (as one job writes them), but ``failed``."""
    modality, _, rest = spec.partition(":")
    corruption, _, severity = rest.partition("@")
    rel = set_relpath("toy", "test", modality, corruption or "clean", int(severity or 0))
    folder = root / rel
    folder.mkdir(parents=True)
    keys = [f"{prefix}{i:02d}" for i in range(10)]
    parts = []
    for j, chunk in enumerate([keys[0:4], keys[4:8], keys[8:10]]):
        name = f"shard-{j:06d}.tar"
        rows = []
        w = ShardWriter(folder / name)
        for key in chunk:
            if key not in failed:
                s = _sample(key, salt + int(key[1:]))
                w.write(s)
                rows.append({"key": key, "video_id": key, "label": s.label, "shard": name})
        size, sha256 = w.close()
        parts.append(
            {
                "shard": {"file": name, "samples": len(rows), "bytes": size, "sha256": sha256},
                "samples": rows,
                "failures": [],
                "members": part_members(w.members),
            }
        )
    samples, _, _ = write_set_tables(folder, parts)
    info = ShardSetInfo(
        "toy", "test", modality, corruption or "clean", int(severity or 0), rel, samples=len(samples), shards=3
    )
    info.num_frames = 6
    write_json(info.to_json(), folder / "set.json")


@pytest.fixture(scope="session")
def synthetic_catalog(tmp_path_factory):
    """A catalog of small synthetic sets (float16 fbanks of 900 / 1000 rows, six JPEG frames of three sizes).

    ``video:fog@5`` lost clip k05 and ``audio:rain@5`` clip k02 (failed there); ``audio:wind@5`` holds other clips
    (z00..z09) in the same shard files.
    """
    root = tmp_path_factory.mktemp("synthetic")
    write_classes(root / "toy" / "classes.csv", [("a", "a"), ("b", "b"), ("c", "c")])
    _write_set(root, "clean", 0)
    _write_set(root, "video:fog@5", 100, failed=("k05",))
    _write_set(root, "audio:rain@5", 200, failed=("k02",))
    _write_set(root, "audio:wind@5", 300, prefix="z")
    write_catalog(root)
    return root
