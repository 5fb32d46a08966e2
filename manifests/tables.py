"""Parquet manifests of a shard set and the catalog that lists every set under an output root.

Layout under an output root ``OUT``::

    OUT/catalog.parquet                         one row per shard set (rebuilt after every job)
    OUT/<dataset>/classes.csv                   index,mid,display_name (the reference label CSV format)
    OUT/<dataset>/<split>/clean/                a shard set ...
    OUT/<dataset>/<split>/<modality>/<corruption>/severity_<s>/
        shard-000000.tar ...                    webdataset shards
        samples.parquet                         one row per sample
        shards.parquet                          file, samples, bytes, sha256
        failures.parquet                        path, video_id, reason
        members.parquet                         byte range of every tar member (shard, key, field, offset, size)
        set.json                                the set's description; written last: its presence = complete

All files are written to a temporary name and renamed into place, so a half-written manifest is never visible.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from avtta.shards import storage
from avtta.shards.schema import SAMPLES_SCHEMA, SCHEMA_VERSION

CATALOG_FILE = "catalog.parquet"
SET_FILE = "set.json"
SAMPLES_FILE = "samples.parquet"
SHARDS_FILE = "shards.parquet"
FAILURES_FILE = "failures.parquet"
MEMBERS_FILE = "members.parquet"
CLASSES_FILE = "classes.csv"

SHARDS_SCHEMA = pa.schema(
    [("file", pa.string()), ("samples", pa.int64()), ("bytes", pa.int64()), ("sha256", pa.string())]
)
FAILURES_SCHEMA = pa.schema([("path", pa.string()), ("video_id", pa.string()), ("reason", pa.string())])
# The reader's random-access index: member <key>.<field> of <shard> has <size> data bytes at byte <offset>.
MEMBERS_SCHEMA = pa.schema(
    [("shard", pa.string()), ("key", pa.string()), ("field", pa.string()), ("offset", pa.int64()), ("size", pa.int64())]
)


@dataclass
class ShardSetInfo:
    """What ``set.json`` says about one shard set (also a catalog row)."""

    dataset: str
    split: str
    modality: str  # clean | video | audio | av
    corruption: str  # "clean" or the corruption name
    severity: int
    path: str  # relative to the output root
    samples: int = 0
    shards: int = 0
    bytes: int = 0
    failures: int = 0
    num_classes: int = 0
    num_frames: int = 0
    frame_size: int = 0
    waveform: bool = False
    seed: int = 0
    schema_version: int = SCHEMA_VERSION
    source: str = "avtta shard"  # the command that made it (shard / import)
    job: str = ""  # fingerprint of the job inputs and options
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def spec(self) -> str:
        return "clean" if self.modality == "clean" else f"{self.modality}:{self.corruption}@{self.severity}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ShardSetInfo:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def set_relpath(dataset: str, split: str, modality: str, corruption: str, severity: int) -> str:
    """The folder of a shard set, relative to the output root."""
    for name, value in (("dataset", dataset), ("split", split), ("corruption", corruption)):
        if not value or "/" in value or value.startswith("."):
            raise ValueError(f"invalid {name} name {value!r}")
    if modality == "clean":
        return f"{dataset}/{split}/clean"
    return f"{dataset}/{split}/{modality}/{corruption}/severity_{int(severity)}"


# ---------------------------------------------------------------------------------------------------------------
# atomic writes through the storage layer (local: temporary name, fsync, rename; S3: one PUT of the whole object)


def write_table(table: pa.Table, path: str | Path) -> None:
    """Write a Parquet file (zstd) atomically to a path or URL."""
    with storage.staged_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def write_json(obj: Any, path: str | Path) -> None:
    """Write ``obj`` as indented, key-sorted JSON atomically to a path or URL."""
    storage.atomic_write(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def rows_to_table(rows: Sequence[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist(list(rows), schema=schema)


def part_members(writer_members: Iterable[Sequence[Any]]) -> list[list[Any]]:
    """A closed shard's member index as stored in a chunk's part file: ``[key, field, offset, size]`` rows."""
    return [[m[0], m[1], int(m[2]), int(m[3])] for m in writer_members]


def members_table(rows: Iterable[tuple[str, str, str, int, int]]) -> pa.Table:
    """``(shard file, key, field, offset, size)`` rows -> the ``members.parquet`` table."""
    cols = list(zip(*rows, strict=True)) or [()] * len(MEMBERS_SCHEMA)
    return pa.Table.from_pydict({f.name: list(c) for f, c in zip(MEMBERS_SCHEMA, cols, strict=True)}, MEMBERS_SCHEMA)


def write_set_tables(set_dir: str | Path, parts: Iterable[dict[str, Any]]) -> tuple[pa.Table, list, list]:
    """Write a set's samples / shards / failures / members tables from its chunk parts (in chunk order).

    A part records ``shard`` (or None when no clip of the chunk succeeded), ``samples``, ``failures`` and
    ``members``; parts written before the member index existed are indexed by scanning their shard.
    Returns (the samples table, the shard rows, the failure rows).

    Each part's rows become Arrow columns as the part is read, and the part's Python rows are dropped: what this
    holds grows by about 1 kB a sample (the Arrow columns, mostly the 13 member rows), where the Python rows of the
    whole set took several kB a sample.
    """
    from avtta.shards.index import scan_members

    set_dir = str(set_dir)
    samples: list[pa.Table] = []
    shards: list[dict] = []
    failures: list[dict] = []
    members: list[pa.Table] = []
    for part in parts:
        samples.append(rows_to_table(part["samples"], SAMPLES_SCHEMA))
        failures += part["failures"]
        shard = part["shard"]
        if not shard:
            continue
        shards.append(shard)
        rows = part.get("members")
        if rows is None:
            with storage.local_copy(storage.join(set_dir, shard["file"])) as local:
                rows = scan_members(local)
        members.append(members_table((shard["file"], key, fld, offset, size) for key, fld, offset, size in rows))
    sample_table = _concat(samples, SAMPLES_SCHEMA)
    write_table(sample_table, storage.join(set_dir, SAMPLES_FILE))
    write_table(rows_to_table(shards, SHARDS_SCHEMA), storage.join(set_dir, SHARDS_FILE))
    write_table(rows_to_table(failures, FAILURES_SCHEMA), storage.join(set_dir, FAILURES_FILE))
    write_table(_concat(members, MEMBERS_SCHEMA), storage.join(set_dir, MEMBERS_FILE))
    del members
    pa.default_memory_pool().release_unused()  # the member columns' pages back to the OS, not kept by the allocator
    return sample_table, shards, failures


def _concat(tables: list[pa.Table], schema: pa.Schema) -> pa.Table:
    """``tables`` (in order) as one table, without copying: its columns keep one chunk per part. Parquet writes a
    table of up to a million rows as one row group whatever its chunks, so the file's bytes equal those of the same
    rows built in one go (checked on 2,400- and 24,000-sample sets; ``tests/pipelines/test_bytes_pinned.py``)."""
    return pa.concat_tables(tables) if tables else schema.empty_table()


# ---------------------------------------------------------------------------------------------------------------
# classes


def write_classes(path: str | Path, names: Sequence[tuple[str, str]]) -> None:
    """Write ``index,mid,display_name`` rows (the reference label CSV format) atomically."""

    def rows(fh) -> None:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["index", "mid", "display_name"])
        for i, (mid, display) in enumerate(names):
            w.writerow([i, mid, display])

    storage.atomic_write(path, rows, text=True)


def read_label_csv(path: str | Path) -> list[tuple[str, str]]:
    """Read a reference label CSV (``index,mid[,display_name]``, any line endings) -> [(mid, display_name)]."""
    path = str(path)
    try:
        with storage.open_read(path, "r", newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or "mid" not in reader.fieldnames or "index" not in reader.fieldnames:
                raise ValueError(f"{path}: a label CSV needs the columns index,mid[,display_name]")
            rows = []
            for row in reader:
                try:
                    idx = int(row["index"])
                except (TypeError, ValueError):
                    raise ValueError(f"{path}: bad index {row.get('index')!r}") from None
                rows.append((idx, row["mid"], row.get("display_name") or row["mid"]))
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not a text CSV ({err})") from None
    rows.sort()
    if [r[0] for r in rows] != list(range(len(rows))):
        raise ValueError(f"{path}: indices must be 0..{len(rows) - 1} without gaps")
    mids = [r[1] for r in rows]
    if len(set(mids)) != len(mids):
        raise ValueError(f"{path}: duplicate mid values")
    return [(r[1], r[2]) for r in rows]


class UnknownLabel(ValueError):
    """A sample's label is empty or not in the label CSV."""


