"""Audio-to-video label maps: a CSV of weighted class links turned into a dense ``[A, V]`` matrix.

Audio-assisted TTA (``audio_assist.py``) labels a clip's audio with an audio classifier whose label space may
differ from the video model's (e.g. AudioSet's 527 classes against Kinetics' 50). A label map says which audio
classes name which video classes. It is data, written once offline (the paper builds it with an LLM; the prompt is
in ``docs/audio-assist.md``), and validated here against both class lists.

CSV format (header required, one link per row, many-to-many allowed)::

    audio_label,video_label,weight
    Dog,walking the dog,1.0
    Bark,walking the dog,0.5
    Music,playing guitar,0.5
    Music,playing piano,0.5

``weight`` is optional (default 1) and must be finite and >= 0. A (audio, video) pair listed twice is an error.
The weights are used as they are, not normalised per row: the mapped audio distribution is
``q = normalise(p_audio @ M)``, so an audio class with two links of weight 1 counts twice as much as a one-link
class; split the weight (0.5 + 0.5, as ``Music`` above) when a class should count once. Audio classes without any
row map nowhere: their probability mass is dropped.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

__all__ = [
    "LABEL_MAP_COLUMNS",
    "LabelMap",
    "identity_label_map",
    "load_class_list",
    "load_label_map",
    "parse_label_map",
    "resolve_label_map",
]

LABEL_MAP_COLUMNS = ("audio_label", "video_label", "weight")
_NAME_COLUMNS = ("display_name", "name", "label")  # AudioSet's class_labels_indices.csv has display_name


@dataclass(frozen=True)
class LabelMap:
    """A validated audio -> video label map.

    Attributes:
        audio_classes: the labeler's class names, in its logit order (A entries).
        video_classes: the adapted model's class names, in its logit order (V entries).
        matrix: ``[A, V]`` float32, ``matrix[a, v]`` = weight of the link audio class a -> video class v.
        source: where the map came from (a CSV path or "identity"), for error messages and provenance.
    """

    audio_classes: tuple[str, ...]
    video_classes: tuple[str, ...]
    matrix: Tensor
    source: str = "identity"

    def __post_init__(self) -> None:
        shape = (len(self.audio_classes), len(self.video_classes))
        if tuple(self.matrix.shape) != shape:
            raise ValueError(f"label map {self.source}: matrix shape {tuple(self.matrix.shape)} != {shape}")

    @property
    def is_identity(self) -> bool:
        """Whether the map is the identity on one shared label space."""
        return self.audio_classes == self.video_classes and bool(
            torch.equal(self.matrix, torch.eye(len(self.audio_classes)))
        )

    @property
    def unmapped_audio_classes(self) -> tuple[str, ...]:
        """Audio classes with no link (their probability mass is dropped)."""
        rows = (self.matrix.sum(dim=1) == 0).tolist()
        return tuple(name for name, empty in zip(self.audio_classes, rows, strict=True) if empty)


def identity_label_map(classes: Sequence[str] | int) -> LabelMap:
    """The identity map on one label space (class names, or a class count: names "0", "1", ...)."""
    names = tuple(str(i) for i in range(classes)) if isinstance(classes, int) else _class_list(classes, "classes")
    return LabelMap(names, names, torch.eye(len(names)), "identity")


def load_label_map(path: str | Path, audio_classes: Sequence[str], video_classes: Sequence[str]) -> LabelMap:
    """Read and validate a label-map CSV (see the module docstring) against both class lists.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a missing column, an unknown label, a bad weight or a duplicate link, naming it and the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label map {path} does not exist")
    with path.open(newline="", encoding="utf-8") as handle:
        return parse_label_map(handle.read(), audio_classes, video_classes, source=str(path))


