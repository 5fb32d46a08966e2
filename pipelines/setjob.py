"""The one framework for "chunks -> parts -> shard set", shared by ``avtta shard`` and ``avtta import``.

A set job writes one or more shard sets under an output root. Its work is split into chunks; chunk ``i`` becomes
``shard-{i:06d}.tar`` in each of its sets. The framework owns everything that is not "what a chunk's clips are and
how one sample is made" (that is the job's policy: :mod:`.shard_job`, :mod:`.importer`), in the shape of a
datasink with start / write / complete hooks:

* **start** (:func:`start_sets`): the output root, the ``classes.csv`` check, each set's ``_parts/job.json``
  fingerprint (a rerun with other inputs or options is refused), removal of temporaries a killed run left;
* **write** (:class:`ChunkOutput`): per chunk, shard writers opened lazily per set, one sample row or one failure
  row per clip and set; ``commit`` closes the shards first (atomic rename), then writes each set's part file
  ``_parts/shard-{i:06d}.json``; a part exists only if its shard does, so a killed job resumes from its parts;
* **complete** (:func:`complete_set`): the set's Parquet tables from its parts, in chunk order, then ``set.json``
  (written last: its presence means the set is complete).

The per-clip error policy is :func:`failure_row`: an exception while making one sample becomes one failure row
(``path``, ``video_id``, ``reason``), never the end of the job. FLAC encoding, fingerprints and the config checks
both jobs share live here too.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from avtta.manifests import SET_FILE, ShardSetInfo, part_members, write_classes, write_json, write_set_tables
from avtta.manifests.tables import CLASSES_FILE, read_label_csv
from avtta.shards import storage
from avtta.shards.io import is_temp_name
from avtta.shards.schema import Sample, SampleRecord
from avtta.shards.writer import ShardWriter

PARTS_DIR = "_parts"
JOB_FILE = "job.json"


def shard_name(index: int) -> str:
    """The file name of chunk ``index``'s shard."""
    return f"shard-{index:06d}.tar"


def part_path(set_dir: str | Path, index: int) -> str:
    """Where chunk ``index``'s part file of the set in ``set_dir`` (a path or URL) lives."""
    return storage.join(set_dir, PARTS_DIR, part_name(index))


def part_name(index: int) -> str:
    return f"shard-{index:06d}.json"


def read_part(set_dir: str | Path, index: int) -> dict[str, Any]:
    return json.loads(storage.read_text(part_path(set_dir, index)))


def fingerprint(payload: Any) -> str:
    """A short, stable digest of a job's inputs and options (sorted-key JSON)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_names(**names: str) -> None:
    """``dataset`` / ``split`` names become folders: no empty names, slashes or leading dots."""
    for name, value in names.items():
        if not value or "/" in value or value.startswith("."):
            raise ValueError(f"invalid --{name} {value!r}")


def check_min(**values: int | None) -> None:
    """Check option lower bounds (``_MINIMA``: frames, frame size, shard size, workers, Ray retries); None passes."""
    for name, value in values.items():
        bound = _MINIMA[name]
        if value is not None and value < bound:
            raise ValueError(f"--{name.replace('_', '-')} must be >= {bound}, got {value}")


_MINIMA = {"frames": 1, "frame_size": 16, "shard_size": 1, "workers": 0, "ray_retries": 0}


def encode_flac(waveform: np.ndarray, sample_rate: int) -> bytes:
    """Float waveform -> 16-bit PCM FLAC bytes (lossless for values on the PCM16 grid, k / 32768)."""
    import soundfile as sf

    buf = io.BytesIO()
    pcm = np.clip(np.round(np.asarray(waveform, np.float64) * 32768.0), -32768, 32767).astype(np.int16)
    sf.write(buf, pcm, sample_rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def json_safe(obj: Any) -> Any:
    """Make corruption parameters JSON-serialisable (numpy scalars/arrays -> Python, non-finite floats -> str)."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return str(obj)
    return obj


# ---------------------------------------------------------------------------------------------------------------
# the per-clip error policy


class SampleFailure(Exception):
    """An expected reason why one sample cannot be made (bad file, bad label); its text is the failure reason."""


