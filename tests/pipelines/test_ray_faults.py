"""A lost Ray worker is not a lost job: the task is run again elsewhere, bounded, with a clear message past the bound.

The fast tests kill worker processes of the embedded Ray from inside a task (SIGKILL of its own process: a real
worker death, seen by Ray as a crashed worker). The slow ones kill workers and a whole node of the 2-node
`ray start` cluster from outside, in the middle of the shard job, the importer and `avtta adapt`, and compare the
outputs with an undisturbed run.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import signal
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from avtta.pipelines.ray_runner import FunctionWorker, TaskLostError, run_tasks
from avtta.pipelines.shard_job import ShardJobConfig, run_shard_job
from avtta.pipelines.synth import write_test_video


def _doubled_unless_fated(folder: str, fated: int, deaths: int, task: int) -> int:
    """2 * task; the task ``fated`` first kills its own worker process, ``deaths`` times in all (files count them)."""
    if task == fated:
        dead = len(list(Path(folder).glob("death-*")))
        if dead < deaths:
            Path(folder, f"death-{dead}").write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
    Path(folder, f"ran-{task}-{os.getpid()}").touch()
    if task == -1:
        raise ValueError("task -1 is bad input")
    return 2 * task


def _run(tmp_path: Path, tasks: list[int], deaths: int, **kw):
    worker = functools.partial(FunctionWorker, functools.partial(_doubled_unless_fated, str(tmp_path), 3, deaths))
    return run_tasks(tasks, make_worker=worker, workers=2, progress=False, **kw)


@pytest.mark.slow
@pytest.mark.ray
def test_lost_worker_task_runs_again_and_counts_once(ray_local, tmp_path):
    counted = Counter()

    def unit_of(task: int) -> int:
        counted[task] += 1
        return 1

    out = _run(tmp_path, list(range(8)), deaths=2, retries=2, unit_of=unit_of)
    assert out == [2 * t for t in range(8)]  # in task order, despite task 3 killing two workers
    assert len(list(tmp_path.glob("death-*"))) == 2
    assert len(list(tmp_path.glob("ran-3-*"))) == 1  # the lost attempts died before finishing; one finished
    assert counted == Counter({t: 2 for t in range(8)})  # the bar's total, then one update per task: never twice


@pytest.mark.slow
@pytest.mark.ray
def test_lost_worker_beyond_the_bound_names_task_and_cause(ray_local, tmp_path):
    with pytest.raises(TaskLostError) as err:
        _run(tmp_path, list(range(6)), deaths=99, retries=1)
    text = str(err.value)
    assert text.startswith("task 4 of 6: its Ray worker was lost 2 times, more than the 1 retries allowed")
    assert "last cause: Actor" in text and "\n" not in text  # Ray's error class and its first line, one line
    assert len(list(tmp_path.glob("death-*"))) == 2
    (tmp_path / "b").mkdir()
    with pytest.raises(TaskLostError, match=r"^item 3: its Ray worker was lost 1 times, more than the 0 retries"):
        _run(tmp_path / "b", [3], deaths=99, retries=0, describe=lambda t: f"item {t}")
    with pytest.raises(ValueError, match="retries must be >= 0"):
        _run(tmp_path, [1], deaths=0, retries=-1)


@pytest.mark.ray
def test_task_errors_are_not_retried(ray_local, tmp_path):
    with pytest.raises(ValueError, match="task -1 is bad input"):
        _run(tmp_path, [0, -1], deaths=0, retries=3)
    assert len(list(tmp_path.glob("ran--1-*"))) == 1  # raised once, not run again


# ---------------------------------------------------------------------------------------------------------------
# the 2-node cluster, killed from outside


def _tree(root: Path) -> dict[str, str]:
    """sha256 of every file under root (relative path -> digest)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


@pytest.fixture(scope="module")
def twelve_videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("twelve")
    for i in range(12):
        (root / "ab"[i % 2]).mkdir(exist_ok=True)
        write_test_video(root / "ab"[i % 2] / f"v{i:02d}.mp4", seconds=1.0, fps=10, size=(64, 48), seed=i)
    return root


SHARD_ARGS = ("--dataset", "k", "--frames", "2", "--shard-size", "1", "--seed", "3", "--no-progress")
SPECS = ("none", "video:gaussian_noise@2")


@pytest.mark.slow
@pytest.mark.ray
def test_shard_job_lost_worker_past_the_bound_then_lost_node(twelve_videos, tmp_path, ray_nodes):
    run_shard_job(
        ShardJobConfig(
            videos=str(twelve_videos), out=str(tmp_path / "calm"), dataset="k", corrupt=SPECS, frames=2,
            shard_size=1, seed=3, workers=0, progress=False,
        )
    )  # fmt: skip
    out = tmp_path / "out"
    parts = out / "k" / "test" / "clean" / "_parts"
    args = ["shard", "--videos", str(twelve_videos), "--out", str(out), *SHARD_ARGS, "--ray-address", ray_nodes.address]
    started = lambda: any(parts.glob("shard-*.json"))  # noqa: E731 - a chunk is done (12 chunks of 1 clip, 2 workers)
    # a worker killed, no retries allowed: one line naming the chunk and the cause, exit 1, no traceback
    res = ray_nodes.run_killing([*args, "--ray-retries", "0", "--corrupt", *SPECS], "worker", ready=started)
    assert res.returncode == 1, res.stderr[-3000:]
    assert re.search(
        r"avtta shard: error: chunk \d+ \(1 clips from [ab]/v\d\d\.mp4\): its Ray worker was lost 1 times, "
        r"more than the 0 retries allowed; last cause: Actor\w+Error: ",
        res.stderr,
    ), res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    done = len(list(parts.glob("shard-*.json")))
    assert 1 <= done < 12
    # the rerun resumes, and loses the whole worker node midway (default retries): it still gives the same bytes
    res = ray_nodes.run_killing(
        [*args, "--corrupt", *SPECS], "node", ready=lambda: len(list(parts.glob("shard-*.json"))) > done
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Ray worker lost" in res.stderr and "running it again (retry 1 of 3)" in res.stderr
    assert _tree(out) == _tree(tmp_path / "calm")  # shards, manifests, catalog: the bytes of the undisturbed run
    keys = pq.read_table(out / "k" / "test" / "clean" / "samples.parquet").column("key").to_pylist()
    assert len(keys) == len(set(keys)) == 12  # every sample exactly once