def parse_label_map(
    text: str, audio_classes: Sequence[str], video_classes: Sequence[str], source: str = "<string>"
) -> LabelMap:
    """Build a :class:`LabelMap` from CSV ``text``; ``source`` names it in errors."""
    audio = _class_list(audio_classes, "audio_classes")
    video = _class_list(video_classes, "video_classes")
    audio_index = {name: i for i, name in enumerate(audio)}
    video_index = {name: i for i, name in enumerate(video)}
    reader = csv.DictReader(text.splitlines())
    header = [name.strip() for name in (reader.fieldnames or [])]
    missing = [name for name in LABEL_MAP_COLUMNS[:2] if name not in header]
    if missing:
        raise ValueError(f"label map {source}: missing column(s) {missing}; header is {header}")
    unknown_cols = sorted(set(header) - set(LABEL_MAP_COLUMNS))
    if unknown_cols:
        raise ValueError(f"label map {source}: unknown column(s) {unknown_cols}; allowed {list(LABEL_MAP_COLUMNS)}")
    reader.fieldnames = header
    matrix = torch.zeros(len(audio), len(video), dtype=torch.float64)
    seen: set[tuple[int, int]] = set()
    for line, row in enumerate(reader, start=2):  # line 1 is the header
        a_name, v_name = (row.get("audio_label") or "").strip(), (row.get("video_label") or "").strip()
        if a_name not in audio_index:
            raise ValueError(f"label map {source} line {line}: unknown audio label {a_name!r} (not a labeler class)")
        if v_name not in video_index:
            raise ValueError(f"label map {source} line {line}: unknown video label {v_name!r} (not a model class)")
        weight_text = (row.get("weight") or "").strip()
        try:
            weight = float(weight_text) if weight_text else 1.0
        except ValueError:
            raise ValueError(f"label map {source} line {line}: weight {weight_text!r} is not a number") from None
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"label map {source} line {line}: weight {weight_text!r} must be finite and >= 0")
        pair = (audio_index[a_name], video_index[v_name])
        if pair in seen:
            raise ValueError(f"label map {source} line {line}: link {a_name!r} -> {v_name!r} is listed twice")
        seen.add(pair)
        matrix[pair] = weight
    if not seen:
        raise ValueError(f"label map {source}: no links (the file has a header only)")
    if float(matrix.sum()) == 0.0:
        raise ValueError(f"label map {source}: every weight is 0, no audio class maps anywhere")
    return LabelMap(audio, video, matrix.float(), source)


def resolve_label_map(
    label_map: str | Path | None,
    video_classes: Sequence[str],
    audio_classes: Sequence[str] | str | Path | None = None,
) -> LabelMap | None:
    """The label map an ``audio_assist`` config names, ready for ``AudioAssist(label_map=...)``.

    Args:
        label_map: the config's ``label_map`` CSV path, or None (identity: returns None).
        video_classes: the adapted model's class names (the dataset's classes, logit order).
        audio_classes: the labeler's class names, or the path of its class list (the config's
            ``labeler_classes``); None = the video classes (labeler "self").
    """
    if label_map is None:
        return None
    if isinstance(audio_classes, str | Path):
        audio_classes = load_class_list(audio_classes)
    return load_label_map(label_map, video_classes if audio_classes is None else audio_classes, video_classes)


def load_class_list(path: str | Path) -> tuple[str, ...]:
    """Class names in logit order, for a labeler checkpoint that does not carry them.

    ``.csv``: a header with one of the columns ``display_name`` (AudioSet's ``class_labels_indices.csv``), ``name``
    or ``label``, optionally ``index`` (then rows must list 0..N-1, in any order); anything else: one name per line,
    blank lines skipped.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: no name column, bad or missing indices, duplicates, or an empty list (naming the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class list {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() != ".csv":
        names = [line.strip() for line in text.splitlines() if line.strip()]
    else:
        reader = csv.DictReader(text.splitlines())
        header = [name.strip() for name in (reader.fieldnames or [])]
        reader.fieldnames = header
        column = next((name for name in _NAME_COLUMNS if name in header), None)
        if column is None:
            raise ValueError(f"class list {path}: no name column (one of {list(_NAME_COLUMNS)}); header is {header}")
        rows = list(reader)
        names = [(row[column] or "").strip() for row in rows]
        if "index" in header:
            try:
                index = [int(row["index"]) for row in rows]
            except (TypeError, ValueError):
                raise ValueError(f"class list {path}: the index column has a non-integer entry") from None
            if sorted(index) != list(range(len(rows))):
                raise ValueError(f"class list {path}: the indices are not 0..{len(rows) - 1}, each once")
            ordered = [""] * len(rows)
            for i, name in zip(index, names, strict=True):
                ordered[i] = name
            names = ordered
    return _class_list(names, f"class list {path}")


def _class_list(classes: Sequence[str], what: str) -> tuple[str, ...]:
    if isinstance(classes, str) or not isinstance(classes, Sequence):
        raise TypeError(f"{what} must be a sequence of class names, got {type(classes).__name__}")
    names = tuple(str(name).strip() for name in classes)
    if not names:
        raise ValueError(f"{what} is empty")
    dupes = sorted({name for name in names if names.count(name) > 1})
    if dupes:
        raise ValueError(f"{what} has duplicate class name(s) {dupes}")
    return names
