"""Arguments shared by the commands that run on Ray."""

from __future__ import annotations

import argparse


def add_ray_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, help="parallel workers (default: all CPUs; 0: no Ray, in-process)")
    p.add_argument("--ray-address", help="run on an existing Ray cluster (default: RAY_ADDRESS or embedded Ray)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