def failure_row(
    path: str, video_id: str, err: BaseException | str, *, expected: tuple[type, ...] = (), context: str = ""
) -> dict[str, str]:
    """The failure row of one clip: ``{"path", "video_id", "reason"}``, with one reason format.

    Args:
        path: the clip's source (relative path, or ``list.json#i``).
        video_id: its id ("" when unknown).
        err: the exception (or a reason text decided before any work, e.g. a duplicate id).
        expected: exception types whose message is the whole reason (besides :class:`SampleFailure`); any other
            exception reads ``<Type>: <message>``, prefixed ``unexpected`` when there is no ``context``.
        context: what was being made when it failed (e.g. the set's spec), prefixed as ``<context>: ``.
    """
    if isinstance(err, str) or isinstance(err, (SampleFailure, *expected)):
        reason = str(err)
    elif context:
        reason = f"{type(err).__name__}: {err}"
    else:
        reason = f"unexpected {type(err).__name__}: {err}"
    return {"path": path, "video_id": video_id, "reason": f"{context}: {reason}" if context else reason}


# ---------------------------------------------------------------------------------------------------------------
# start


@dataclass(frozen=True)
class SetTarget:
    """One output shard set of a job: its folder (relative to the output root) and its job record."""

    relpath: str
    fingerprint: str
    job: dict[str, Any] = field(default_factory=dict)  # extra fields of _parts/job.json (spec, source)


def write_classes_checked(out: str | Path, dataset: str, classes: Sequence[tuple[str, str]]) -> None:
    """Write OUT/<dataset>/classes.csv, or check that an existing one has the same classes."""
    path = storage.join(out, dataset, CLASSES_FILE)
    if storage.exists(path):
        if read_label_csv(path) != list(classes):
            raise ValueError(f"{path} lists other classes than this job's labels; use another --dataset or --out")
        return
    write_classes(path, classes)


def start_sets(out: str | Path, dataset: str, classes: Sequence[tuple[str, str]], targets: Iterable[SetTarget]) -> None:
    """The start hook: output root, classes check, job fingerprints (resume or refuse), stale temporaries removed."""
    if storage.is_local(out):
        storage.local_path(out).mkdir(parents=True, exist_ok=True)
    write_classes_checked(out, dataset, classes)
    for t in targets:
        set_dir = storage.join(out, t.relpath)
        job_file = storage.join(set_dir, PARTS_DIR, JOB_FILE)
        if storage.exists(job_file):
            if json.loads(storage.read_text(job_file)).get("fingerprint") != t.fingerprint:
                raise ValueError(
                    f"{set_dir} holds the output of a different job (inputs or options changed); "
                    "remove that folder or choose another --out"
                )
        else:
            write_json({"fingerprint": t.fingerprint, **t.job}, job_file)
        remove_temporaries(set_dir)  # of a killed run


def remove_temporaries(set_dir: str | Path) -> None:
    """Remove the temporary files of writers killed midway (a killed run, a lost Ray worker): never final names.

    Remote writes stage outside the bucket (an object appears only whole), so there is nothing half-written to remove.
    """
    if not storage.is_local(set_dir):
        return
    for folder in (storage.local_path(set_dir), storage.local_path(set_dir) / PARTS_DIR):
        if folder.is_dir():
            for p in folder.iterdir():
                if is_temp_name(p.name):
                    p.unlink(missing_ok=True)


def done_chunks(out: str | Path, relpaths: Iterable[str], indices: Iterable[int]) -> set[int]:
    """Those of ``indices`` whose part file exists in every one of the sets (one listing per set)."""
    done = set(indices)
    for rel in relpaths:
        names = set(storage.listdir(storage.join(out, rel, PARTS_DIR)))
        done = {i for i in done if part_name(i) in names}
    return done


# ---------------------------------------------------------------------------------------------------------------
# write


