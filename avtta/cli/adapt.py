"""``avtta adapt``: run TTA methods online over shard sets selected from a catalog."""

from __future__ import annotations

import argparse
import json

from ._common import add_ray_retries, config_from_args, config_parser_kwargs


def _ints(text: str) -> tuple[int, ...]:
    out = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            a, b = part.split("-", 1)
            out += list(range(int(a), int(b) + 1))
        elif part:
            out.append(int(part))
    return tuple(out)


def _names(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "adapt",
        help="adapt a model online (every registered TTA method: avtta adapt --methods all) on corrupted shard sets",
        description="Stream the selected shard sets batch by batch and update each method online (one step per "
        "batch). Resets per corruption and seed (never with --continual). Writes results.parquet/csv, table.md, "
        "heatmap.png and config.json under --out.",
        **config_parser_kwargs("avtta.adapt.worker:AdaptConfig"),  # unset options keep AdaptConfig's defaults
    )
    p.add_argument("--catalog", required=True, help="output root of `avtta shard` / `avtta import`")
    p.add_argument("--dataset", required=True)
    p.add_argument(
        "--protocol",
        choices=("clean", "video", "audio", "both", "av"),
        help="video/audio: one modality corrupted (BriMPR run.py); both: video x audio pairs "
        "(run_both.py); av: AVRobustBench pairs; clean",
    )
    p.add_argument(
        "--corruptions",
        type=_names,
        help="comma-separated names or 'all'; for --protocol both: VIDEO+AUDIO pairs",
    )
    p.add_argument("--severity", type=_ints, help="severity or list/range, e.g. 5 or 1-5")
    p.add_argument("--methods", type=_names, help="all or e.g. source,tent,read")
    p.add_argument("--checkpoint", required=True, help="released CAV-MAE .pth or an avtta checkpoint")
    p.add_argument(
        "--model", help="model variant for a released .pth (default: the checkpoint's, else cav_mae_ft_base)"
    )
    p.add_argument("--split", help="test split")
    p.add_argument(
        "--source-split",
        dest="source_split",
        help="clean split for the methods' source data: EATA's Fisher, BriMPR's statistics",
    )
    p.add_argument("--seeds", type=_ints, help="run seeds, a list or range, e.g. 1,2,3 or 1-3")
    p.add_argument("--batch-size", type=int, dest="batch_size", help="clips per online step")
    p.add_argument("--device", help="auto (CUDA when present), cpu, cuda, cuda:1 ...")
    p.add_argument(
        "--precision",
        choices=("fp32", "fp16", "bf16"),
        help="fp16 = autocast + GradScaler as the references, CUDA only",
    )
    p.add_argument("--continual", action="store_true", help="never reset between corruptions")
    p.add_argument(
        "--method-config",
        type=json.loads,
        dest="method_config",
        help='per-method overrides as JSON, e.g. \'{"brimpr": {"tau": 0.25}, "tent": {"lr": 5e-5}}\'',
    )
    p.add_argument(
        "--frame",
        type=lambda t: t if t == "eval" else int(t),
        help="input frame: eval = frame_5 as READ/BriMPR, or an index, e.g. 4 as AVRobustBench",
    )
    p.add_argument("--workers", type=int, dest="num_workers", help="DataLoader workers")
    p.add_argument(
        "--access",
        choices=("index", "stream"),
        help="shard reading: index = random access by the member index, stream = sequential webdataset "
        "iterators (for storage where only sequential reads are cheap; another sample order)",
    )
    p.add_argument(
        "--on-the-fly",
        action="store_true",
        dest="on_the_fly",
        help="corrupt the clean set while reading instead of reading written corrupted sets: the conditions are the "
        "requested corruptions (registered names), the model inputs those of the sets avtta shard --corrupt writes "
        "(audio corruptions need the clean set written with --waveform)",
    )
    p.add_argument(
        "--ray-address", dest="ray_address", help="fan (method, corruption, seed) jobs out over a Ray cluster"
    )
    add_ray_retries(p)
    p.add_argument(
        "--valuation",
        action="store_true",
        help="per-sample modality valuation (phi_a, phi_v: Wei et al. CVPR'24) in samples.parquet, valuation.png",
    )
    p.add_argument(
        "--cache-dir", dest="cache_dir", help="a catalog on s3://: keep its shards in this folder for the next run"
    )
    p.add_argument("--out", help="run folder (or an s3:// URL)")
    p.add_argument("--no-progress", action="store_true", dest="no_progress", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from avtta.adapt.worker import AdaptConfig, run_adaptation

    cfg = config_from_args(AdaptConfig, args)
    run_adaptation(cfg)
    return 0
