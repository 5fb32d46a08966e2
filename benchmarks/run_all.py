"""Run every benchmark once with its defaults (``make bench``); the official-code comparison of bench_methods.py needs
``--official REPO=DIR`` (one per official repository) and is run by hand (see benchmarks/README.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

for script in ("bench_pipeline.py", "bench_corruptions.py", "bench_methods.py"):
    print(f"\n===== {script}", flush=True)
    subprocess.run([sys.executable, str(HERE / script)], check=True)
