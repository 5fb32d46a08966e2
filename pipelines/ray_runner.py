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

A lost worker is not a lost job. When a worker's process dies (killed, out of memory, a crash in native code) or
its node goes away, the task it was running is run again on another worker, and Ray restarts the dead actor
(``max_restarts``), on its node or wherever the cluster has room, which then takes tasks again. A task is given up
only when its workers were lost more than ``retries`` times: :class:`TaskLostError` then names the task and the
cause. Ray's own task retries stay off (``max_task_retries=0``): the retry is ours, so that it can go to any worker
and be counted, and each task's result is taken once. This needs idempotent tasks, which every job here has: a
shard chunk rewrites its shards and part files atomically (a rerun writes the same bytes), and an adaptation job
resets its method to the source weights before it starts. An exception raised by a task itself is no loss: it
propagates at once, never retried (it would fail again).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from avtta.shards.io import cpu_count
from tqdm.auto import tqdm

__all__ = ["FunctionWorker", "TaskLostError", "run_tasks"]

log = logging.getLogger(__name__)

# Environment of an embedded local Ray, set before Ray is imported (its constants are read at import) and only
# where the user set nothing:
# * RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 turns off Ray's "cluster" address discovery (ray_constants.ENABLE_RAY_CLUSTER,
#   which only decides how the node IP is found): the node IP is then 127.0.0.1, as Ray does for its local-only
#   instances, and Ray never probes 8.8.8.8:53 ("Failed to determine local IP via external connectivity ...").
# * RAY_AUTH_MODE: an explicit mode silences "Token authentication is enabled for this Ray cluster ...". The
#   instance serves this process only, on loopback, for one job: "disabled", as in the test suite.
_LOCAL_RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}

# A restarting actor answers a call with ActorUnavailableError ("the actor is restarting"): ask again this often
# (its restart, a new process importing torch and building the worker, takes seconds).
_REASK_S = 0.25


class FunctionWorker:
    """A worker whose ``run(task)`` calls a plain function: ``make_worker=functools.partial(FunctionWorker, fn)``."""

    def __init__(self, fn: Callable[[Any], Any]):
        self.fn = fn

    def run(self, task: Any) -> Any:
        return self.fn(task)


class TaskLostError(RuntimeError):
    """A task whose Ray workers died more often than the retry bound allows, or no worker left to run it."""