class ChunkOutput:
    """The write hook of one chunk: its shard (opened on the first sample), rows and failures in each set.

    Use as a context manager and call :meth:`commit` at the end; leaving without a commit (an exception) aborts
    the open shards, so no part is written and a rerun redoes the chunk.
    """

    def __init__(self, out: str | Path, index: int, targets: Iterable[SetTarget]):
        self.out = str(out)
        self.index = index
        self.targets = {t.relpath: t for t in targets}
        self.rows: dict[str, list[dict]] = {rel: [] for rel in self.targets}
        self.failures: dict[str, list[dict]] = {rel: [] for rel in self.targets}
        self._writers: dict[str, ShardWriter] = {}

    def add(self, relpath: str, record: SampleRecord, sample: Sample) -> None:
        """Write one sample into the set's shard and keep its manifest row."""
        if relpath not in self._writers:
            self._writers[relpath] = ShardWriter(storage.join(self.out, relpath, shard_name(self.index)))
        self._writers[relpath].write(sample)
        self.rows[relpath].append(record.row(shard_name(self.index)))

    def fail(self, relpath: str, row: dict[str, str]) -> None:
        """Keep one failure row (see :func:`failure_row`) of the set."""
        self.failures[relpath].append(row)

    def commit(self) -> int:
        """Close the shards (atomic rename), then write each set's part file; return the shard bytes written."""
        written = 0
        for rel, target in self.targets.items():
            shard, members = None, []
            writer = self._writers.pop(rel, None)
            if writer is not None:
                size, digest = writer.close()
                name = shard_name(self.index)
                shard = {"file": name, "samples": len(self.rows[rel]), "bytes": size, "sha256": digest}
                members = part_members(writer.members)
                written += size
            part = {
                "fingerprint": target.fingerprint,
                "shard": shard,
                "samples": self.rows[rel],
                "failures": self.failures[rel],
                "members": members,
            }
            write_json(part, part_path(storage.join(self.out, rel), self.index))
        return written

    def __enter__(self) -> ChunkOutput:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        for writer in self._writers.values():
            writer.abort()
        self._writers.clear()


# ---------------------------------------------------------------------------------------------------------------
# complete


def complete_set(
    out: str | Path, target: SetTarget, indices: Iterable[int], **fields: Any
) -> tuple[ShardSetInfo, list[dict], list[dict]]:
    """The complete hook of one set: its tables from the parts of ``indices`` (chunk order), then ``set.json``.

    ``fields`` are the :class:`~avtta.manifests.ShardSetInfo` fields the job knows (dataset, split, modality, ...);
    the counts (samples, shards, bytes, failures) and ``path`` / ``job`` come from the parts. ``frame_size`` may be
    a callable given the shard rows. Returns (info, shard rows, failure rows).
    """
    set_dir = storage.join(out, target.relpath)
    remove_temporaries(set_dir)  # what the lost attempts of a chunk left (a worker killed while writing)
    samples, shards, failures = write_set_tables(set_dir, (read_part(set_dir, i) for i in indices))
    if callable(fields.get("frame_size")):
        fields["frame_size"] = fields["frame_size"](shards)
    info = ShardSetInfo(
        path=target.relpath,
        samples=len(samples),
        shards=len(shards),
        bytes=sum(s["bytes"] for s in shards),
        failures=len(failures),
        job=target.fingerprint,
        **fields,
    )
    write_json(info.to_json(), storage.join(set_dir, SET_FILE))
    return info, shards, failures


def run_chunks(
    fn: Callable[[Any], Any], tasks: Sequence[Any], cfg: Any, *, desc: str, unit_of: Callable, describe: Callable
) -> list:
    """Run ``fn`` over the chunk tasks with :func:`~.ray_runner.run_tasks`, as the job config says.

    ``cfg`` carries ``workers``, ``ray_address``, ``ray_retries``, ``progress`` and ``verbose`` (``ShardJobConfig``,
    ``ImportConfig``); ``describe`` names a task in the message of a chunk given up after lost workers. A chunk is
    safe to run again (its shards and part files are written atomically, and a part file written is not redone).
    """
    from .ray_runner import FunctionWorker, run_tasks

    return run_tasks(
        tasks,
        make_worker=functools.partial(FunctionWorker, fn),
        workers=cfg.workers,
        address=cfg.ray_address,
        progress=cfg.progress,
        desc=desc,
        unit_of=unit_of,
        verbose=cfg.verbose,
        retries=cfg.ray_retries,
        describe=describe,
    )


# ---------------------------------------------------------------------------------------------------------------
# one core per worker


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """One thread for torch, OpenCV and BLAS while a chunk runs, restored afterwards.

    Float reductions (fbank, SNRs) then give the same bits in every process, serial or on Ray workers, so outputs
    are byte-identical everywhere; and OpenCV's pool does not oversubscribe the cores the workers already use.
    """
    import cv2
    import torch
    from threadpoolctl import threadpool_limits

    threads, cv_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(threads)
        cv2.setNumThreads(cv_threads)