@dataclass(frozen=True)
class LabelIndex:
    """Class table of a data set: ``mid`` (the string in lists and JSON files) or display name -> class index."""

    classes: tuple[tuple[str, str], ...]  # (mid, display_name) in index order

    @classmethod
    def from_csv(cls, path: str | Path) -> LabelIndex:
        return cls(tuple(read_label_csv(path)))

    @staticmethod
    def split(text: str) -> tuple[str, ...]:
        """``"a, b"`` -> ``("a", "b")`` (multi-label entries are comma-separated)."""
        return tuple(t.strip() for t in str(text).split(",") if t.strip())

    def resolve_names(self, names: Sequence[str]) -> tuple[int, ...]:
        """Label names (mids, or display names) -> sorted class indices; UnknownLabel names what is wrong."""
        if not names:
            raise UnknownLabel("no label (empty label string)")
        mids = {mid: i for i, (mid, _) in enumerate(self.classes)}
        display = {d: i for i, (_, d) in enumerate(self.classes)}
        ids, unknown = set(), []
        for name in names:
            if name in mids:
                ids.add(mids[name])
            elif name in display:
                ids.add(display[name])
            else:
                unknown.append(name)
        if unknown:
            raise UnknownLabel(f"unknown label {', '.join(map(repr, unknown))} (not in the label CSV)")
        return tuple(sorted(ids))


