"""The GPU check: CUDA parity, reduced precision and ``avtta adapt`` throughput, one JSON of figures.

Run by ``benchmarks/gpu_check.sh`` on a bare CUDA machine (torch, timm, torchvision, torchaudio, pyarrow, numpy;
the few other packages avtta imports on these paths are installed from ``benchmarks/wheels``). Three parts, each
recorded even when another fails:

1. **parity**: every registered method (``avtta.adapt.list_methods()``) takes two online steps on the goldens'
   narrow model and inputs (``../shared/golden``; without it, the same narrow architecture with random weights and
   smooth random inputs), fp32 on the CPU and fp32 on the GPU (TF32 off). Reported: the largest logit difference
   relative to the logit scale, per step, and of the trained parameters; against the official run too where the
   goldens hold that method and our CPU run reproduces it.
2. **precision**: a tiny model trained for a few seconds on demo-like clips (``demo_data.render_clip``, written
   as shards by ``synth_catalog.write_demo_set``), then every method adapts on the demo-like test set through
   ``AdaptationWorker`` at fp32, fp16 (autocast + GradScaler) and bf16; each accuracy must be within 0.5 points of
   fp32's.
3. **throughput**: ``AdaptationWorker`` at width 768 (``cav_mae_ft_base``, random weights), batch 64, for Source,
   Tent, READ and BriMPR, fed from shards by the index reader (DataLoader workers, pinned memory): samples/s end to
   end, the model alone (steps on a batch already on the GPU), the reader alone (batches moved to the GPU, no
   model), and the GPU's busy share (``nvidia-smi`` sampled every 50 ms) while the worker runs.

``--cpu-dry-run`` runs every step on the CPU at tiny sizes (fp16 is skipped: it needs CUDA) with an import guard
that refuses the packages a bare machine lacks, so the script is known to work up to the CUDA calls.
"""

from __future__ import annotations

import argparse
import copy
import importlib.abc
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# avtta's dependencies that a bare CUDA machine lacks and the wheels do not carry: the check's paths must not
# import them (the dry run refuses them, to prove it).
NOT_ON_BARE = ("av", "ray", "matplotlib", "scipy", "soundfile", "skimage", "cv2", "imagecorruptions", "threadpoolctl")
THROUGHPUT_METHODS = ("source", "tent", "read", "brimpr")
TOL_PARITY = 1e-4  # the goldens' metric: 1e-4 relative to the logit scale (fp32, another kernel: ~1e-5 expected)
# audio_assist adapts up to max_iterations cycles per sample: 2 exercise the loop at a quarter of the CPU time
PARITY_CONFIG = {"audio_assist": {"max_iterations": 2}}
TOL_POINTS = 0.5  # accuracy points between a reduced precision and fp32 (the bar)


