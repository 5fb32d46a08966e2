"""Parquet manifests of shard sets, the catalog of an output root (``tables``) and the selection over it.

:func:`open_dataset` (``dataset``: a catalog selection -> the batches of :mod:`avtta.shards`' readers) is imported
on first use: the manifests alone need neither torch nor the corruptions.
"""

from __future__ import annotations

from typing import Any

from .tables import (
    CATALOG_FILE,
    CLASSES_FILE,
    FAILURES_SCHEMA,
    MEMBERS_FILE,
    MEMBERS_SCHEMA,
    SAMPLES_SCHEMA,
    SET_FILE,
    SHARDS_SCHEMA,
    Catalog,
    LabelIndex,
    ShardSetInfo,
    UnknownLabel,
    find_sets,
    format_table,
    load_classes,
    members_table,
    part_members,
    read_label_csv,
    set_relpath,
    write_catalog,
    write_classes,
    write_json,
    write_set_tables,
    write_table,
)

__all__ = [
    "CATALOG_FILE",
    "CLASSES_FILE",
    "FAILURES_SCHEMA",
    "MEMBERS_FILE",
    "MEMBERS_SCHEMA",
    "SAMPLES_SCHEMA",
    "SET_FILE",
    "SHARDS_SCHEMA",
    "Catalog",
    "LabelIndex",
    "ShardSetInfo",
    "UnknownLabel",
    "find_sets",
    "format_table",
    "load_classes",
    "read_label_csv",
    "set_relpath",
    "write_catalog",
    "members_table",
    "part_members",
    "write_classes",
    "write_json",
    "write_set_tables",
    "write_table",
    "check_joinable",
    "open_dataset",
    "parse_selection",
]


def __getattr__(name: str) -> Any:
    if name in ("check_joinable", "open_dataset", "parse_selection"):  # the selection: torch and the corruptions
        from . import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
