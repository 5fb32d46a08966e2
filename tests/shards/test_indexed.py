"""Random-access reader: member index, identical tensors to the streaming reader, order, buffers, errors."""

from __future__ import annotations

import copy
import io
import shutil
import tarfile

import numpy as np
import pytest
import torch
from avtta.manifests import MEMBERS_FILE, Catalog, open_dataset
from avtta.pipelines.shard_job import ShardJobConfig, run_shard_job
from avtta.shards import ShardWriter
from avtta.shards.index import MemberReader, scan_members
from avtta.shards.indexed import OutputBuffers, npy_view
from avtta.shards.loader import decode_rgb
from avtta.shards.schema import METADATA_FIELDS, Sample
from PIL import Image, ImageFile

SETS = ("none", "video:fog@5", "audio:gaussian_noise@5")


@pytest.fixture(scope="module")
def catalog(small_videos, tmp_path_factory):
    """Six real clips, 4 frames each, three sets of three 2-clip shards."""
    out = tmp_path_factory.mktemp("indexed")
    run_shard_job(
        ShardJobConfig(
            videos=str(small_videos), out=str(out), dataset="toy", corrupt=SETS, frames=4, shard_size=2, workers=0,
            progress=False, seed=3,
        )
    )  # fmt: skip
    return out


def make_sample(key: str, seed: int, frames: int) -> Sample:
    rng = np.random.default_rng(seed)
    jpegs = []
    for _ in range(frames):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, format="JPEG")
        jpegs.append(buf.getvalue())
    meta = dict.fromkeys(METADATA_FIELDS)
    meta["key"] = key
    return Sample(key, rng.normal(-5, 4, (1024, 128)).astype(np.float16), jpegs, seed % 3, meta)


def load(catalog, selection="clean", **kw):
    kw.setdefault("batch_size", 4)
    kw.setdefault("num_workers", 0)
    return open_dataset(catalog, "toy", "test", selection, **kw)


def by_key(batches):
    out = {}
    for b in batches:
        for j, key in enumerate(b["key"]):
            out[key] = (b["audio"][j], b["video"][j], int(b["label"][j]))
    return out


def test_writer_index_is_the_tar_layout(tmp_path):
    path = tmp_path / "shard-000000.tar"
    samples = [make_sample(f"k{i}", i, frames=3) for i in range(3)]
    with ShardWriter(path) as w:
        for s in samples:
            w.write(s)
    assert w.members == scan_members(path)
    assert len(w.members) == 3 * 6  # cls, fbank, 3 frames, json
    reader = MemberReader()
    with tarfile.open(path) as tf:
        for m in w.members:
            assert reader.read(str(path), m.offset, m.size) == tf.extractfile(f"{m.key}.{m.field}").read()
    np.testing.assert_array_equal(npy_view(reader.read(str(path), *w.members[1][2:])), samples[0].fbank)
    reader.close()


def test_manifest_has_the_member_index(catalog):
    cat = Catalog(catalog)
    for info in cat.sets:
        table = cat.members(info).to_pylist()
        scanned = [
            {"shard": p.name, "key": m.key, "field": m.field, "offset": m.offset, "size": m.size}
            for p in cat.shard_paths(info)
            for m in scan_members(p)
        ]
        assert table == scanned and len(table) == 6 * 7  # 6 clips x (cls, fbank, 4 frames, json)


@pytest.mark.parametrize("selection", ["clean", "video:fog@5", "audio:gaussian_noise@5"])
def test_same_tensors_as_the_streaming_reader(catalog, selection):
    indexed = by_key(load(catalog, selection))
    streamed = by_key(load(catalog, selection, access="stream"))
    assert sorted(indexed) == sorted(streamed) == [f"vid{i:02d}" for i in range(6)]
    for key, (a, v, label) in indexed.items():
        sa, sv, slabel = streamed[key]
        assert torch.equal(a, sa) and torch.equal(v, sv) and label == slabel
        assert a.dtype == v.dtype == torch.float32 and a.shape == (1024, 128) and v.shape == (3, 224, 224)