class _Actor:
    """The Ray actor around one worker object; the torch thread count follows the CPUs the actor holds."""

    def __init__(self, make_worker: Callable[[], Any], call: str, threads: int):
        import torch

        torch.set_num_threads(threads)  # one core per worker: parallelism comes from the workers
        self.call = call
        self.error: Exception | None = None
        try:
            self.worker = make_worker()
        except Exception as err:  # noqa: BLE001 - re-raised by every call: a task's own error, never retried
            self.worker, self.error = None, err

    def ready(self) -> int:
        """Answers once the (restarted) actor is up; raises the worker's construction error, if any."""
        if self.error is not None:
            raise self.error
        return os.getpid()

    def run_task(self, task: Any) -> Any:
        if self.error is not None:
            raise self.error
        return getattr(self.worker, self.call)(task)


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
    retries: int = 3,
    describe: Callable[[Any], str] | None = None,
    rejoin_timeout: float = 600.0,
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
        retries: how many times one task may be run again after its worker was lost (process or node died); Ray's
            own default for task retries. 0: the first loss fails the job.
        describe: names a task in messages (e.g. ``"chunk 7 (clips/a.mp4 ...)"``; default: its position).
        rejoin_timeout: seconds to wait for a restarted worker when no other worker is left (a lost node's actors
            wait for room on the cluster, e.g. a replacement node) before giving up.
    """
    if workers is not None and workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
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
        retry = _Retry(retries, describe, rejoin_timeout)
        return _run_ray(tasks, make_worker, call, workers, address, bar, unit_of, actor_options, verbose, retry)


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


@dataclass(frozen=True)
class _Retry:
    """The retry policy of one run (see :func:`run_tasks`)."""

    retries: int
    describe: Callable[[Any], str] | None
    rejoin_timeout: float

    def name(self, tasks: Sequence[Any], i: int) -> str:
        return self.describe(tasks[i]) if self.describe else f"task {i + 1} of {len(tasks)}"


def _run_ray(tasks, make_worker, call, workers, address, bar, unit_of, actor_options, verbose, retry) -> list[Any]:
    address = address or os.environ.get("RAY_ADDRESS") or None
    with _ray_session(address, workers or cpu_count(), verbose) as where:
        import ray  # after _ray_session: the embedded instance's environment must be set before Ray is imported

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
        slots = min(workers or cap, cap)
        if len(tasks) < slots:  # a task runs on one worker: e.g. a shard job of fewer shards than CPUs
            log.info("%d tasks for %d Ray workers: %d of them stay idle", len(tasks), slots, slots - len(tasks))
        # Ray restarts a dead actor (bounded: a worker that keeps dying is given up); the task is retried by us
        actor_cls = ray.remote(max_restarts=retry.retries, max_task_retries=0, **options)(_Actor)
        actors = [actor_cls.remote(make_worker, call, per_actor) for _ in range(n)]
        try:
            return _schedule(ray, actors, tasks, bar, unit_of, retry)
        finally:
            for a in actors:
                ray.kill(a)


def _schedule(ray: Any, actors: list, tasks: list, bar: tqdm, unit_of: Callable[[Any], int], retry: _Retry) -> list:
    """Hand the tasks to idle actors; a task lost with its actor goes back to the front of the queue."""
    from ray.exceptions import ActorUnavailableError, ObjectLostError, RayActorError

    queue = deque(range(len(tasks)))
    lost = [0] * len(tasks)
    results: dict[int, Any] = {}
    idle = list(reversed(actors))
    running: dict[Any, tuple[Any, int]] = {}  # task ref -> (actor, task index)
    waking: dict[Any, Any] = {}  # ref of actor.ready() -> an actor Ray is restarting
    later: list[tuple[float, Any]] = []  # (when, actor): ask again whether it is back
    cause = "none"
    since = time.monotonic()  # of the last sign of life, while nothing runs
    while len(results) < len(tasks):
        while idle and queue:
            actor, i = idle.pop(), queue.popleft()
            running[actor.run_task.remote(tasks[i])] = (actor, i)
        now = time.monotonic()
        for when, actor in [x for x in later if x[0] <= now]:
            later.remove((when, actor))
            waking[actor.ready.remote()] = actor
        if not running and not waking and not later:
            raise TaskLostError(
                f"{retry.name(tasks, queue[0])}: no Ray worker left to run it (all {len(actors)} were lost for "
                f"good; last cause: {cause})"
            )
        if running:
            since = now
        elif now - since > retry.rejoin_timeout:  # a lost node's actors may wait for room on the cluster forever
            raise TaskLostError(
                f"{retry.name(tasks, queue[0])}: no Ray worker came back within {retry.rejoin_timeout:g} s "
                f"(last cause: {cause})"
            )
        # wake for the next re-ask, and, while nothing runs, for the rejoin deadline (a queued ready() of an actor
        # waiting for room would never answer)
        wakes = [w - now for w, _ in later] + ([] if running else [since + retry.rejoin_timeout - now])
        timeout = max(0.0, min(wakes)) if wakes else None
        if not running and not waking:
            time.sleep(timeout)  # only re-asks, due later
            continue
        done, _ = ray.wait([*running, *waking], num_returns=1, timeout=timeout)
        if not done:
            continue
        ref = done[0]
        if ref in waking:
            actor = waking.pop(ref)
            try:
                ray.get(ref)
                idle.append(actor)
            except ActorUnavailableError:  # still restarting: ask again in a moment
                later.append((time.monotonic() + _REASK_S, actor))
            except (RayActorError, ObjectLostError) as err:  # its restarts are used up: it is gone
                cause = _cause(err)
            continue
        actor, i = running.pop(ref)
        try:
            value = ray.get(ref)  # a task's own exception propagates here, as it is
        except (RayActorError, ObjectLostError) as err:  # the worker process or its node died (or its result did)
            cause = _cause(err)
            lost[i] += 1
            if lost[i] > retry.retries:
                raise TaskLostError(
                    f"{retry.name(tasks, i)}: its Ray worker was lost {lost[i]} times, more than the {retry.retries} "
                    f"retries allowed; last cause: {cause}"
                ) from None
            log.warning(
                "%s: Ray worker lost (%s); running it again (retry %d of %d)",
                retry.name(tasks, i),
                cause,
                lost[i],
                retry.retries,
            )
            queue.appendleft(i)
            waking[actor.ready.remote()] = actor  # answers when Ray has restarted it
            continue
        idle.append(actor)
        results[i] = value
        bar.update(unit_of(tasks[i]))
    return [results[i] for i in range(len(tasks))]


def _cause(err: Exception) -> str:
    """The first line of a Ray error: what happened, without the actor ids and advice that follow."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0] if lines else ''}"
