"""The one Ray layer: run tasks on a pool of worker objects, results in task order, one progress bar.

:func:`run_tasks` knows nothing of shards or methods: a job hands it picklable tasks and ``make_worker``, a picklable
callable that builds the object holding a process's expensive state (corruption assets, a model); every task runs
as ``getattr(worker, call)(task)``.

* ``workers=0``: no Ray at all; one worker in this process runs the tasks one after another (debugging, small jobs).
* ``address=None`` and no ``RAY_ADDRESS``: an embedded local Ray started here (``address="local"``), sized to
  ``workers`` (default: every CPU this process may use), bound to 127.0.0.1, and shut down afterwards. It is ours to
  configure, so it is quiet: no dashboard, no worker output, no log lines between the progress bars; ``verbose``
  (``avtta -v``) lets Ray's own output through.
* ``address="host:port"`` (or ``RAY_ADDRESS``): connect to a running cluster (``ray start --head``); the tasks are
  spread over its nodes. Output paths must be visible to every node (a shared filesystem).

Each worker is an actor with ``num_cpus=1`` (or ``actor_options``, e.g. ``{"num_gpus": 1}``) whose torch runs one
thread per CPU it holds: parallelism comes from the workers, and reductions give the same bits in every process.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from avtta.shards.io import cpu_count
from tqdm.auto import tqdm

__all__ = ["FunctionWorker", "run_tasks"]

log = logging.getLogger(__name__)

# Environment of an embedded local Ray, set before Ray is imported (its constants are read at import) and only
# where the user set nothing:
# * RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 turns off Ray's "cluster" address discovery (ray_constants.ENABLE_RAY_CLUSTER,
#   which only decides how the node IP is found): the node IP is then 127.0.0.1, as Ray does for its local-only
#   instances, and Ray never probes 8.8.8.8:53 ("Failed to determine local IP via external connectivity ...").
# * RAY_AUTH_MODE: an explicit mode silences "Token authentication is enabled for this Ray cluster ...". The
#   instance serves this process only, on loopback, for one job: "disabled", as in the test suite.
_LOCAL_RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}


class FunctionWorker:
    """A worker whose ``run(task)`` calls a plain function: ``make_worker=functools.partial(FunctionWorker, fn)``."""

    def __init__(self, fn: Callable[[Any], Any]):
        self.fn = fn

    def run(self, task: Any) -> Any:
        return self.fn(task)


class _Actor:
    """The Ray actor around one worker object; the torch thread count follows the CPUs the actor holds."""

    def __init__(self, make_worker: Callable[[], Any], call: str, threads: int):
        import torch

        torch.set_num_threads(threads)  # one core per worker: parallelism comes from the workers
        self.worker = make_worker()
        self.call = call

    def run_indexed(self, index: int, task: Any) -> tuple[int, Any]:
        return index, getattr(self.worker, self.call)(task)


def run_tasks(
    tasks: Sequence[Any],
    *,
    make_worker: Callable[[], Any],
    call: str = "run",
    workers: int | None = None,
    address: str | None = None,
    progress: bool = True,
    desc: str = "",
    unit_of: Callable[[Any], int] = lambda t: 1,
    actor_options: dict[str, Any] | Callable[[dict[str, float]], dict[str, Any]] | None = None,
    verbose: bool = False,
) -> list[Any]:
    """Run ``getattr(make_worker(), call)(task)`` for every task; return the results in task order.

    Args:
        tasks: picklable task objects.
        make_worker: picklable callable building one worker object per process (e.g. ``partial(Cls, cfg)``).
        call: the worker method that takes one task.
        workers: number of worker processes (None: every CPU of the embedded Ray or of the cluster; 0: in-process).
        address: a Ray cluster to join (default: ``RAY_ADDRESS``, else an embedded local Ray).
        progress: show one tqdm bar advanced by ``unit_of(task)`` per finished task.
        desc: the bar's label; its first word is the unit.
        unit_of: how much progress a task is worth (e.g. its number of clips).
        actor_options: Ray actor resources (default ``{"num_cpus": 1}``; e.g. ``{"num_gpus": 1}``), or a function of
            the cluster's resources (``ray.cluster_resources()``) returning them (e.g. a GPU each when there are GPUs).
        verbose: let the embedded Ray's own output (logs, worker prints) through.
    """
    if workers is not None and workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    tasks = list(tasks)
    unit = desc.split()[0] if desc else "it"
    with tqdm(
        total=sum(unit_of(t) for t in tasks),
        unit=unit,
        desc=desc or None,
        disable=not progress or not tasks,
        dynamic_ncols=True,
    ) as bar:
        if not tasks:
            return []
        if workers == 0:
            worker = make_worker()
            results = []
            for task in tasks:
                results.append(getattr(worker, call)(task))
                bar.update(unit_of(task))
            return results
        return _run_ray(tasks, make_worker, call, workers, address, bar, unit_of, actor_options, verbose)


@contextlib.contextmanager
def _env(values: dict[str, str]) -> Iterator[None]:
    """Set the environment variables the user has not set, restoring them afterwards."""
    added = {k: v for k, v in values.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


@contextlib.contextmanager
def _ray_session(address: str | None, num_cpus: int, verbose: bool) -> Iterator[str]:
    """Join the given cluster, or start (and afterwards stop) a quiet embedded local Ray; yields its description."""
    with contextlib.ExitStack() as stack:
        if not address:
            stack.enter_context(_env(_LOCAL_RAY_ENV))
        import ray

        if ray.is_initialized():  # the caller's own Ray session (tests, notebooks): use it as it is
            yield "the running Ray session"
            return
        quiet: dict[str, Any] = {"include_dashboard": False, "log_to_driver": verbose}
        if not verbose:
            quiet["logging_level"] = logging.ERROR
        # "local" forces a new embedded instance (plain ray.init() would join any cluster found in /tmp/ray)
        ray.init(address=address or "local", **({} if address else {"num_cpus": num_cpus}), **quiet)
        stack.callback(ray.shutdown)
        yield address or "embedded local Ray"


def _run_ray(tasks, make_worker, call, workers, address, bar, unit_of, actor_options, verbose) -> list[Any]:
    address = address or os.environ.get("RAY_ADDRESS") or None
    with _ray_session(address, workers or cpu_count(), verbose) as where:
        import ray  # after _ray_session: the embedded instance's environment must be set before Ray is imported
        from ray.util import ActorPool

        if callable(actor_options):
            actor_options = actor_options(dict(ray.cluster_resources()))
        options = {"num_cpus": 1, **(actor_options or {})}
        cluster_cpus = int(ray.cluster_resources().get("CPU", 1))
        per_actor = max(1, int(options["num_cpus"] or 1))
        cap = max(1, cluster_cpus // per_actor)
        if options.get("num_gpus"):
            cap = min(cap, max(1, int(ray.cluster_resources().get("GPU", 0) // options["num_gpus"])))
        n = max(1, min(workers or cap, cap, len(tasks)))
        # on a cluster the user wants to see what it got; an embedded Ray says it only with -v (it would sit between
        # the progress bars)
        log.log(logging.INFO if address else logging.DEBUG, "Ray: %d workers on %d CPUs (%s)", n, cluster_cpus, where)
        actor_cls = ray.remote(**options)(_Actor)
        actors = [actor_cls.remote(make_worker, call, per_actor) for _ in range(n)]
        try:
            pool = ActorPool(actors)
            results: dict[int, Any] = {}
            for i, res in pool.map_unordered(lambda actor, item: actor.run_indexed.remote(*item), enumerate(tasks)):
                results[i] = res
                bar.update(unit_of(tasks[i]))
            return [results[i] for i in range(len(tasks))]
        finally:
            for a in actors:
                ray.kill(a)
