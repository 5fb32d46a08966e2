"""Listing the input videos of a shard job: a folder of videos or a CSV/Parquet list, with their labels.

Labels come from a label CSV in the reference format (``index,mid[,display_name]``; a video may carry several
comma-separated mids) or, for a folder input without a list, from sub-folder names (``DIR/<class>/<video>``).
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
from avtta.manifests import LabelIndex, UnknownLabel, read_label_csv
from avtta.shards.schema import sanitize_key

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov")


@dataclass(frozen=True)
class ClipInput:
    """One video to process. ``path`` is absolute; ``source`` is the path relative to the input root."""

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
        videos: a folder (searched recursively for mp4/mkv/webm/avi/mov) or a ``.csv``/``.parquet`` list with the
            columns ``path``, ``label`` and optionally ``video_id`` (relative paths are relative to the list).
        labels: a reference label CSV; required for a list input, optional for a folder (then the classes are the
            sorted sub-folder names).

    Returns:
        (clips in processing order, classes as [(mid, display_name)]).
    """
    videos = Path(videos)
    if not videos.exists():
        raise FileNotFoundError(f"--videos {videos} does not exist")
    classes = read_label_csv(labels) if labels else None
    rows: list[tuple[Path, str, list[str]]] = []  # (path, video_id, label names)
    if videos.is_dir():
        root = videos
        files = sorted(p for p in videos.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
        if not files:
            raise ValueError(f"--videos {videos}: no video files ({', '.join(VIDEO_EXTENSIONS)}) found")
        for p in files:
            rel = p.relative_to(videos)
            label = [rel.parts[0]] if len(rel.parts) > 1 else []
            rows.append((p, p.stem, label))
        if classes is None:
            names = sorted({r[2][0] for r in rows if r[2]})
            if not names:
                raise ValueError(
                    f"--videos {videos}: videos are not in class sub-folders and no --labels CSV was given"
                )
            classes = [(n, n) for n in names]
    elif videos.suffix.lower() in (".csv", ".parquet"):
        root = videos.parent
        if classes is None:
            raise ValueError(f"--videos {videos} is a list: give the classes with --labels LABELS.csv")
        if videos.suffix.lower() == ".csv":
            with open(videos, newline="", encoding="utf-8-sig") as fh:
                table = list(csv.DictReader(fh))
        else:
            table = pq.read_table(videos).to_pylist()
        if table and ("path" not in table[0] or "label" not in table[0]):
            raise ValueError(f"{videos}: a video list needs the columns path,label[,video_id]")
        for row in table:
            p = Path(str(row["path"]))
            p = p if p.is_absolute() else videos.parent / p
            vid = str(row.get("video_id") or "") or p.stem
            rows.append((p, vid, list(LabelIndex.split(row.get("label") or ""))))
    else:
        raise ValueError(f"--videos {videos}: expected a folder or a .csv/.parquet list")

    labels = LabelIndex(tuple(classes))
    clips, seen = [], {}
    for path, vid, names in rows:
        key = sanitize_key(vid)
        try:
            ids, error = labels.resolve_names(names), ""
        except UnknownLabel as err:
            ids, error = (), str(err)
        label_names = tuple(names)
        try:
            source = str(path.resolve().relative_to(root.resolve()))
        except ValueError:
            source = str(path)
        if key in seen:
            error = f"duplicate video id {vid!r} (key {key!r}, first seen at {seen[key]})"
        else:
            seen[key] = source
        clips.append(ClipInput(key, vid, str(path.resolve()), source, ids, label_names, error))
    # Processing order: by a hash of the key, so shards mix classes even when ids are grouped by class.
    clips.sort(key=lambda c: (hashlib.sha1(c.key.encode()).hexdigest(), c.key, c.source))
    return clips, list(classes)
