"""``avtta train``: fine-tune a CAV-MAE classifier on the clean shards of a catalog."""

from __future__ import annotations

import argparse
import json

# CLI option -> TrainConfig field; options left unset keep the library defaults (argparse.SUPPRESS).
_FIELDS = (
    "catalog", "dataset", "model", "out", "epochs", "lr", "head_lr_factor", "weight_decay", "warmup_fraction",
    "batch_size", "mode", "label_smoothing", "freqm", "timem", "train_split", "val_split", "init", "num_classes",
    "model_overrides", "seed", "num_workers", "access", "device", "resample", "resample_warmup",
    "resample_part_ratio", "resample_alpha", "structure_loss", "structure_anchors", "structure_queue",
    "structure_epsilon", "structure_iterations",
)  # fmt: skip


def _split_or_none(text: str) -> str | None:
    return None if text.lower() == "none" else text


def register(sub: argparse._SubParsersAction) -> None:
    s = argparse.SUPPRESS
    p = sub.add_parser(
        "train",
        help="fine-tune a CAV-MAE classifier (e.g. cav_mae_ft_tiny on the demo data) on clean shards",
        description="Supervised fine-tuning (CAV-MAE recipe: SpecAugment, random frame, head lr x10, label "
        "smoothing; AdamW with warm-up + cosine). Validates every epoch (multimodal, audio-only, video-only) and "
        "writes model.safetensors + model.json, train_config.json, history.json and a resumable state to --out.",
        argument_default=s,
    )
    p.add_argument("--catalog", required=True, help="output root of `avtta shard` / `avtta import`")
    p.add_argument("--dataset", required=True, help="data set name in the catalog")
    p.add_argument("--model", help="registered model (default cav_mae_ft_tiny)")
    p.add_argument("--out", help="run folder or s3:// URL (default runs/train)")
    p.add_argument("--cache-dir", dest="cache_dir", help="a catalog on s3://: keep its shards in this local folder")
    p.add_argument("--epochs", type=int, help="total epochs (default 10)")
    p.add_argument("--lr", type=float, help="base learning rate (default 1e-3 from scratch, 1e-4 with --init)")
    p.add_argument("--head-lr-factor", type=float, dest="head_lr_factor", help="head lr multiplier (default 10)")
    p.add_argument("--weight-decay", type=float, dest="weight_decay", help="AdamW weight decay (default 0.05)")
    p.add_argument("--warmup-fraction", type=float, dest="warmup_fraction", help="warm-up share (default 0.1)")
    p.add_argument("--batch-size", type=int, dest="batch_size", help="default 32")
    p.add_argument("--mode", choices=["multimodal", "audioonly", "videoonly"], help="default multimodal")
    p.add_argument("--label-smoothing", type=float, dest="label_smoothing", help="default 0.1")
    p.add_argument("--freqm", type=int, help="SpecAugment frequency mask width (default 48)")
    p.add_argument("--timem", type=int, help="SpecAugment time mask width (default 192)")
    p.add_argument("--train-split", dest="train_split", help="default train")
    p.add_argument("--val-split", dest="val_split", type=_split_or_none, help="default test; 'none' to skip")
    p.add_argument("--init", help="start from a checkpoint (released .pth or an avtta checkpoint)")
    p.add_argument("--num-classes", type=int, dest="num_classes", help="default: the catalog's class table")
    p.add_argument(
        "--model-overrides",
        type=json.loads,
        dest="model_overrides",
        help='architecture overrides as JSON, e.g. \'{"embed_dim": 96, "depth": 3}\'',
    )
    p.add_argument("--seed", type=int, help="model init and data order seed (default 0)")
    p.add_argument("--workers", type=int, dest="num_workers", help="reader worker processes (default 2)")
    p.add_argument(
        "--access",
        choices=("index", "stream"),
        help="shard reading: index = random access (default), stream = sequential webdataset iterators",
    )
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1 ...")
    b = p.add_argument_group("balanced source training (Wei et al. CVPR'24; Swetha et al. ICCV'23)")
    b.add_argument(
        "--resample",
        choices=("none", "sample", "modality"),
        help="valuation-based re-sampling of every epoch after the warm-up (default none)",
    )
    b.add_argument("--resample-warmup", type=int, dest="resample_warmup", help="plain epochs first (default 5)")
    b.add_argument(
        "--resample-part-ratio",
        type=float,
        dest="resample_part_ratio",
        help="modality level: share of the set that estimates the gap (default 0.2)",
    )
    b.add_argument("--resample-alpha", type=float, dest="resample_alpha", help="modality level: scale (default 1)")
    b.add_argument(
        "--structure-loss",
        type=float,
        dest="structure_loss",
        metavar="WEIGHT",
        help="weight of the Multi-Sinkhorn-Knopp structure-preserving loss (default 0 = off)",
    )
    b.add_argument("--structure-anchors", type=int, dest="structure_anchors", help="anchors per modality (64)")
    b.add_argument("--structure-queue", type=int, dest="structure_queue", help="embedding queue size (5500)")
    b.add_argument("--structure-epsilon", type=float, dest="structure_epsilon", help="Sinkhorn epsilon (0.07)")
    b.add_argument("--structure-iterations", type=int, dest="structure_iterations", help="Sinkhorn iterations (20)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last finished epoch")
    p.add_argument("--no-progress", action="store_true", dest="no_progress", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from avtta.models.train import TrainConfig, train

    given = vars(args)
    cfg = TrainConfig(
        **{name: given[name] for name in _FIELDS if name in given}, progress=not given.get("no_progress", False)
    )
    result = train(cfg, resume=given.get("resume", False))
    last = result.history[-1] if result.history else {}
    summary = ", ".join(f"{k} {v:.2f}" for k, v in last.items() if k.startswith("acc_"))
    print(f"{result.checkpoint} ({result.epochs_done} epochs{'; ' + summary if summary else ''})")
    return 0
