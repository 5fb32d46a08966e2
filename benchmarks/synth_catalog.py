"""Synthetic shard catalogs for the benchmarks, built without PyAV or Ray.

* :func:`write_demo_set`: one shard set of demo-like clips (``avtta.pipelines.demo_data.render_clip``: a hue and a
  sound pattern per class), frames resized to 224 px and stored as JPEG, fbanks computed by avtta's own
  ``compute_fbank``: the same sample layout as ``avtta shard`` writes, with no video file decoded.
* :func:`alias_set`: a set of ``copies`` x as many samples that stores no new bytes: every copy of a sample gets a
  new key (``<key>_r<copy>``) whose manifest and member rows point at the original's bytes. The index reader (the
  default ``access="index"``) reads it like any set; the streaming reader (which walks the tars) would see only the
  originals, so aliased sets are for index access only. 24,000 samples cost a few megabytes of Parquet.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import multiprocessing
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

DATASET = "bench"


def _resize_frames(frames: np.ndarray, size: int) -> list[np.ndarray]:
    from PIL import Image

    return [np.asarray(Image.fromarray(f).resize((size, size), Image.BICUBIC)) for f in frames]


def _render(job: tuple) -> tuple[list[bytes], np.ndarray]:
    """One demo clip -> (JPEGs of its ``frames`` frames at ``frame_size`` px, unnormalised fbank)."""
    from avtta.pipelines.demo_data import render_clip
    from avtta.pipelines.features import compute_fbank
    from avtta.pipelines.shard_job import encode_jpeg
    from avtta.shards.schema import JPEG_QUALITY_CLEAN

    cfg, split, index, label, frames, frame_size = job
    video, wave, _ = render_clip(cfg, split, index, label)
    picked = video[np.linspace(0, len(video) - 1, frames).round().astype(int)]  # evenly spaced, as the decoder
    jpegs = [encode_jpeg(f, JPEG_QUALITY_CLEAN) for f in _resize_frames(picked, frame_size)]
    return jpegs, compute_fbank(np.asarray(wave, np.float32).reshape(-1), cfg.audio_rate)


@contextlib.contextmanager
def _pool(workers: int | None) -> Iterator[cf.ProcessPoolExecutor | None]:
    if not workers or workers <= 1:
        yield None
        return
    # spawn, not fork: the caller may already hold a CUDA context
    with cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool


def write_demo_set(
    root: str | Path,
    split: str,
    clips: int,
    *,
    num_classes: int = 10,
    frames: int = 10,
    frame_size: int = 224,
    shard_size: int = 64,
    seed: int = 0,
    workers: int | None = None,
) -> Path:
    """Write ``clips`` demo clips of ``split`` as the clean shard set ``bench/<split>/clean``; returns the root.

    Clips are rendered in ``workers`` processes (None or 1: in this one); the shards are written here in order.
    """
    from avtta.manifests import ShardSetInfo, set_relpath, write_catalog, write_classes, write_json, write_set_tables
    from avtta.manifests.tables import part_members
    from avtta.pipelines.demo_data import DemoConfig, class_table
    from avtta.shards.schema import SampleRecord
    from avtta.shards.writer import ShardWriter

    root = Path(root)
    cfg = DemoConfig(num_classes=num_classes, train=clips, test=clips, seed=seed)
    classes = class_table(num_classes)
    rel = set_relpath(DATASET, split, "clean", "clean", 0)
    set_dir = root / rel
    set_dir.mkdir(parents=True, exist_ok=True)
    write_classes(root / DATASET / "classes.csv", classes)
    parts = []
    jobs = [(cfg, split, i, i % num_classes, frames, frame_size) for i in range(clips)]
    with _pool(workers) as pool:
        made = iter(pool.map(_render, jobs, chunksize=4) if pool else map(_render, jobs))
        for start in range(0, clips, shard_size):
            name = f"shard-{start // shard_size:06d}.tar"
            writer = ShardWriter(set_dir / name)
            rows = []
            for index in range(start, min(clips, start + shard_size)):
                label = index % num_classes
                jpegs, fbank = next(made)
                key = f"{split}{index:06d}"
                record = SampleRecord(
                    key=key,
                    video_id=key,
                    source=f"demo/{split}/{index}",
                    labels=(label,),
                    label_names=(classes[label][0],),
                    corruption="clean",
                    severity=0,
                    params={},
                    seed=seed,
                    fps=cfg.fps,
                    duration=cfg.seconds,
                    sample_rate=cfg.audio_rate,
                    num_frames=len(jpegs),
                )
                writer.write(record.sample(fbank, jpegs))
                rows.append(record.row(name))
            size, digest = writer.close()
            shard = {"file": name, "samples": len(rows), "bytes": size, "sha256": digest}
            parts.append({"shard": shard, "samples": rows, "failures": [], "members": part_members(writer.members)})
    samples, shards, _ = write_set_tables(set_dir, parts)
    info = ShardSetInfo(
        dataset=DATASET,
        split=split,
        modality="clean",
        corruption="clean",
        severity=0,
        path=rel,
        samples=len(samples),
        shards=len(shards),
        bytes=sum(s["bytes"] for s in shards),
        num_classes=num_classes,
        num_frames=frames,
        frame_size=frame_size,
        seed=seed,
        source="benchmarks/synth_catalog.py",
        job=f"demo-{split}-{clips}-{seed}",
    )
    write_json(info.to_json(), set_dir / "set.json")
    write_catalog(root)
    return root


def alias_set(
    src_root: str | Path, dst_root: str | Path, split: str, samples: int, dst_split: str | None = None
) -> Path:
    """Write ``bench/<dst_split>/clean`` under ``dst_root`` with ``samples`` samples aliasing ``src_root``'s set.

    The copies point at the source set's shard files by absolute path through symlinks in the new set's folder
    (one per shard), so the new set is self-contained for the reader and shares the bytes.
    """
    import pyarrow as pa
    from avtta.manifests import ShardSetInfo, set_relpath, write_catalog, write_json, write_table

    src_root, dst_root = Path(src_root).resolve(), Path(dst_root)
    dst_split = dst_split or split
    rel = set_relpath(DATASET, split, "clean", "clean", 0)
    src = src_root / rel
    info = json.loads((src / "set.json").read_text())
    base = pq.read_table(src / "samples.parquet")
    members = pq.read_table(src / "members.parquet")
    n = base.num_rows
    copies = -(-samples // n)
    dst = dst_root / set_relpath(DATASET, dst_split, "clean", "clean", 0)
    dst.mkdir(parents=True, exist_ok=True)
    (dst_root / DATASET).mkdir(parents=True, exist_ok=True)
    classes = dst_root / DATASET / "classes.csv"
    if not classes.exists():
        classes.write_bytes((src_root / DATASET / "classes.csv").read_bytes())
    for shard in pq.read_table(src / "shards.parquet").column("file").to_pylist():
        link = dst / shard
        if not link.exists():
            link.symlink_to(src / shard)
    sample_tables, member_tables = [], []
    for r in range(copies):
        take = min(n, samples - r * n)
        part = base.slice(0, take)
        keys = pa.array([f"{k}_r{r}" for k in part.column("key").to_pylist()])
        part = part.set_column(part.schema.get_field_index("key"), "key", keys)
        part = part.set_column(part.schema.get_field_index("video_id"), "video_id", keys)
        sample_tables.append(part)
        wanted = set(base.column("key").to_pylist()[:take])
        m = members.filter(pa.array([k in wanted for k in members.column("key").to_pylist()]))
        mkeys = pa.array([f"{k}_r{r}" for k in m.column("key").to_pylist()])
        member_tables.append(m.set_column(m.schema.get_field_index("key"), "key", mkeys))
    write_table(pa.concat_tables(sample_tables), dst / "samples.parquet")
    write_table(pa.concat_tables(member_tables), dst / "members.parquet")
    for name in ("shards.parquet", "failures.parquet"):
        write_table(pq.read_table(src / name), dst / name)
    info.update(split=dst_split, path=str(dst.relative_to(dst_root)), samples=samples, job=f"{info['job']}-x{samples}")
    write_json(ShardSetInfo.from_json(info).to_json(), dst / "set.json")
    write_catalog(dst_root)
    return dst_root


def tiny_checkpoint(path: str | Path, num_classes: int, model: str = "cav_mae_ft_tiny", **arch) -> Path:
    """A randomly initialised ``model`` saved as one of our checkpoints (what ``--checkpoint`` takes)."""
    from avtta.models import create_model, save_checkpoint

    path = Path(path)
    if not path.exists():
        save_checkpoint(create_model(model, num_classes=num_classes, **arch), path)
    return path