def load_classes(root: str | Path, dataset: str) -> list[tuple[str, str]]:
    return read_label_csv(storage.join(root, dataset, CLASSES_FILE))


# ---------------------------------------------------------------------------------------------------------------
# catalog


def find_sets(root: str | Path) -> list[ShardSetInfo]:
    """Every complete shard set under ``root`` (a path or URL; those with a ``set.json``), in path order."""
    urls = sorted(storage.find(root, SET_FILE), key=_path_order)
    return [ShardSetInfo.from_json(json.loads(storage.read_text(url))) for url in urls]


def _path_order(url: str) -> list[str]:
    return url.split("/")  # by path components, as sorting Paths does ("a/b" before "a-b/c")


CATALOG_COLUMNS = [f.name for f in fields(ShardSetInfo) if f.name != "options"] + ["options"]
CATALOG_ROUNDS = 20  # rebuilds before giving up: each one that is undone needs another job's set.json in between


def write_catalog(root: str | Path) -> pa.Table:
    """Rebuild ``OUT/catalog.parquet`` from the ``set.json`` files under ``root`` (a path or URL).

    The catalog is derived: each set's ``set.json`` is its own entry (one object per set, written by its job) and
    the Parquet table is rebuilt from a listing of them. Object stores have no locks, so two jobs finishing at once
    may both rebuild it, the slower one from an older listing. Each writer therefore lists again after writing and
    rebuilds until the listing it wrote from is still the current one: the last table written then names every
    set whose ``set.json`` existed before its writer's final listing, which includes every finished job's sets.
    """
    for _ in range(CATALOG_ROUNDS):
        before = storage.state(root, SET_FILE)
        table = _catalog_table(root, before)
        write_table(table, storage.join(root, CATALOG_FILE))
        if storage.state(root, SET_FILE) == before:
            return table
    raise RuntimeError(f"{root}: the set.json files kept changing while the catalog was rebuilt; run `avtta catalog`")


def _catalog_table(root: str | Path, listing: dict[str, Any]) -> pa.Table:
    rows = []
    for url in sorted(listing, key=_path_order):
        row = ShardSetInfo.from_json(json.loads(storage.read_text(url))).to_json()
        row["options"] = json.dumps(row["options"], sort_keys=True)
        rows.append(row)
    return pa.Table.from_pylist(rows) if rows else pa.table({c: pa.array([], pa.string()) for c in CATALOG_COLUMNS})


