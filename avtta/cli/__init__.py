"""The ``avtta`` command line: one sub-module per command, each parsing into a call of one library function.

Every sub-module listed in ``COMMANDS`` defines ``register(subparsers)`` which adds its parser and sets
``func`` (a callable taking the parsed ``argparse.Namespace`` and returning an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# module name in avtta.cli -> loaded lazily so `avtta --help` stays fast
COMMANDS = [
    "shard",
    "catalog",
    "corruptions",
    "preview",
    "train",
    "adapt",
    "report",
    "import_",
    "demo",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avtta", description="Audio-visual test-time adaptation toolkit.")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="debug logging, tracebacks, and the embedded Ray's own output"
    )
    parser.add_argument(
        "--s3-endpoint",
        metavar="URL",
        help="endpoint of an S3-compatible object store for s3:// paths, e.g. http://127.0.0.1:8333 (default: "
        "AVTTA_S3_ENDPOINT, else AWS_ENDPOINT_URL, else AWS); credentials come from the AWS environment variables "
        "or config files, never from options",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"avtta.cli.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"avtta.cli.{name}":
                continue  # command not implemented in this checkout
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not args.verbose:  # the S3 client's own INFO lines ("Found credentials in ...") are not the user's concern
        for name in ("aiobotocore", "botocore", "s3fs", "fsspec"):
            logging.getLogger(name).setLevel(logging.WARNING)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from avtta.shards.storage import StorageError, set_endpoint

    try:
        set_endpoint(args.s3_endpoint)
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, TypeError, StorageError) as err:
        # Bad arguments, files or storage (access denied, no such bucket, endpoint unreachable): one clear line
        # naming the value, file or URL, no traceback. An error raised on a Ray worker carries the original as
        # ``cause`` (its own text holds the remote traceback).
        if args.verbose:
            raise
        print(f"avtta {args.command}: error: {getattr(err, 'cause', None) or err}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        from avtta.pipelines.ray_runner import TaskLostError

        # A job given up after its Ray workers were lost: the message names the task and the cause.
        if args.verbose or not isinstance(err, TaskLostError):
            raise
        print(f"avtta {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
