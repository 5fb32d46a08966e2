"""The only Ray code of the pipelines: schedule chunk tasks on an embedded local Ray or an existing cluster.

* ``address=None`` and no ``RAY_ADDRESS``: ``ray.init()`` starts Ray inside this process, sized to ``workers``
  (default: every CPU of the machine), and shuts it down afterwards.
* ``address="host:port"`` (or ``RAY_ADDRESS``): connect to a running cluster (``ray start --head``); the same
  tasks are spread over its nodes. Output paths must be visible to every node (a shared filesystem).
* ``workers=0``: no Ray at all; chunks run one after another in this process (debugging, small jobs).

Each worker is an actor that processes whole chunks (one output shard per set), so expensive per-process state
(corruption assets such as noise recordings or frost pictures, torch thread settings) is built once per worker.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

from tqdm.auto import tqdm

log = logging.getLogger(__name__)


class _ChunkWorker:
    """Holds per-process state; ``run`` processes one chunk task."""

    def __init__(self, fn: Callable[[Any], Any]):
        import torch

        torch.set_num_threads(1)  # one core per worker: parallelism comes from the workers
        self.fn = fn

    def run(self, task: Any) -> Any:
        return self.fn(task)

    def run_indexed(self, index: int, task: Any) -> tuple[int, Any]:
        return index, self.fn(task)


def _local_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        return os.cpu_count() or 1


def run_tasks(
    tasks: Sequence[Any],
    *,
    workers: int | None = None,
    address: str | None = None,
    progress: bool = True,
    fn: Callable[[Any], Any] | None = None,
    unit_of: Callable[[Any], int] = lambda t: len(t.clips),
    desc: str = "clips",
) -> list[Any]:
    """Run ``fn`` (default: ``shard_job.process_chunk``) over ``tasks``; return the results in task order."""
    if fn is None:
        from .shard_job import process_chunk

        fn = process_chunk
    total = sum(unit_of(t) for t in tasks)
    bar = tqdm(total=total, unit=desc.split()[0], desc=desc, disable=not progress or not tasks, dynamic_ncols=True)
    results: dict[int, Any] = {}
    try:
        if not tasks:
            return []
        if workers == 0:
            worker = _ChunkWorker(fn)
            for i, task in enumerate(tasks):
                results[i] = worker.run(task)
                bar.update(unit_of(task))
            return [results[i] for i in range(len(tasks))]
        return _run_ray(tasks, fn, workers=workers, address=address, bar=bar, unit_of=unit_of)
    finally:
        bar.close()


def _run_ray(tasks, fn, *, workers, address, bar, unit_of) -> list[Any]:
    import ray
    from ray.util import ActorPool

    address = address or os.environ.get("RAY_ADDRESS") or None
    started_here = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True, "logging_level": logging.WARNING}
        if address:
            kwargs["address"] = address
        else:
            # "local" forces a new embedded instance (plain ray.init() would join any cluster found in /tmp/ray)
            kwargs["address"] = "local"
            kwargs["num_cpus"] = workers or _local_cpus()
        ray.init(**kwargs)
        started_here = True
    try:
        cluster_cpus = int(ray.cluster_resources().get("CPU", 1))
        n = max(1, min(workers or cluster_cpus, cluster_cpus, len(tasks)))
        log.info("Ray: %d workers on %d CPUs (%s)", n, cluster_cpus, address or "embedded local Ray")
        actor_cls = ray.remote(num_cpus=1)(_ChunkWorker)
        actors = [actor_cls.remote(fn) for _ in range(n)]
        pool = ActorPool(actors)
        results: dict[int, Any] = {}
        for i, res in pool.map_unordered(lambda actor, item: actor.run_indexed.remote(*item), enumerate(tasks)):
            results[i] = res
            bar.update(unit_of(tasks[i]))
        for a in actors:
            ray.kill(a)
        return [results[i] for i in range(len(tasks))]
    finally:
        if started_here:
            ray.shutdown()