def test_joined_sets_and_fixed_frame(catalog):
    both = by_key(load(catalog, ("video:fog@5", "audio:gaussian_noise@5"), frame=1))
    vid = by_key(load(catalog, "video:fog@5", frame=1))
    aud = by_key(load(catalog, "audio:gaussian_noise@5"))
    streamed = by_key(load(catalog, ("video:fog@5", "audio:gaussian_noise@5"), frame=1, access="stream"))
    assert sorted(both) == sorted(vid)
    for key, (a, v, _) in both.items():
        assert torch.equal(a, aud[key][0]) and torch.equal(v, vid[key][1])
        assert torch.equal(a, streamed[key][0]) and torch.equal(v, streamed[key][1])
    assert not torch.equal(vid["vid00"][1], by_key(load(catalog, "video:fog@5"))["vid00"][1])  # frame 1 != eval
    with pytest.raises(ValueError, match="frame index 4 out of range"):
        load(catalog, frame=4)


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_order_is_seeded_and_independent_of_workers(catalog):
    def keys(**kw):
        return [b["key"] for b in load(catalog, batch_size=4, **kw)]

    runs = [keys(seed=5, num_workers=w) for w in (0, 1, 2, 3)]
    assert runs[0] == runs[1] == runs[2] == runs[3]
    assert [len(k) for k in runs[0]] == [4, 2]
    flat = [k for b in runs[0] for k in b]
    assert sorted(flat) == [f"vid{i:02d}" for i in range(6)]
    orders = {tuple(k for b in keys(seed=s) for k in b) for s in range(6)}
    assert len(orders) > 1  # the seed matters
    manifest = Catalog(catalog).samples(Catalog(catalog).get("toy", "test")).column("key").to_pylist()
    assert [k for b in keys(shuffle=False) for k in b] == manifest
    assert [len(b) for b in keys(drop_last=True)] == [4]


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_training_randomness_is_per_sample_and_per_epoch(catalog):
    def tensors(workers, epoch):
        loader = load(catalog, frame="random", freqm=24, timem=96, num_workers=workers, batch_size=3)
        loader.set_epoch(epoch)
        return by_key(loader)

    e0, e0_workers, e1 = tensors(0, 0), tensors(2, 0), tensors(0, 1)
    for key in e0:
        assert torch.equal(e0[key][0], e0_workers[key][0]) and torch.equal(e0[key][1], e0_workers[key][1])
    assert any(not torch.equal(e0[k][0], e1[k][0]) for k in e0)  # other masks in another epoch
    pad = torch.tensor(0.0).sub_(-5.081).div_(4.4849)  # a masked (zeroed) value after normalisation
    assert all((e0[k][0] == pad).any() for k in e0)


def test_batches_kept_by_the_caller_are_never_overwritten(catalog):
    loader = load(catalog, batch_size=2, shuffle=False)
    kept = list(loader)  # every batch alive at once: no buffer may be recycled under them
    fresh = by_key([loader.dataset.batch([i]) for i in range(6)])
    assert by_key(kept).keys() == fresh.keys()
    for key, (a, v, _) in by_key(kept).items():
        assert torch.equal(a, fresh[key][0]) and torch.equal(v, fresh[key][1])
    ptrs = {b["audio"].untyped_storage().data_ptr() for b in kept}
    assert len(ptrs) == 3


def test_output_buffers_are_recycled_only_when_unreferenced():
    pool = OutputBuffers()
    a = pool.get("x", (4, 8))
    ptr = a.data_ptr()
    assert pool.get("x", (4, 8)).data_ptr() != ptr  # `a` is alive
    view = a[1:]
    del a
    assert pool.get("x", (4, 8)).data_ptr() != ptr  # a view keeps it
    del view
    assert pool.get("x", (4, 8)).data_ptr() == ptr
    short = pool.get("x", (3, 8))
    assert short.shape == (3, 8) and short.data_ptr() == ptr  # a short last batch uses the front of a free buffer


