"""Per-core scaling of the shard job on Ray: one worker pinned to one core against two workers on two cores.

Input: ``--copies`` copies (distinct video ids) of the real 10-s 540x360 AudioSet clip of ../shared/fixtures, written
as the clean set and two corrupted sets (``video:gaussian_noise@5``, ``audio:gaussian_noise@3``). Each configuration
runs in a fresh process pinned with ``taskset`` to as many cores as it has workers (the driver shares them):

* ``in-process``: no Ray, one core: the job's own work per clip, the ceiling of one worker;
* ``local``: an embedded Ray with 1 worker on core 0, then 2 workers on cores 0-1;
* ``cluster``: a `ray start` cluster of 1 CPU nodes on 127.0.0.1, each node pinned to its core: the head alone,
  then head + one worker node (``--cluster``).

Two figures per run: *start-up included* (``ray.init`` to the job's summary, what a user waits for) and *start-up
excluded*, the steady rate from two job sizes in the same Ray session: ``(n_large - n_small) / (t_large - t_small)``,
which cancels what both jobs pay once (Ray, the actors' start, planning, manifests). The driver's CPU time is
reported too. Run inside a loopback-only network namespace (``make bench`` does it)::

    unshare -n sh -c 'ip link set lo up && .venv/bin/python benchmarks/bench_scaling.py'
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLIP = Path(os.environ.get("AVTTA_SHARED", ROOT.parent / "shared")) / "fixtures" / "audioset_clip" / "BkjpjAohg-0.mp4"
SPECS = ("none", "video:gaussian_noise@5", "audio:gaussian_noise@3")


def make_inputs(root: Path, clip: Path, copies: int) -> Path:
    """A folder of ``copies`` hard links (or copies) of ``clip`` under distinct names in one class folder."""
    folder = root / "videos" / "c"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(copies):
        p = folder / f"clip{i:04d}.mp4"
        if not p.exists():
            try:
                os.link(clip, p)
            except OSError:
                shutil.copyfile(clip, p)
    return folder.parent


def subset(videos: Path, n: int) -> Path:
    """The first ``n`` clips of ``videos`` as a folder of symlinks."""
    out = videos.parent / f"subset-{n}" / "c"
    if not out.exists():
        out.mkdir(parents=True)
        for p in sorted((videos / "c").glob("*.mp4"))[:n]:
            os.symlink(p, out / p.name)
    return out.parent


def child(args: argparse.Namespace) -> None:
    """One configuration, in this (pinned) process: print one JSON line of timings."""
    import torch
    from avtta.pipelines.shard_job import ShardJobConfig, run_shard_job

    torch.set_num_threads(1)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    session = None
    if args.workers:
        import ray

        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        session = {"address": args.address} if args.address else {"address": "local", "num_cpus": args.workers}
        ray.init(**session, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    timings["ray_init_s"] = time.perf_counter() - t0
    for name, n in (("small", args.small), ("large", args.large)):
        out = Path(args.out) / name
        shutil.rmtree(out, ignore_errors=True)
        cfg = ShardJobConfig(
            videos=str(subset(Path(args.videos), n)), out=str(out), dataset="bench", corrupt=SPECS, frames=10,
            shard_size=args.shard_size, workers=args.workers, progress=False,
        )  # fmt: skip
        t1 = time.perf_counter()
        summary = run_shard_job(cfg)
        timings[f"{name}_s"] = time.perf_counter() - t1
        assert summary.ok == n, summary.format()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    timings["driver_cpu_s"] = usage.ru_utime + usage.ru_stime
    timings["wall_s"] = time.perf_counter() - t0
    print(json.dumps(timings), flush=True)


def run_child(cores: str, workers: int, videos: Path, out: Path, args, address: str | None = None) -> dict:
    cmd = ["taskset", "-c", cores, sys.executable, __file__, "--child", "--workers", str(workers), "--videos",
           str(videos), "--out", str(out), "--small", str(args.small), "--large", str(args.copies),
           "--shard-size", str(args.shard_size)] + (["--address", address] if address else [])  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    if res.returncode:
        raise SystemExit(f"child {cores} x{workers} failed:\n{res.stderr[-3000:]}")
    t = json.loads(res.stdout.strip().splitlines()[-1])
    t["included"] = args.copies / (t["ray_init_s"] + t["large_s"])
    t["excluded"] = (args.copies - args.small) / (t["large_s"] - t["small_s"])
    t["load"] = os.getloadavg()[0]
    print(f"  cores {cores}, {workers} workers{' on ' + address if address else ''}: {json.dumps(t)}", flush=True)
    return t


class Cluster:
    """`ray start` nodes of 1 CPU on 127.0.0.1, node k pinned to core k; stopped by killing its own processes."""

    def __init__(self, port: int):
        self.port, self.tmp = port, tempfile.mkdtemp(prefix="avtta-bs-", dir="/tmp")
        self.env = {**os.environ, "RAY_AUTH_MODE": "disabled"}

    def add_node(self, core: int) -> None:
        head = core == 0
        where = [f"--port={self.port}", f"--temp-dir={self.tmp}", "--include-dashboard=false"] if head else []
        cmd = ["taskset", "-c", str(core), str(Path(sys.executable).with_name("ray")), "start", "--num-cpus=1",
               "--node-ip-address=127.0.0.1", "--disable-usage-stats",
               *(["--head", *where] if head else [f"--address=127.0.0.1:{self.port}"])]  # fmt: skip
        subprocess.run(cmd, env=self.env, capture_output=True, check=True)

    def stop(self) -> None:
        # the processes naming the cluster, and everything below them: the raylets' agents retitle themselves
        # ("ray::DashboardAgent") and would outlive a kill by name
        marks = (self.tmp, f"127.0.0.1:{self.port}")
        pids = {int(d) for d in os.listdir("/proc") if d.isdigit()}
        parent, top = {}, set()
        for pid in pids:
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                parent[pid] = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if any(m in cmd for m in marks):
                top.add(pid)
        tree, grown = set(top), True
        while grown:
            below = {p for p, pp in parent.items() if pp in tree} - tree
            tree |= below
            grown = bool(below)
        for pid in tree:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--copies", type=int, default=48, help="copies of the clip in the measured job")
    ap.add_argument("--small", type=int, default=16, help="clips of the smaller job (start-up excluded figure)")
    ap.add_argument("--shard-size", type=int, default=4, help="clips per shard (= per task)")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each configuration, interleaved (best kept)")
    ap.add_argument("--cluster", action="store_true", help="also the curve on a 1- and 2-node `ray start` cluster")
    ap.add_argument("--port", type=int, default=6479, help="head port of that cluster")
    ap.add_argument("--clip", default=str(CLIP), help="the clip copied (default: the AudioSet fixture)")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--workers", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--videos", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--large", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--address", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    if not Path(args.clip).exists():
        raise SystemExit(f"the clip {args.clip} is absent (../shared/fixtures; or give --clip)")
    if (os.cpu_count() or 1) < 2 or not shutil.which("taskset"):
        raise SystemExit("needs 2 cores and taskset")
    root = Path(tempfile.mkdtemp(prefix="avtta-scaling-"))
    videos = make_inputs(root, Path(args.clip), args.copies)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; load {os.getloadavg()}")
    print(f"{args.copies} copies of {Path(args.clip).name}, sets {', '.join(SPECS)}, shard size {args.shard_size}\n")
    configs = [("in-process, 1 core", "0", 0), ("local Ray, 1 worker, 1 core", "0", 1)]
    configs.append(("local Ray, 2 workers, 2 cores", "0,1", 2))
    runs: dict[str, list[dict]] = {}
    try:
        for _ in range(args.repeats):
            for label, cores, workers in configs:
                runs.setdefault(label, []).append(run_child(cores, workers, videos, root / "out", args))
            if args.cluster:
                for nodes in (1, 2):
                    cluster = Cluster(args.port)
                    try:
                        for core in range(nodes):
                            cluster.add_node(core)
                        cores = ",".join(map(str, range(nodes)))
                        t = run_child(cores, nodes, videos, root / "out", args, address=f"127.0.0.1:{args.port}")
                    finally:
                        cluster.stop()
                    runs.setdefault(f"`ray start` cluster, {nodes} node(s) x 1 CPU", []).append(t)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    # best of the repeats, per figure: the run least disturbed by the machine's other load
    best = {label: {k: max(r[k] for r in rs) for k in ("included", "excluded")} for label, rs in runs.items()}
    for label, rs in runs.items():
        best[label].update(ray_init_s=min(r["ray_init_s"] for r in rs), driver_cpu_s=min(r["driver_cpu_s"] for r in rs))
    print(f"{'configuration':44s} {'incl. start-up':>15s} {'excl.':>8s} {'Ray init':>9s} {'driver CPU':>11s}")
    for label, t in best.items():
        print(
            f"{label:44s} {t['included']:10.2f} c/s {t['excluded']:6.2f} c/s {t['ray_init_s']:7.1f} s "
            f"{t['driver_cpu_s']:9.1f} s"
        )
    for a, b in (("local Ray, 1 worker, 1 core", "local Ray, 2 workers, 2 cores"),
                 ("`ray start` cluster, 1 node(s) x 1 CPU", "`ray start` cluster, 2 node(s) x 1 CPU")):  # fmt: skip
        if a in best and b in best:
            inc, exc = (best[b][k] / best[a][k] for k in ("included", "excluded"))
            print(f"scaling 1 -> 2 cores, {b.split(',')[0]}: {inc:.2f}x start-up included, {exc:.2f}x excluded")
    print(f"load after: {os.getloadavg()}")
    if args.json:
        Path(args.json).write_text(json.dumps({"best": best, "runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
