"""``avtta shard``: raw videos -> WebDataset shards + Parquet manifests (clean and corrupted sets, one decode)."""

from __future__ import annotations

import argparse

from ._common import add_ray_arguments, config_from_args, config_parser_kwargs, print_set_summary


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "shard",
        help="decode raw videos into WebDataset shards (clean and corrupted sets) with Parquet manifests",
        description="Decode videos with PyAV, extract frames and Kaldi fbank, apply corruptions on the fly and "
        "write one shard set per corruption spec, all from ONE decode of each clip. Runs on an embedded local "
        "Ray by default, on a cluster with --ray-address (or RAY_ADDRESS). A rerun resumes a killed job.",
        **config_parser_kwargs("avtta.pipelines.shard_job:ShardJobConfig"),
    )
    p.add_argument(
        "--videos",
        required=True,
        help="folder of videos (mp4/mkv/webm/avi/mov) or a CSV/Parquet list with columns path,label[,video_id]",
    )
    p.add_argument(
        "--labels",
        help="label CSV in the reference format index,mid[,display_name] (none: for a folder, its sub-folder names)",
    )
    p.add_argument("--out", required=True, help="output root (holds catalog.parquet)")
    p.add_argument("--dataset", required=True, help="dataset name in the catalog, e.g. ks50")
    p.add_argument("--split", help="split name")
    p.add_argument(
        "--corrupt",
        nargs="+",
        action="extend",
        metavar="SPEC",
        help="shard sets to write: none | video:NAME@S | audio:NAME@S | av:NAME@S, NAME may be 'all', "
        "S a severity 1-5 or a range 1-5 (none = clean only); see `avtta corruptions`",
    )
    p.add_argument("--frames", type=int, help="frames sampled per clip")
    p.add_argument("--frame-size", type=int, help="frame side after resize + centre crop")
    p.add_argument("--shard-size", type=int, help="clips per shard")
    p.add_argument("--seed", type=int, help="seed of the corruption parameters")
    p.add_argument(
        "--missing",
        choices=["fail", "fill"],
        help="a clip without audio or video: a failure row (fail), or filled with silence/black and "
        "flagged in the metadata (fill)",
    )
    p.add_argument("--waveform", action="store_true", help="also store the 16 kHz waveform (FLAC)")
    p.add_argument(
        "--noise-dir",
        help="recorded noises for the environmental audio corruptions (one file or folder "
        "per category); none: synthesised noise (not comparable with published numbers)",
    )
    p.add_argument(
        "--reference-frames",
        action="store_true",
        help="corrupt frames as the Kinetics50-C scripts did: Resize(256)+CenterCrop(224) first "
        "(spec items 26-27); without it: corrupt the clean 224 frame",
    )
    p.add_argument(
        "--snr",
        type=float,
        dest="snr_db",
        help="mix environmental audio noise at this SNR (dB) instead of the reference gains",
    )
    p.add_argument(
        "--crowd-image-dir", help="RGBA person cut-outs for av:crowd (AVRobustBench's crowd_image/; none: synthetic)"
    )
    add_ray_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from avtta.pipelines.shard_job import ShardJobConfig, run_shard_job

    cfg = config_from_args(ShardJobConfig, args, corrupt=tuple)
    summary = run_shard_job(cfg)
    print_set_summary(summary, args.out, what="clips", name=lambda s: s.spec)
    return 0
