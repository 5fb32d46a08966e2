"""What the commands share: options derived from a config dataclass, and the Ray options.

A command's options map onto the fields of its library config (``ShardJobConfig``, ``ImportConfig``, ...). The
parser is built with :func:`config_parser_kwargs`: an option left unset is absent from the parsed namespace
(``argparse.SUPPRESS``), so :func:`config_from_args` passes only what the user gave and every other field keeps
the library default; ``--help`` shows those defaults, read from the dataclass itself (imported only when help is
printed, so ``avtta`` starts fast). No option restates a default::

    p = sub.add_parser("shard", ..., **config_parser_kwargs("avtta.pipelines.shard_job:ShardJobConfig"))
    p.add_argument("--frames", type=int, help="frames sampled per clip")   # help: "... (default: 10)"
    ...
    cfg = config_from_args(ShardJobConfig, args, corrupt=tuple)           # converters by field name
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

# Namespace entries that are not config fields, or map onto one under another meaning.
_NOT_FIELDS = ("func", "command")


def _config_class(path: str) -> type:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def field_defaults(cls: type) -> dict[str, Any]:
    """``{field name: default}`` of a config dataclass (fields without a default are left out)."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def _show(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return " ".join(map(str, value)) if value else "none"
    return "none" if value is None else str(value)


def defaults_formatter(config: str) -> type[argparse.HelpFormatter]:
    """A help formatter appending ``(default: X)`` to each option that maps onto a field of ``config``.

    Args:
        config: ``"module:ClassName"`` of the config dataclass; imported when help is formatted.
    """

    class _DefaultsFromConfig(argparse.HelpFormatter):
        _defaults: dict[str, Any] | None = None

        def _get_help_string(self, action: argparse.Action) -> str:
            text = action.help or ""
            if type(self)._defaults is None:
                type(self)._defaults = field_defaults(_config_class(config))
            defaults = type(self)._defaults
            if action.option_strings and action.dest in defaults and "default" not in text:
                value = defaults[action.dest]
                if value is not None and not isinstance(value, bool):  # flags and "none" say it in their help
                    text += f" (default: {_show(value)})"
            return text

    return _DefaultsFromConfig


def config_parser_kwargs(config: str) -> dict[str, Any]:
    """``add_parser`` keyword arguments for a command whose options are fields of ``config`` (``module:Class``)."""
    return {"argument_default": argparse.SUPPRESS, "formatter_class": defaults_formatter(config)}


def config_from_args(cls: type[T], args: argparse.Namespace, **convert: Callable[[Any], Any]) -> T:
    """Build ``cls`` from the options the user gave; every other field keeps the library default.

    Args:
        cls: the config dataclass.
        args: the parsed namespace (options left unset are absent: see :func:`config_parser_kwargs`).
        convert: per-field converters (e.g. ``corrupt=tuple`` for an ``extend`` option).

    ``--no-progress`` sets ``progress=False`` and the global ``-v`` sets ``verbose=True`` where ``cls`` has those
    fields.
    """
    given = {k: v for k, v in vars(args).items() if k not in _NOT_FIELDS}
    names = {f.name for f in dataclasses.fields(cls)}
    values = {name: convert.get(name, _same)(given[name]) for name in names if name in given}
    if "progress" in names and given.get("no_progress"):
        values["progress"] = False
    if "verbose" in names and given.get("verbose"):
        values["verbose"] = True
    return cls(**values)


def _same(value: Any) -> Any:
    return value


def add_ray_arguments(p: argparse.ArgumentParser) -> None:
    """``--workers``, ``--ray-address``, ``--ray-retries``, ``--no-progress`` (their defaults are the config's)."""
    p.add_argument("--workers", type=int, help="parallel workers (none: all CPUs; 0: no Ray, in-process)")
    p.add_argument("--ray-address", help="run on an existing Ray cluster (none: RAY_ADDRESS or an embedded Ray)")
    add_ray_retries(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_ray_retries(p: argparse.ArgumentParser) -> None:
    """``--ray-retries``: how often a task lost with its Ray worker is run again (the config's default)."""
    p.add_argument(
        "--ray-retries",
        type=int,
        help="times a task whose Ray worker died (process killed, node lost) is run again on another worker "
        "before the job fails",
    )


def print_set_summary(summary: Any, out: str, *, what: str, name: Callable[[Any], str]) -> None:
    """Print the table of the sets a job wrote and its one-line summary; warn where the failure reasons are.

    Args:
        summary: the job's summary (``sets`` of ``ShardSetInfo``, ``failed``, ``format()``).
        out: the output root.
        what: what failed, plural ("clips", "entries").
        name: a set's label in the table.
    """
    from avtta.manifests import format_table

    rows = [
        dict(set=name(s), samples=s.samples, failures=s.failures, shards=s.shards, MB=round(s.bytes / 1e6, 1))
        for s in summary.sets
    ]
    print(format_table(rows))
    print(summary.format())
    if summary.failed:
        logging.getLogger("avtta").warning(
            "%d %s failed; reasons in %s/<set>/failures.parquet", summary.failed, what, out
        )
