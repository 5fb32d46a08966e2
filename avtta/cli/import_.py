"""``avtta import``: reference-layout data sets (JPEG frame folders + WAVs + JSON lists) -> avtta shards."""

from __future__ import annotations

import argparse

from ._common import add_ray_arguments, config_from_args, config_parser_kwargs, print_set_summary


def _frame_list(text: str) -> tuple[int, ...]:
    """``0-9`` / ``5`` / ``4,5`` -> frame indices."""
    out: list[int] = []
    try:
        for part in text.split(","):
            if "-" in part:
                lo, hi = part.split("-", 1)
                out += list(range(int(lo), int(hi) + 1))
            elif part.strip():
                out.append(int(part))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--frames takes indices like 0-9, 5 or 4,5; got {text!r}") from None
    return tuple(out)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import",
        help="import Kinetics50-C / VGGSound-C / AVRobustBench trees (frame folders + WAVs + JSON lists) as shards",
        description="Turn data in the reference layouts into avtta shard sets with Parquet manifests, keeping the "
        "published corruption names and severities: READ/BriMPR JSON roots (clean/severity_0.json, "
        "video/<c>/severity_<s>.json, audio/<c>/severity_<s>.json), single JSON lists (AVRobustBench), or plain "
        "folders (--audio, --frames-dir, --list). The fbank is computed from the WAV as the reference loader does; "
        "frames are stored as the original JPEGs. Bad entries (missing/unreadable files, unknown labels) become "
        "failure rows. Runs on Ray like `avtta shard`; a rerun resumes.",
        **config_parser_kwargs("avtta.pipelines.importer:ImportConfig"),
    )
    p.add_argument(
        "--json",
        dest="json",
        nargs="+",
        action="extend",
        metavar="PATH",
        help="READ/BriMPR JSON root folder(s) or single JSON list file(s)",
    )
    p.add_argument("--audio", dest="audio_dir", help="plain layout: folder of <video_id>.wav")
    p.add_argument("--frames-dir", help="plain layout: folder holding frame_K/<video_id>.jpg")
    p.add_argument("--list", dest="list_csv", help="plain layout: CSV with columns video_id,labels")
    p.add_argument("--labels", help="label CSV index,mid[,display_name] (required with --json)")
    p.add_argument("--out", required=True, help="output root (holds catalog.parquet)")
    p.add_argument("--dataset", required=True, help="dataset name in the catalog, e.g. ks50")
    p.add_argument("--split", help="split of the test lists")
    p.add_argument(
        "--corruption",
        help="set of a single list / the plain layout: clean (when none) or MODALITY:NAME@S, e.g. video:fog@5",
    )
    p.add_argument(
        "--path-map",
        nargs="+",
        action="extend",
        metavar="OLD=NEW",
        help="rewrite path prefixes inside the lists (lists made on another machine)",
    )
    p.add_argument(
        "--include-both",
        action="store_true",
        help="also import both/<v>/<a>_severity_<s>.json lists as av sets named <v>+<a> (by default "
        "they are skipped: --protocol both joins the video and audio sets)",
    )
    p.add_argument(
        "--frames",
        type=_frame_list,
        help="frame_K folders to store, e.g. 0-9 or 5 when only the eval frame exists",
    )
    p.add_argument("--shard-size", type=int, help="samples per shard")
    p.add_argument("--waveform", action="store_true", help="also store the audio (FLAC)")
    add_ray_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from avtta.pipelines.importer import ImportConfig, run_import

    cfg = config_from_args(ImportConfig, args, json=tuple, path_map=tuple)
    summary = run_import(cfg)
    print_set_summary(summary, args.out, what="entries", name=lambda s: f"{s.split}/{s.spec}")
    return 0