class Catalog:
    """The shard sets under an output root, selectable by dataset / split / modality / corruption / severity."""

    def __init__(self, root: str | Path):
        if not storage.is_local(root):  # a URL: the root stays a string, files are read through the storage layer
            self._init_remote(str(root))
            return
        path = Path(root)
        if path.name == CATALOG_FILE:
            path = path.parent
        if not path.is_dir():
            raise FileNotFoundError(f"catalog root {path} does not exist")
        self.root = path
        catalog_file = path / CATALOG_FILE
        if catalog_file.exists():
            self._load(pq.read_table(catalog_file).to_pylist())
        else:
            self._load(None, find_sets(path))

    def _init_remote(self, url: str) -> None:
        url = url.rstrip("/")
        if url.endswith("/" + CATALOG_FILE):
            url = url[: -len(CATALOG_FILE) - 1]
        self.root = url
        catalog_file = storage.join(url, CATALOG_FILE)
        if storage.exists(catalog_file):
            self._load(_read_parquet(catalog_file).to_pylist())
            return
        self._load(None, find_sets(url))

    def _load(self, rows: list[dict[str, Any]] | None, sets: list[ShardSetInfo] | None = None) -> None:
        if rows is not None:
            self.sets = []
            for row in rows:
                row["options"] = json.loads(row.get("options") or "{}")
                self.sets.append(ShardSetInfo.from_json(row))
        else:
            self.sets = sets or []
        if not self.sets:
            raise FileNotFoundError(f"no shard sets under {self.root} (run `avtta shard` or `avtta import` first)")

    def select(
        self,
        dataset: str | None = None,
        split: str | None = None,
        modality: str | None = None,
        corruption: str | None = None,
        severity: int | None = None,
    ) -> list[ShardSetInfo]:
        """Sets matching every given field (None = any)."""
        out = []
        for s in self.sets:
            if dataset is not None and s.dataset != dataset:
                continue
            if split is not None and s.split != split:
                continue
            if modality is not None and s.modality != modality:
                continue
            if corruption is not None and s.corruption != corruption:
                continue
            if severity is not None and s.severity != int(severity):
                continue
            out.append(s)
        return out

    def get(
        self, dataset: str, split: str, modality: str = "clean", corruption: str = "clean", severity: int = 0
    ) -> ShardSetInfo:
        """Exactly one set, or a ValueError naming what exists."""
        if modality == "clean" or corruption == "clean":
            modality, corruption, severity = "clean", "clean", 0
        found = self.select(dataset, split, modality, corruption, severity)
        if len(found) != 1:
            have = sorted({f"{s.dataset}/{s.split}/{s.spec}" for s in self.select(dataset)}) or sorted(
                {s.dataset for s in self.sets}
            )
            raise ValueError(
                f"no shard set {dataset}/{split}/{modality}:{corruption}@{severity} in {self.root}; available: "
                + ", ".join(have)
            )
        return found[0]

    def url(self, info: ShardSetInfo, name: str) -> str:
        """The path (local catalog) or URL of file ``name`` of a set."""
        return storage.join(str(self.root), info.path, name)

    def shard_paths(self, info: ShardSetInfo) -> list[Path] | list[str]:
        """The set's shards: paths for a local catalog, URLs for a remote one."""
        files = self.shards(info).column("file").to_pylist()
        if isinstance(self.root, Path):
            return [self.root / info.path / f for f in files]
        return [self.url(info, f) for f in files]

    def shards(self, info: ShardSetInfo) -> pa.Table:
        """The set's ``shards.parquet``: file, samples, bytes, sha256 of every shard."""
        return _read_parquet(self.url(info, SHARDS_FILE))

    def samples(self, info: ShardSetInfo, columns: list[str] | None = None) -> pa.Table:
        """The set's samples table (only ``columns`` when given: the reader needs 3 of its columns)."""
        return _read_parquet(self.url(info, SAMPLES_FILE), columns)

    def failures(self, info: ShardSetInfo) -> pa.Table:
        return _read_parquet(self.url(info, FAILURES_FILE))

    def members(self, info: ShardSetInfo) -> pa.Table:
        """The set's member index (``members.parquet``); sets written before it existed are scanned instead."""
        path = self.url(info, MEMBERS_FILE)
        if storage.exists(path):
            return _read_parquet(path)
        from avtta.shards.index import scan_members

        shards = [storage.join(str(self.root), info.path, f) for f in self.shards(info).column("file").to_pylist()]
        rows = []
        for shard in shards:
            with storage.local_copy(shard) as local:
                rows += [(os.path.basename(shard), *m) for m in scan_members(local)]
        return members_table(rows)

    def classes(self, dataset: str) -> list[tuple[str, str]]:
        return load_classes(self.root, dataset)

    def table_rows(self) -> list[dict[str, Any]]:
        return [
            {
                "dataset": s.dataset,
                "split": s.split,
                "modality": s.modality,
                "corruption": s.corruption,
                "severity": s.severity,
                "samples": s.samples,
                "failures": s.failures,
                "shards": s.shards,
                "MB": round(s.bytes / 1e6, 1),
                "source": s.source,
            }
            for s in self.sets
        ]


def _read_parquet(url: str, columns: list[str] | None = None) -> pa.Table:
    """A Parquet file of a local or remote catalog (one whole GET: manifests are small), ``columns`` only if given."""
    if storage.is_local(url):
        return pq.read_table(storage.local_path(url), columns=columns)
    return pq.read_table(pa.BufferReader(storage.read_bytes(url)), columns=columns)


def format_table(rows: Iterable[dict[str, Any]]) -> str:
    """A Markdown table of dict rows (column order of the first row)."""
    rows = list(rows)
    if not rows:
        return "(empty)"
    cols = list(rows[0].keys())
    cells = [[str(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)) + " |"]
    lines.append("| " + " | ".join("-" * w for w in widths) + " |")
    lines += ["| " + " | ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) + " |" for row in cells]
    return "\n".join(lines)
