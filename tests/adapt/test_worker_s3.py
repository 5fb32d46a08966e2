"""``avtta adapt`` with everything on a real S3 server: catalog, checkpoint, source-data caches and outputs."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from avtta.adapt.report import render_run
from avtta.adapt.worker import run_adaptation
from avtta.shards import storage

from .test_worker import SPECS, cfg

RUN = dict(protocol="video", corruptions=("fog",), methods=("source", "eata", "brimpr"))


@pytest.fixture
def s3_root(s3_bucket, toy_catalog, checkpoint) -> str:
    fs, path = storage.resolve(s3_bucket)
    fs.put(str(toy_catalog(SPECS)) + "/", f"{path}/cat/", recursive=True)
    if fs.exists(f"{path}/cat/_cache"):  # made by earlier tests on the local catalog: this run must make its own
        fs.rm(f"{path}/cat/_cache", recursive=True)
    fs.put_file(str(checkpoint), f"{path}/ckpt/tiny.safetensors")
    return s3_bucket


@pytest.mark.slow
def test_adapt_from_and_to_s3_equals_local(toy_catalog, checkpoint, s3_root, tmp_path, capsys):
    local = run_adaptation(cfg(toy_catalog(SPECS), checkpoint, tmp_path / "local", **RUN))
    run = f"{s3_root}/runs/fog"
    remote = run_adaptation(
        cfg(f"{s3_root}/cat", f"{s3_root}/ckpt/tiny.safetensors", run, cache_dir=str(tmp_path / "cache"), **RUN)
    )
    key = lambda r: (r["method"], r["corruption"], r["seed"])  # noqa: E731
    assert {key(r): r["accuracy"] for r in remote} == {key(r): r["accuracy"] for r in local}
    fs, path = storage.resolve(s3_root)
    written = {os.path.relpath(p, path) for p in fs.find(path)}
    for name in ("results.parquet", "results.csv", "table.md", "heatmap.png", "config.json", "samples.parquet"):
        assert f"runs/fog/{name}" in written
    assert len([p for p in written if p.startswith("cat/_cache/") and p.endswith(".safetensors")]) == 2  # EATA, BriMPR
    assert list((tmp_path / "cache").rglob("*.tar"))  # the shards were read through the local cache
    table = pq.read_table(pa.BufferReader(storage.read_bytes(f"{run}/results.parquet"))).to_pylist()
    assert {key(r): r["accuracy"] for r in table} == {key(r): r["accuracy"] for r in local}
    capsys.readouterr()
    assert "source" in render_run(run)  # avtta report RUN re-renders a run on S3
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    assert not [p for p in written if secret.encode() in fs.cat_file(f"{path}/{p}")]
    again = run_adaptation(  # the cached source data on S3 is loaded, not recomputed: the same numbers
        cfg(f"{s3_root}/cat", f"{s3_root}/ckpt/tiny.safetensors", f"{run}-again", cache_dir=str(tmp_path / "cache"),
            **RUN)
    )  # fmt: skip
    assert {key(r): r["accuracy"] for r in again} == {key(r): r["accuracy"] for r in local}
