"""Listing the input videos of a shard job: a folder of videos or a CSV/Parquet list, with their labels.

Labels come from a label CSV in the reference format (``index,mid[,display_name]``; a video may carry several
comma-separated mids) or, for a folder input without a list, from sub-folder names (``DIR/<class>/<video>``).
"""

from __future__ import annotations

import csv
import hashlib
import posixpath
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
from avtta.manifests import LabelIndex, UnknownLabel, read_label_csv
from avtta.shards import storage
from avtta.shards.schema import sanitize_key

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov")


@dataclass(frozen=True)
class ClipInput:
    """One video to process. ``path`` is absolute (or a URL); ``source`` is the path relative to the input root."""

    key: str
    video_id: str
    path: str
    source: str
    labels: tuple[int, ...]  # class indices; empty when the label is unknown (-> failure row)
    label_names: tuple[str, ...]
    error: str = ""  # non-empty: this input is bad (unknown label, duplicate id) and becomes a failure row

    @property
    def label(self) -> int:
        """Primary label: the lowest index, i.e. the reference's argmax of the multi-hot vector."""
        return min(self.labels) if self.labels else -1


def list_inputs(videos: str | Path, labels: str | Path | None = None) -> tuple[list[ClipInput], list[tuple[str, str]]]:
    """List the clips of a job and the class table.

    Args:
        videos: a folder or ``s3://`` prefix (searched recursively for mp4/mkv/webm/avi/mov) or a ``.csv``/``.parquet``
            list (path or URL) with the columns ``path``, ``label`` and optionally ``video_id`` (relative paths are
            relative to the list).
        labels: a reference label CSV; required for a list input, optional for a folder (then the classes are the
            sorted sub-folder names).

    Returns:
        (clips in processing order, classes as [(mid, display_name)]).
    """
    if not storage.is_local(videos):
        return _finish(*_remote_rows(str(videos), labels))
    videos = Path(storage.local_path(videos))
    if not videos.exists():
        raise FileNotFoundError(f"--videos {videos} does not exist")
    classes = read_label_csv(labels) if labels else None
    rows: list[tuple[Path, str, list[str]]] = []  # (path, video_id, label names)
    if videos.is_dir():
        root = videos
        files = sorted(p for p in videos.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
        rows = [(p, p.stem, _folder_label(p.relative_to(videos).parts)) for p in files]
        classes = _folder_classes(str(videos), rows, classes)
    elif videos.suffix.lower() in (".csv", ".parquet"):
        root = videos.parent
        for path, vid, names in _list_rows(str(videos), classes):
            p = Path(path)
            p = p if p.is_absolute() else videos.parent / p
            rows.append((p, vid or p.stem, names))
    else:
        raise ValueError(f"--videos {videos}: expected a folder or a .csv/.parquet list")
    resolved = []
    for path, vid, names in rows:
        try:
            source = str(path.resolve().relative_to(root.resolve()))
        except ValueError:
            source = str(path)
        resolved.append((str(path.resolve()), source, vid, names))
    return _finish(resolved, classes)


def _folder_label(parts: tuple[str, ...]) -> list[str]:
    return [parts[0]] if len(parts) > 1 else []


def _folder_classes(videos: str, rows: list, classes: list | None) -> list[tuple[str, str]]:
    """The classes of a folder input: the label CSV's, else the sorted class sub-folder names."""
    if not rows:
        raise ValueError(f"--videos {videos}: no video files ({', '.join(VIDEO_EXTENSIONS)}) found")
    if classes is not None:
        return classes
    names = sorted({r[2][0] for r in rows if r[2]})
    if not names:
        raise ValueError(f"--videos {videos}: videos are not in class sub-folders and no --labels CSV was given")
    return [(n, n) for n in names]


def _list_rows(videos: str, classes: list | None) -> list[tuple[str, str, list[str]]]:
    """(path as written, video_id or "", label names) of each row of a CSV/Parquet video list (path or URL)."""
    if classes is None:
        raise ValueError(f"--videos {videos} is a list: give the classes with --labels LABELS.csv")
    if videos.lower().endswith(".csv"):
        with storage.open_read(videos, "r", newline="", encoding="utf-8-sig") as fh:
            table = list(csv.DictReader(fh))
    else:
        with storage.open_read(videos) as fh:
            table = pq.read_table(fh).to_pylist()
    if table and ("path" not in table[0] or "label" not in table[0]):
        raise ValueError(f"{videos}: a video list needs the columns path,label[,video_id]")
    return [(str(r["path"]), str(r.get("video_id") or ""), list(LabelIndex.split(r.get("label") or ""))) for r in table]


def _remote_rows(videos: str, labels: str | Path | None) -> tuple[list, list[tuple[str, str]]]:
    """The clips of a remote input: an object prefix (searched like a folder) or a CSV/Parquet list of URLs.

    ``source`` is the URL relative to the prefix (or to the list's folder), as for a local input, so the same
    videos give the same job fingerprint and the same sample records from a folder and from S3.
    """
    classes = read_label_csv(labels) if labels else None
    base = videos.rstrip("/")
    if base.lower().endswith((".csv", ".parquet")):
        if not storage.exists(base):
            raise FileNotFoundError(f"--videos {base} does not exist")
        root = posixpath.dirname(base)
        rows = []
        for path, vid, names in _list_rows(base, classes):
            url = path if "://" in path else posixpath.join(root, path)
            rows.append((url, vid or posixpath.splitext(posixpath.basename(url))[0], names))
    else:
        root = base
        urls = [u for u in storage.find(base) if posixpath.splitext(u)[1].lower() in VIDEO_EXTENSIONS]
        if not urls and not storage.isdir(base):
            raise FileNotFoundError(f"--videos {base} does not exist")
        rels = [posixpath.relpath(u, base) for u in urls]
        rows = [
            (u, posixpath.splitext(posixpath.basename(u))[0], _folder_label(tuple(r.split("/"))))
            for u, r in zip(urls, rels, strict=True)
        ]
        classes = _folder_classes(base, rows, classes)
    resolved = []
    for url, vid, names in rows:
        source = url[len(root) + 1 :] if url.startswith(root + "/") else url
        resolved.append((url, source, vid, names))
    return resolved, classes


def _finish(
    rows: list[tuple[str, str, str, list[str]]], classes: list[tuple[str, str]]
) -> tuple[list[ClipInput], list[tuple[str, str]]]:
    """(path or URL, source, video_id, label names) rows -> clips in processing order, and the classes."""
    labels = LabelIndex(tuple(classes))
    clips, seen = [], {}
    for path, source, vid, names in rows:
        key = sanitize_key(vid)
        try:
            ids, error = labels.resolve_names(names), ""
        except UnknownLabel as err:
            ids, error = (), str(err)
        label_names = tuple(names)
        if key in seen:
            error = f"duplicate video id {vid!r} (key {key!r}, first seen at {seen[key]})"
        else:
            seen[key] = source
        clips.append(ClipInput(key, vid, path, source, ids, label_names, error))
    # Processing order: by a hash of the key, so shards mix classes even when ids are grouped by class.
    clips.sort(key=lambda c: (hashlib.sha1(c.key.encode()).hexdigest(), c.key, c.source))
    return clips, list(classes)
