"""``avtta preview``: a corrupted copy of a video (mp4), or a contact sheet of every video corruption (png)."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "preview",
        help="write a corrupted copy of a video (--corrupt) or a contact sheet of all video corruptions (--grid)",
        description="With --corrupt SPEC: decode VIDEO, corrupt every frame and the 16 kHz mono audio, write an "
        "mp4 (H.264 + AAC). With --grid: draw frame_5 of VIDEO under the 15 video corruptions at severities 1-5 "
        "(15 rows x 5 columns) into a png.",
    )
    p.add_argument("video", help="input video file")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--corrupt", metavar="SPEC", help="one corruption, e.g. av:rain@3 (see `avtta corruptions`)")
    mode.add_argument("--grid", action="store_true", help="contact sheet of every video corruption x severity")
    p.add_argument("--out", required=True, help="output .mp4 (--corrupt) or image file (--grid)")
    p.add_argument("--seed", type=int, default=0, help="seed of the corruption parameters (default 0)")
    p.add_argument("--seconds", type=float, default=10.0, help="--corrupt: length to render (default 10 s)")
    p.add_argument("--noise-dir", help="recorded environmental noises (default: synthesised noise)")
    p.add_argument("--snr", type=float, dest="snr_db", help="mix additive audio noise at this SNR (dB)")
    p.add_argument(
        "--reference-frames", action="store_true", help="Resize(256)+CenterCrop(224) before corrupting (spec 26)"
    )
    p.add_argument("--crowd-image-dir", help="RGBA person cut-outs for av:crowd (default: synthetic silhouette)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from avtta.corruptions import CorruptionOptions, parse_specs
    from avtta.pipelines.preview import contact_sheet, write_preview

    options = CorruptionOptions(
        noise_dir=args.noise_dir,
        snr_db=args.snr_db,
        reference_frames=args.reference_frames,
        crowd_image_dir=args.crowd_image_dir,
    )
    if args.grid:
        rows, cols = contact_sheet(args.video, args.out, seed=args.seed, options=options)
        print(f"wrote {args.out}: {rows} corruptions x {cols} severities")
        return 0
    specs = parse_specs([args.corrupt])
    if len(specs) != 1:
        raise ValueError(f"--corrupt takes exactly one corruption, {args.corrupt!r} expands to {len(specs)}")
    params = write_preview(args.video, specs[0], args.out, seed=args.seed, seconds=args.seconds, options=options)
    print(f"wrote {args.out}: {params.pop('frames')} frames at {params.pop('fps'):.2f} fps, {specs[0]}")
    print(json.dumps({k: v for k, v in params.items() if k != "video"}, default=str)[:2000])
    return 0
