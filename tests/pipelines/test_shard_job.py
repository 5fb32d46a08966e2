"""The raw-video shard job end to end: catalog, manifests, determinism, Ray (local and 2-node), resume, bad inputs."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from avtta.manifests import Catalog, open_dataset
from avtta.pipelines.shard_job import ShardJobConfig, run_shard_job
from avtta.pipelines.synth import truncate_file, write_random_bytes, write_test_video
from avtta.shards import decode_sample

SPECS = ("none", "video:gaussian_noise@5", "audio:gaussian_noise@3")


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under root (relative path -> digest), skipping nothing."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def run(small_videos, out, **kw):
    cfg = ShardJobConfig(
        videos=str(small_videos),
        out=str(out),
        dataset="toy",
        split="test",
        corrupt=SPECS,
        frames=4,
        shard_size=4,
        seed=7,
        progress=False,
        **kw,
    )
    return run_shard_job(cfg)


def test_job_in_process(small_videos, tmp_path):
    summary = run(small_videos, tmp_path / "out", workers=0)
    assert summary.clips == 6 and summary.ok == 6 and summary.failed == 0
    assert len(summary.sets) == 3 and summary.shards == 6  # 2 shards x 3 sets, from one decode per clip
    cat = Catalog(tmp_path / "out")
    assert {s.spec for s in cat.sets} == {"clean", "video:gaussian_noise@5", "audio:gaussian_noise@3"}
    clean = cat.get("toy", "test")
    vid = cat.get("toy", "test", "video", "gaussian_noise", 5)
    aud = cat.get("toy", "test", "audio", "gaussian_noise", 3)
    assert clean.samples == 6 and clean.num_classes == 2
    assert cat.classes("toy") == [("cat", "cat"), ("dog", "dog")]
    # the shards table matches the files
    for info in (clean, vid, aud):
        shards = pq.read_table(cat.root / info.path / "shards.parquet").to_pylist()
        for row in shards:
            data = (cat.root / info.path / row["file"]).read_bytes()
            assert len(data) == row["bytes"] and hashlib.sha256(data).hexdigest() == row["sha256"]
        samples = cat.samples(info).to_pylist()
        assert sorted(r["key"] for r in samples) == [f"vid{i:02d}" for i in range(6)]
        assert {r["label"] for r in samples} == {0, 1}

    def by_key(info):
        out = {}
        for p in cat.shard_paths(info):
            for raw in wds.WebDataset(str(p), shardshuffle=False, empty_check=False):
                s = decode_sample(raw)
                out[s.key] = s
        return out

    c, v, a = by_key(clean), by_key(vid), by_key(aud)
    for key in c:
        # video corruption: same audio, other frames; audio corruption: same frames, other fbank
        np.testing.assert_array_equal(v[key].fbank, c[key].fbank)
        assert v[key].frames != c[key].frames
        assert a[key].frames == c[key].frames
        assert not np.array_equal(a[key].fbank, c[key].fbank)
        assert c[key].fbank.shape == (1024, 128) and len(c[key].frames) == 4
        meta = v[key].metadata
        assert meta["corruption"] == "video:gaussian_noise@5" and meta["severity"] == 5 and meta["seed"] == 7
        assert meta["sample_rate"] == 16000 and abs(meta["duration"] - 1.5) < 0.2
        assert meta["label_names"] == [("dog" if int(key[-2:]) % 2 else "cat")]
    # reader: model-ready batches of exactly the batch size, then the rest
    batches = list(
        open_dataset(tmp_path / "out", "toy", "test", "video:gaussian_noise@5", batch_size=4, seed=1, num_workers=2)
    )
    assert [len(b["key"]) for b in batches] == [4, 2]
    assert batches[0]["audio"].shape == (4, 1024, 128) and batches[0]["video"].shape == (4, 3, 224, 224)
    again = list(
        open_dataset(tmp_path / "out", "toy", "test", "video:gaussian_noise@5", batch_size=4, seed=1, num_workers=2)
    )
    assert [b["key"] for b in again] == [b["key"] for b in batches]
    # both modalities corrupted: frames of the video set joined with the audio set's fbank
    both = list(
        open_dataset(
            tmp_path / "out",
            "toy",
            "test",
            ("video:gaussian_noise@5", "audio:gaussian_noise@3"),
            batch_size=6,
            shuffle=False,
            num_workers=0,
        )
    )
    single_a = list(
        open_dataset(
            tmp_path / "out", "toy", "test", "audio:gaussian_noise@3", batch_size=6, shuffle=False, num_workers=0
        )
    )
    single_v = list(
        open_dataset(
            tmp_path / "out", "toy", "test", "video:gaussian_noise@5", batch_size=6, shuffle=False, num_workers=0
        )
    )
    assert both[0]["key"] == single_a[0]["key"] == single_v[0]["key"]
    assert (both[0]["audio"] == single_a[0]["audio"]).all() and (both[0]["video"] == single_v[0]["video"]).all()


def test_rerun_is_a_noop_and_deterministic(small_videos, tmp_path):
    run(small_videos, tmp_path / "a", workers=0)
    first = tree_digest(tmp_path / "a")
    summary = run(small_videos, tmp_path / "a", workers=0)  # resume: nothing to do
    assert summary.resumed_chunks == 2
    assert tree_digest(tmp_path / "a") == first
    run(small_videos, tmp_path / "b", workers=0)
    assert tree_digest(tmp_path / "b") == first


def test_changed_job_in_same_folder_is_refused(small_videos, tmp_path):
    run(small_videos, tmp_path / "a", workers=0)
    with pytest.raises(ValueError, match="different job"):
        run_shard_job(
            ShardJobConfig(
                videos=str(small_videos),
                out=str(tmp_path / "a"),
                dataset="toy",
                split="test",
                corrupt=("none",),
                frames=4,
                shard_size=4,
                seed=8,
                workers=0,
                progress=False,
            )
        )


@pytest.mark.ray
def test_embedded_ray_gives_same_bytes(small_videos, tmp_path, ray_local):
    run(small_videos, tmp_path / "serial", workers=0)
    run(small_videos, tmp_path / "ray", workers=2)
    assert tree_digest(tmp_path / "ray") == tree_digest(tmp_path / "serial")


def _cli(*args, **kw):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "avtta", *args], env=env, capture_output=True, text=True, **kw)


@pytest.mark.slow
@pytest.mark.ray
def test_two_node_cluster_gives_same_bytes(small_videos, tmp_path, ray_cluster):
    args = [
        "shard",
        "--videos",
        str(small_videos),
        "--dataset",
        "toy",
        "--frames",
        "4",
        "--shard-size",
        "4",
        "--seed",
        "7",
        "--no-progress",
        "--corrupt",
        *SPECS,
    ]
    res = _cli(*args, "--out", str(tmp_path / "cluster"), "--ray-address", ray_cluster)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "2 workers on 2 CPUs" in res.stderr  # both nodes' CPUs were used
    res = _cli(*args, "--out", str(tmp_path / "serial"), "--workers", "0")
    assert res.returncode == 0, res.stderr[-3000:]
    assert tree_digest(tmp_path / "cluster") == tree_digest(tmp_path / "serial")


@pytest.mark.slow
def test_sigkill_midway_then_resume(tmp_path):
    videos = tmp_path / "videos"
    (videos / "a").mkdir(parents=True)
    for i in range(12):
        write_test_video(videos / "a" / f"v{i:02d}.mp4", seconds=1.0, fps=10, size=(64, 48), seed=i)
    out = tmp_path / "out"
    args = [
        "shard",
        "--videos",
        str(videos),
        "--dataset",
        "k",
        "--out",
        str(out),
        "--frames",
        "2",
        "--shard-size",
        "1",
        "--workers",
        "0",
        "--no-progress",
        "--corrupt",
        "none",
        "video:gaussian_noise@2",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "avtta", *args],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    parts = out / "k" / "test" / "clean" / "_parts"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(parts.glob("shard-*.json"))) < 3:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(list(parts.glob("shard-*.json")))
    assert 3 <= done_before < 12, "the job should have been killed midway"
    assert not (out / "k" / "test" / "clean" / "set.json").exists()
    res = _cli(*args)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "chunks resumed" in res.stdout
    cat = Catalog(out)
    for info in cat.sets:
        keys = []
        for p in cat.shard_paths(info):
            keys += [r["__key__"] for r in wds.WebDataset(str(p), shardshuffle=False, empty_check=False)]
        assert sorted(keys) == [f"v{i:02d}" for i in range(12)]  # every sample exactly once
        set_dir = cat.root / info.path
        assert not [p for p in set_dir.iterdir() if ".tmp" in p.name]  # no partial file left
        assert len(cat.samples(info)) == 12


def test_bad_inputs_become_failure_rows(tmp_path):
    videos = tmp_path / "videos" / "c"
    videos.mkdir(parents=True)
    write_test_video(videos / "good.mp4", seconds=1.0, fps=10, size=(64, 48))
    (videos / "empty.mp4").write_bytes(b"")
    write_random_bytes(videos / "noise.mp4", 5000, seed=1)
    write_test_video(tmp_path / "full.mp4", seconds=2.0, fps=10, size=(64, 48), seed=2)
    truncate_file(tmp_path / "full.mp4", videos / "trunc.mp4", 0.3)
    write_test_video(videos / "silent.mp4", seconds=1.0, fps=10, size=(64, 48), audio=False)
    summary = run_shard_job(
        ShardJobConfig(
            videos=str(videos.parent), out=str(tmp_path / "out"), dataset="bad", workers=0, frames=2, progress=False
        )
    )
    cat = Catalog(tmp_path / "out")
    info = cat.get("bad", "test")
    fails = {r["path"]: r["reason"] for r in cat.failures(info).to_pylist()}
    assert summary.ok == 1 and info.samples == 1 and summary.failed == 4
    assert set(fails) == {"c/empty.mp4", "c/noise.mp4", "c/trunc.mp4", "c/silent.mp4"}
    assert all(fails.values())
    assert "audio" in fails["c/silent.mp4"]
    # the fill policy keeps the silent clip, flagged
    run_shard_job(
        ShardJobConfig(
            videos=str(videos.parent),
            out=str(tmp_path / "fill"),
            dataset="bad",
            workers=0,
            frames=2,
            missing="fill",
            progress=False,
        )
    )
    rows = Catalog(tmp_path / "fill").samples(Catalog(tmp_path / "fill").get("bad", "test")).to_pylist()
    assert {r["key"]: r["missing"] for r in rows}["silent"] == "audio"


def test_cli_errors_name_the_value(tmp_path, small_videos):
    res = _cli("shard", "--videos", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--dataset", "d")
    assert res.returncode == 2 and "nope" in res.stderr
    res = _cli(
        "shard",
        "--videos",
        str(small_videos),
        "--out",
        str(tmp_path / "o"),
        "--dataset",
        "d",
        "--corrupt",
        "video:nosuch@5",
        "--workers",
        "0",
    )
    assert res.returncode == 2 and "nosuch" in res.stderr
    res = _cli("catalog", str(tmp_path / "missing"))
    assert res.returncode == 2 and "missing" in res.stderr


def test_csv_list_with_label_csv_multilabel_unknown_and_duplicate(tmp_path, small_videos):
    import shutil

    vids = sorted(small_videos.rglob("*.mp4"))
    (tmp_path / "v").mkdir()
    for p in vids[:4]:
        shutil.copy(p, tmp_path / "v" / p.name)
    (tmp_path / "labels.csv").write_text('index,mid,display_name\n0,/m/a,"Cat"\n1,/m/b,"Dog"\n2,/m/c,"Bird"\n')
    (tmp_path / "list.csv").write_text(
        "path,label,video_id\n"
        'v/vid00.mp4,"/m/b,/m/a",clip.one\n'  # multi-label; a dotted video id becomes a valid key
        "v/vid01.mp4,Bird,two\n"  # a display name works too
        "v/vid02.mp4,/m/zzz,three\n"  # unknown label
        "v/vid03.mp4,/m/a,two\n"  # duplicate id
    )
    summary = run_shard_job(
        ShardJobConfig(
            videos=str(tmp_path / "list.csv"),
            labels=str(tmp_path / "labels.csv"),
            out=str(tmp_path / "out"),
            dataset="l",
            workers=0,
            frames=2,
            progress=False,
        )
    )
    cat = Catalog(tmp_path / "out")
    info = cat.get("l", "test")
    rows = {r["key"]: r for r in cat.samples(info).to_pylist()}
    assert set(rows) == {"clip_one", "two"} and summary.failed == 2
    assert rows["clip_one"]["labels"] == [0, 1] and rows["clip_one"]["label"] == 0  # argmax of the multi-hot vector
    assert rows["two"]["label"] == 2
    reasons = sorted(r["reason"] for r in cat.failures(info).to_pylist())
    assert "unknown label '/m/zzz'" in reasons[1] and "duplicate video id 'two'" in reasons[0]
    assert cat.classes("l") == [("/m/a", "Cat"), ("/m/b", "Dog"), ("/m/c", "Bird")]
