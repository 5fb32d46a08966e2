"""Shard and import jobs writing to a real S3 server (SeaweedFS on loopback): same bytes as a local folder, the
commit protocol under concurrency and faults, credentials kept out of every output, clear errors."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from avtta.manifests import SET_FILE, ShardSetInfo, write_catalog, write_json
from avtta.manifests.tables import CATALOG_FILE
from avtta.pipelines.shard_job import ShardJobConfig, run_shard_job
from avtta.shards import storage

SPECS = ("none", "audio:gaussian_noise@3")


def local_digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): _sha(p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file()}


def bucket_digests(url: str) -> dict[str, str]:
    return {u[len(url) + 1 :]: _sha(storage.read_bytes(u)) for u in storage.find(url)}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def upload_tree(root: Path, url: str) -> None:
    for p in sorted(root.rglob("*")):
        if p.is_file():
            storage.upload(p, storage.join(url, str(p.relative_to(root))))


def job(videos, out, **kw) -> ShardJobConfig:
    opts = dict(dataset="toy", split="test", corrupt=SPECS, frames=4, shard_size=4, seed=7, progress=False)
    return ShardJobConfig(videos=str(videos), out=str(out), **{**opts, **kw})


@pytest.fixture(scope="module")
def local_run(small_videos, tmp_path_factory) -> dict[str, str]:
    """Digests of every file of the reference job, run into a local folder."""
    out = tmp_path_factory.mktemp("local") / "out"
    run_shard_job(job(small_videos, out, workers=0))
    return local_digests(out)


def test_shard_from_and_to_s3_equals_local(small_videos, s3_bucket, local_run):
    videos = storage.join(s3_bucket, "videos")
    upload_tree(small_videos, videos)
    out = storage.join(s3_bucket, "run")
    summary = run_shard_job(job(videos, out, workers=0))
    assert summary.ok == 6 and summary.failed == 0
    assert bucket_digests(out) == local_run  # every object, byte for byte: shards, parts, manifests, catalog
    assert not Path("s3:").exists()  # the old bug: a local folder named after the scheme