class _Refuse(importlib.abc.MetaPathFinder):
    """Refuse the top-level packages a bare machine lacks (the dry run's stand-in for that machine)."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name.split(".")[0] in NOT_ON_BARE:
            raise ImportError(f"gpu_check: {name!r} is not on a bare CUDA machine (NOT_ON_BARE in {__file__})")
        return None


def log(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -----------------------------------------------------------------------------------------------------------------
# 1. parity


def _golden(golden: Path | None) -> dict[str, Any] | None:
    import numpy as np
    import torch

    if golden is None or not (golden / "official_outputs.npz").exists():
        return None
    inputs = np.load(golden / "inputs.npz")

    def pair(prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
        return tuple(torch.from_numpy(inputs[f"{prefix}_{m}"].astype(np.float32)) for m in ("audio", "video"))

    out = np.load(golden / "official_outputs.npz")
    return {
        "out": {k: out[k] for k in out.files},
        "batches": [pair("test1"), pair("test2")],
        "source": pair("source"),
        "weights": golden / "weights_released_layout.pth",
    }


def _smooth_batch(seed: int, n: int) -> tuple[Any, Any]:
    import torch

    gen = torch.Generator().manual_seed(seed)
    audio = torch.nn.functional.interpolate(torch.randn(n, 1, 16, 8, generator=gen), size=(1024, 128), mode="bilinear")
    video = torch.nn.functional.interpolate(torch.randn(n, 3, 14, 14, generator=gen), size=(224, 224), mode="bilinear")
    return audio[:, 0].contiguous(), video.contiguous()


def _two_steps(name: str, model: Any, data: dict, device: Any) -> tuple[list[Any], dict[str, Any]]:
    """Two online steps of ``name`` on ``device`` (generator reseeded 100 then 101, as the golden run)."""
    import torch

    from avtta import adapt

    model = copy.deepcopy(model).to(device)
    cls = adapt.get_method_class(name)
    source = [tuple(t.to(device) for t in data["source"])] if cls.source_data is not None else None
    method = adapt.create_method(name, model, source=source, **data["config"].get(name, {}))
    out = data.get("out") or {}
    if name == "brimpr" and "brimpr/initial_prompts_a" in out:
        with torch.no_grad():
            method.prompts_a.copy_(torch.from_numpy(out["brimpr/initial_prompts_a"]))
            method.prompts_v.copy_(torch.from_numpy(out["brimpr/initial_prompts_v"]))
    logits = []
    for seed, (audio, video) in zip((100, 101), data["batches"], strict=True):
        method.reseed(seed)
        logits.append(method.step(audio.to(device), video.to(device)).detach().float().cpu())
    params = {n: p.detach().float().cpu() for n, p in method.named_params}
    return logits, params


def _rel(a: Any, b: Any) -> float:
    import torch

    b = torch.as_tensor(b).float()
    return float((a.float() - b).abs().max() / b.abs().max().clamp_min(1e-12))


def check_parity(device: Any, golden: Path | None) -> dict[str, Any]:
    import torch
    from avtta.models import create_model

    from avtta import adapt

    # fp32 means fp32: no TF32 in matmuls or convolutions (the patch embeddings) on the GPU
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    gold = _golden(golden)
    if gold is not None:
        model = create_model("cav_mae_ft_base", num_classes=50, embed_dim=32, num_heads=2, checkpoint=gold["weights"])
        data = {**gold, "config": PARITY_CONFIG}
        inputs = "goldens (../shared/golden)"
    else:
        torch.manual_seed(0)  # the check's own model, not library code
        model = create_model("cav_mae_ft_base", num_classes=50, embed_dim=32, num_heads=2)
        with torch.no_grad():
            model.mlp_head[1].weight.mul_(30)  # confident predictions, as the golden model (entropy filters pass)
        data = {
            "batches": [_smooth_batch(1, 6), _smooth_batch(2, 6)],
            "source": _smooth_batch(7, 6),
            "config": PARITY_CONFIG,
        }
        inputs = "narrow model, random weights (no goldens on this machine)"
    model.eval()
    rows = {}
    for name in adapt.list_methods():
        try:
            cpu_logits, cpu_params = _two_steps(name, model, data, torch.device("cpu"))
            dev_logits, dev_params = _two_steps(name, model, data, device)
            row: dict[str, Any] = {
                "logits_rel": [_rel(d, c) for d, c in zip(dev_logits, cpu_logits, strict=True)],
                "params_rel": max((_rel(dev_params[k], cpu_params[k]) for k in cpu_params), default=0.0),
            }
            out = data.get("out") or {}
            if f"{name}/step1_logits" in out:
                ref = [out[f"{name}/step{s}_logits"] for s in (1, 2)]
                cpu_vs_ref = max(_rel(c, r) for c, r in zip(cpu_logits, ref, strict=True))
                row["cpu_vs_official"] = cpu_vs_ref
                if cpu_vs_ref < TOL_PARITY:  # our CPU run reproduces the official one here: hold the GPU to it too
                    row["gpu_vs_official"] = max(_rel(d, r) for d, r in zip(dev_logits, ref, strict=True))
            worst = max(row["logits_rel"] + [row["params_rel"], row.get("gpu_vs_official", 0.0)])
            row["ok"] = worst < TOL_PARITY
        except Exception as err:  # noqa: BLE001 - one method's failure is a row, the others still run
            row = {"ok": False, "error": f"{type(err).__name__}: {err}", "trace": traceback.format_exc(limit=4)}
        rows[name] = row
        log(f"parity {name}: {row}")
    return {"inputs": inputs, "tolerance_rel": TOL_PARITY, "methods": rows, "ok": all(r["ok"] for r in rows.values())}


# -----------------------------------------------------------------------------------------------------------------
# 2. precision


def _train_tiny(root: Path, device: Any, steps: int, seed: int = 0) -> Path:
    """A ``cav_mae_ft_tiny`` trained ``steps`` Adam steps on the demo-like train set; saved as our checkpoint."""
    import torch
    from avtta.manifests import open_dataset
    from avtta.models import create_model, save_checkpoint

    torch.manual_seed(seed)  # the check's own training run, not library code
    model = create_model("cav_mae_ft_tiny", num_classes=10).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    done, epoch = 0, 0
    while done < steps:
        for batch in open_dataset(root, "bench", "train", batch_size=32, seed=epoch, num_workers=0):
            audio, video = batch["audio"].to(device), batch["video"].to(device)
            loss = torch.nn.functional.cross_entropy(model(audio, video), batch["label"].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
            if done >= steps:
                break
        epoch += 1
    log(f"tiny model trained {steps} steps, last loss {float(loss.detach()):.3f}")
    return save_checkpoint(model.cpu().eval(), root / "tiny.safetensors")


def check_precision(device: Any, work: Path, clips: int, steps: int, dry: bool) -> dict[str, Any]:
    import synth_catalog
    from avtta.adapt.worker import AdaptationWorker, AdaptConfig, Condition, Job

    from avtta import adapt

    root = work / "demo"
    t0 = time.perf_counter()
    synth_catalog.write_demo_set(root, "train", clips, shard_size=64, workers=os.cpu_count())
    synth_catalog.write_demo_set(root, "test", clips, shard_size=64, workers=os.cpu_count())
    built = time.perf_counter() - t0
    ckpt = _train_tiny(root, device, steps)
    precisions = ["fp32", "bf16"] + ([] if device.type == "cpu" else ["fp16"])
    rows: dict[str, dict[str, Any]] = {}
    for precision in precisions:
        cfg = AdaptConfig(
            catalog=str(root),
            dataset="bench",
            checkpoint=str(ckpt),
            protocol="clean",
            batch_size=64,
            device=str(device),
            num_workers=0,
            precision=precision,
            progress=False,
            quiet=True,
            out=str(work / "precision-out"),
        )
        worker = AdaptationWorker(cfg)
        for name in adapt.list_methods():
            try:
                row = worker.run(Job(name, (Condition("clean", "clean", 0, ("clean",)),), 111)).rows[0]
                rows.setdefault(name, {})[precision] = round(row["accuracy"], 2)
            except Exception as err:  # noqa: BLE001 - recorded; the other methods still run
                rows.setdefault(name, {})[precision] = f"{type(err).__name__}: {err}"
        log(f"precision {precision}: {[(n, r.get(precision)) for n, r in rows.items()]}")
    ok = True
    for r in rows.values():
        for p in precisions[1:]:
            if isinstance(r.get(p), float) and isinstance(r.get("fp32"), float):
                r[f"{p}_minus_fp32"] = round(r[p] - r["fp32"], 2)
                ok &= abs(r[p] - r["fp32"]) <= TOL_POINTS
            else:
                ok = False
    return {
        "clips": {"train": clips, "test": clips},
        "train_steps": steps,
        "build_s": round(built, 1),
        "precisions": precisions,
        "skipped": [] if device.type == "cuda" else ["fp16 (needs CUDA)"],
        "tolerance_points": TOL_POINTS,
        "accuracy": rows,
        "ok": ok,
    }


# -----------------------------------------------------------------------------------------------------------------
# 3. throughput


class _GpuSampler:
    """``nvidia-smi`` utilisation.gpu sampled every 50 ms in a thread (None where nvidia-smi is missing)."""

    def __init__(self, interval_ms: int = 50):
        self.samples: list[float] = []
        self.proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None
        if shutil.which("nvidia-smi"):
            cmd = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", f"-lms={interval_ms}"]
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
            self._thread = threading.Thread(target=self._read, daemon=True)
            self._thread.start()

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.samples.append(float(line.strip().split(",")[0]))
            except ValueError:
                pass

    def stop(self) -> float | None:
        if self.proc is None:
            return None
        self.proc.terminate()
        self.proc.wait(timeout=5)
        return round(sum(self.samples) / len(self.samples), 1) if self.samples else None


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_throughput(device: Any, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    import synth_catalog
    import torch
    from avtta.adapt.worker import AdaptationWorker, AdaptConfig, Condition, Job
    from avtta.manifests import open_dataset

    real = work / "tp-real"
    root = work / "tp"
    synth_catalog.write_demo_set(real, "test", args.tp_clips, shard_size=64, workers=os.cpu_count())
    synth_catalog.alias_set(real, root, "test", args.tp_samples)
    synth_catalog.alias_set(real, root, "test", max(256, args.batch), dst_split="train")  # BriMPR's source stats
    arch = {} if args.width == 768 else {"embed_dim": args.width, "num_heads": max(1, args.width // 64)}
    ckpt = synth_catalog.tiny_checkpoint(work / f"{args.tp_model}-{args.width}.safetensors", 10, args.tp_model, **arch)
    result: dict[str, Any] = {
        "model": args.tp_model,
        "width": args.width,
        "batch": args.batch,
        "samples": args.tp_samples,
        "dataloader_workers": args.workers,
        "pin_memory": device.type == "cuda",
        "runs": {},
    }
    cond = Condition("clean", "clean", 0, ("clean",))
    for precision in args.tp_precisions.split(","):
        cfg = AdaptConfig(
            catalog=str(root),
            dataset="bench",
            checkpoint=str(ckpt),
            protocol="clean",
            batch_size=args.batch,
            device=str(device),
            num_workers=args.workers,
            precision=precision,
            progress=False,
            quiet=True,
            out=str(work / "tp-out"),
        )
        worker = AdaptationWorker(cfg)
        # the reader alone: batches to the device, no model
        loader = open_dataset(
            root,
            "bench",
            "test",
            batch_size=args.batch,
            num_workers=args.workers,
            seed=1,
            pin_memory=device.type == "cuda",
        )
        t0, n = time.perf_counter(), 0
        for batch in loader:
            batch["audio"].to(device, non_blocking=True), batch["video"].to(device, non_blocking=True)
            n += len(batch["key"])
        _sync(device)
        reader = n / (time.perf_counter() - t0)
        for name in THROUGHPUT_METHODS:
            key = f"{name}/{precision}"
            try:
                method = worker.method(name, args.tp_samples)
                audio, video = (t.to(device) for t in synth_catalog_batch(args.batch))
                method.reset(seed=0)
                for _ in range(args.warmup):
                    method.step(audio, video)
                _sync(device)
                t0 = time.perf_counter()
                for _ in range(args.model_steps):
                    method.step(audio, video)
                _sync(device)
                model_only = args.model_steps * args.batch / (time.perf_counter() - t0)
                sampler = _GpuSampler() if device.type == "cuda" else None
                row = worker.run(Job(name, (cond,), 111)).rows[0]
                busy = sampler.stop() if sampler else None
                e2e = row["samples_per_s"]
                result["runs"][key] = {
                    "samples_per_s": round(e2e, 1),
                    "model_only_samples_per_s": round(model_only, 1),
                    "reader_only_samples_per_s": round(reader, 1),
                    "gpu_busy_percent": busy,
                    "bottleneck": "reader" if reader < model_only else "model",
                    "seconds": round(row["seconds"], 2),
                }
                if device.type == "cuda":
                    result["runs"][key]["max_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
                    torch.cuda.reset_peak_memory_stats(device)
            except Exception as err:  # noqa: BLE001 - recorded; the other methods still run
                result["runs"][key] = {"error": f"{type(err).__name__}: {err}", "trace": traceback.format_exc(limit=4)}
            log(f"throughput {key}: {result['runs'][key]}")
        worker._methods.clear()  # free the models of this precision before the next
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return result


def synth_catalog_batch(n: int) -> tuple[Any, Any]:
    """A resident batch for the model-only timing (content does not matter for speed)."""
    return _smooth_batch(3, n)


# -----------------------------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cpu-dry-run", action="store_true", help="every step on the CPU at tiny sizes (no GPU needed)")
    ap.add_argument("--out", default=os.environ.get("OUT") or "gpu_check_out", help="folder of gpu_check.json")
    goldens = [REPO.parent / "shared" / "golden", REPO / "shared" / "golden"]  # beside the checkout, or inside it
    ap.add_argument(
        "--golden", default=str(next((g for g in goldens if g.is_dir()), goldens[0])), help="golden folder, if any"
    )
    ap.add_argument("--work", help="scratch folder (default: a temporary one)")
    ap.add_argument("--parts", default="parity,precision,throughput")
    ap.add_argument("--precision-clips", type=int, default=512, help="demo-like clips per split (train and test)")
    ap.add_argument("--train-steps", type=int, default=300)
    ap.add_argument("--tp-model", default="cav_mae_ft_base")
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=8, help="DataLoader workers feeding the GPU")
    ap.add_argument("--tp-clips", type=int, default=128, help="real clips behind the throughput set")
    ap.add_argument("--tp-samples", type=int, default=1280, help="samples per throughput run (aliases of the clips)")
    ap.add_argument("--tp-precisions", default="fp32,bf16")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--model-steps", type=int, default=5)
    args = ap.parse_args()
    if args.cpu_dry_run:
        sys.meta_path.insert(0, _Refuse())
        for name, value in (
            ("precision_clips", 24),
            ("train_steps", 10),
            ("tp_model", "cav_mae_ft_tiny"),
            ("width", 64),
            ("batch", 8),
            ("workers", 2),
            ("tp_clips", 8),
            ("tp_samples", 32),
            ("warmup", 1),
            ("model_steps", 1),
        ):
            if getattr(args, name) == ap.get_default(name):
                setattr(args, name, value)
    sys.path.insert(0, str(HERE))
    import torch

    if not args.cpu_dry_run and not torch.cuda.is_available():
        log("no CUDA device: run with --cpu-dry-run to test the script on a CPU")
        return 2
    device = torch.device("cpu" if args.cpu_dry_run else "cuda")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work or tempfile.mkdtemp(prefix="avtta-gpu-check-"))
    report: dict[str, Any] = {
        "mode": "cpu-dry-run" if args.cpu_dry_run else "cuda",
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu",
            "cpus": os.cpu_count(),
        },
        "args": vars(args),
        "anchor": "CAV-MAE base forward ~130 GFLOP/clip; H200 ~790 TFLOP/s bf16: ~6,000 clips/s forward, ~2,000 Tent",
    }
    started = time.perf_counter()
    golden = Path(args.golden) if Path(args.golden).is_dir() else None
    for part in args.parts.split(","):
        t0 = time.perf_counter()
        log(f"--- {part}")
        try:
            if part == "parity":
                report[part] = check_parity(device, golden)
            elif part == "precision":
                report[part] = check_precision(device, work, args.precision_clips, args.train_steps, args.cpu_dry_run)
            elif part == "throughput":
                report[part] = check_throughput(device, work, args)
            else:
                raise ValueError(f"--parts: unknown part {part!r}")
        except Exception as err:  # noqa: BLE001 - the JSON records a failed part; the next part still runs
            report[part] = {"ok": False, "error": f"{type(err).__name__}: {err}", "trace": traceback.format_exc()}
            log(report[part]["trace"])
        report[part]["seconds"] = round(time.perf_counter() - t0, 1)
        report["seconds"] = round(time.perf_counter() - started, 1)
        (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")  # after every part
    log(f"wrote {out / 'gpu_check.json'} in {report['seconds']} s")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    failed = [p for p in args.parts.split(",") if not report[p].get("ok", True) or "error" in report[p]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