def test_set_without_member_index_is_scanned(catalog, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(catalog, copy)
    info = Catalog(copy).get("toy", "test")
    (copy / info.path / MEMBERS_FILE).unlink()
    assert by_key(load(copy, shuffle=False)).keys() == by_key(load(catalog, shuffle=False)).keys()
    a, b = by_key(load(copy)), by_key(load(catalog))
    assert all(torch.equal(a[k][0], b[k][0]) and torch.equal(a[k][1], b[k][1]) for k in a)


def test_truncated_shard_names_the_file(catalog, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(catalog, copy)
    cat = Catalog(copy)
    shard = cat.shard_paths(cat.get("toy", "test"))[-1]
    shard.write_bytes(shard.read_bytes()[:4096])
    with pytest.raises(ValueError, match=f"shard {shard} is shorter than its index says"):
        list(load(copy, shuffle=False))


def test_bad_access_mode(catalog):
    with pytest.raises(ValueError, match="access must be 'index' or 'stream', got 'mmap'"):
        load(catalog, access="mmap")


def _jpeg_variants():
    ImageFile.MAXBLOCK = 1 << 24  # progressive JPEGs into BytesIO
    rng = np.random.default_rng(0)
    for quality in (50, 75, 95):
        for subsampling in (0, 1, 2):
            for progressive in (False, True):
                for size in ((224, 224), (97, 61)):
                    base = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
                    noise = rng.integers(-20, 21, (size[1], size[0], 3))
                    img = Image.fromarray(np.clip(np.asarray(base).astype(int) + noise, 0, 255).astype(np.uint8))
                    buf = io.BytesIO()
                    img.save(buf, "JPEG", quality=quality, subsampling=subsampling, progressive=progressive)
                    yield buf.getvalue()


def test_decode_rgb_equals_pil(fixtures_dir):
    """torchvision's JPEG decoder and PIL's (different libjpeg-turbo builds) give the same pixels."""
    jpegs = [p.read_bytes() for p in sorted((fixtures_dir / "audioset_clip" / "eval_frames").rglob("*.jpg"))]
    assert len(jpegs) == 10
    for data in [*jpegs, *_jpeg_variants()]:
        pil = torch.from_numpy(np.array(Image.open(io.BytesIO(data)).convert("RGB"))).permute(2, 0, 1)
        assert torch.equal(decode_rgb(data), pil)
    gray = io.BytesIO()
    Image.fromarray(np.arange(600, dtype=np.uint8).reshape(20, 30)).save(gray, "JPEG")
    pil = torch.from_numpy(np.array(Image.open(gray).convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(decode_rgb(gray.getvalue()), pil)
    png = io.BytesIO()
    Image.fromarray(np.zeros((5, 7, 3), np.uint8)).save(png, "PNG")
    assert decode_rgb(png.getvalue()).shape == (3, 5, 7)  # not a JPEG: PIL decodes it


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_frame_ring_and_its_fallback(catalog):
    from avtta.shards.indexed import FrameRing, _identity
    from torch.utils.data import DataLoader

    ring = FrameRing(workers=2, slots=2, shape=(2, 3, 8, 8))
    assert [ring.acquire(1), ring.acquire(1), ring.acquire(1)] == [0, 1, None]  # full: the caller falls back
    ring.release(1, 0)
    assert ring.acquire(1) == 0 and ring.acquire(0) == 0
    # workers whose ring slots are all taken hand over fresh shared tensors instead: same batches
    loader = load(catalog, batch_size=2, shuffle=False)
    expected = by_key(loader)
    dataset = copy.copy(loader.dataset)
    dataset._ring = FrameRing(2, 1, (2, 3, 224, 224))
    for w in range(2):
        assert dataset._ring.acquire(w) == 0
    parts = list(DataLoader(dataset, batch_sampler=loader.batches(), num_workers=2, collate_fn=_identity))
    assert all("video" in p and "ring" not in p for p in parts)
    got = by_key([dataset.finish(p) for p in parts])
    assert all(torch.equal(got[k][0], expected[k][0]) and torch.equal(got[k][1], expected[k][1]) for k in expected)
    # with free slots the frames travel through the ring (nothing but indices is sent)
    dataset._ring = FrameRing(2, 4, (2, 3, 224, 224))
    parts = list(DataLoader(dataset, batch_sampler=loader.batches(), num_workers=2, collate_fn=_identity))
    assert all("ring" in p and "video" not in p for p in parts)
    got = by_key([dataset.finish(p) for p in parts])
    assert all(torch.equal(got[k][1], expected[k][1]) for k in expected)


def test_parts_without_member_index_are_scanned(tmp_path):
    """Chunk parts written before the member index existed (a resumed older job) still give members.parquet."""
    import pyarrow.parquet as pq
    from avtta.manifests import write_set_tables

    with ShardWriter(tmp_path / "shard-000000.tar") as w:
        for i in range(2):
            w.write(make_sample(f"k{i}", i, frames=2))
    shard = {"file": "shard-000000.tar", "samples": 2, "bytes": 0, "sha256": ""}
    rows = [{"key": f"k{i}", "label": i, "shard": "shard-000000.tar"} for i in range(2)]
    with_index = {"shard": shard, "samples": rows, "failures": [], "members": [list(m) for m in w.members]}
    old = {"shard": shard, "samples": rows, "failures": [], "members": None}
    del old["members"]
    write_set_tables(tmp_path, [with_index])
    expected = pq.read_table(tmp_path / MEMBERS_FILE).to_pylist()
    write_set_tables(tmp_path, [old, {"shard": None, "samples": [], "failures": []}])
    assert pq.read_table(tmp_path / MEMBERS_FILE).to_pylist() == expected
    assert [(r["key"], r["field"]) for r in expected] == [(f"k{i}", f) for i in range(2) for f in (
        "cls", "fbank.npy", "frame_0.jpg", "frame_1.jpg", "json")]  # fmt: skip


@pytest.mark.parametrize("field", ["fbank.npy", "frame_2.jpg"])
def test_damaged_member_names_the_sample_and_shard(catalog, tmp_path, field):
    copy_root = tmp_path / "copy"
    shutil.copytree(catalog, copy_root)
    cat = Catalog(copy_root)
    info = cat.get("toy", "test")
    row = next(r for r in cat.members(info).to_pylist() if r["field"] == field)
    shard = copy_root / info.path / row["shard"]
    data = bytearray(shard.read_bytes())
    data[row["offset"] : row["offset"] + 16] = b"\0" * 16  # same size, the header is gone
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"sample '{row['key']}' in {shard}"):
        list(load(copy_root, shuffle=False))
