"""Shard schema, writer and reader: round trip through the plain webdataset library, key checks, determinism."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import webdataset as wds
from avtta.shards import SchemaError, ShardWriter, decode_sample
from avtta.shards.loader import ReaderConfig, load_image
from avtta.shards.reader import ShardStream, collate
from avtta.shards.schema import METADATA_FIELDS, Sample
from avtta.shards.transforms import FBANK_MEAN, FBANK_STD, fill_image
from PIL import Image


def _jpeg(rng: np.random.Generator, size: int = 224) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=75)
    return buf.getvalue()


def image_transform(jpeg: bytes, im_res: int) -> torch.Tensor:
    """The CAV-MAE eval image transform as the readers apply it: decode, resize + crop, ToTensor + Normalize."""
    out = torch.empty((3, im_res, im_res))
    fill_image(out, load_image(jpeg, im_res))
    return out


def make_sample(key: str, seed: int = 0, frames: int = 3) -> Sample:
    rng = np.random.default_rng(seed)
    meta = {f: None for f in METADATA_FIELDS}
    meta.update(key=key, labels=[seed % 5], label_names=["x"], corruption="clean", severity=0, params={}, seed=seed)
    return Sample(
        key=key,
        fbank=rng.normal(-5, 4, (1024, 128)).astype(np.float16),
        frames=[_jpeg(rng) for _ in range(frames)],
        label=seed % 5,
        metadata=meta,
    )


def write_shard(path, samples):
    with ShardWriter(path) as w:
        for s in samples:
            w.write(s)
    return path


def test_roundtrip_plain_webdataset(tmp_path):
    samples = [make_sample(f"clip_{i}", seed=i) for i in range(4)]
    path = write_shard(tmp_path / "shard-000000.tar", samples)
    read = list(wds.WebDataset(str(path), shardshuffle=False, empty_check=False))
    assert [r["__key__"] for r in read] == [s.key for s in samples]
    for raw, orig in zip(read, samples, strict=True):
        back = decode_sample(raw)
        np.testing.assert_array_equal(back.fbank, orig.fbank)
        assert back.fbank.dtype == np.float16 and back.fbank.shape == (1024, 128)
        assert back.frames == orig.frames
        assert back.label == orig.label
        assert back.metadata == orig.metadata
        # the frame decodes to the same pixels with PIL
        a = np.asarray(Image.open(io.BytesIO(raw["frame_1.jpg"])))
        b = np.asarray(Image.open(io.BytesIO(orig.frames[1])))
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("key", ["a.b", "dir/x", "", "sp ace", "ünï"])
def test_bad_keys_rejected_at_write_time(tmp_path, key):
    s = make_sample("ok")
    bad = Sample(key=key, fbank=s.fbank, frames=s.frames, label=0, metadata=s.metadata)
    w = ShardWriter(tmp_path / "s.tar")
    with pytest.raises(SchemaError, match="invalid sample key"):
        w.write(bad)
    w.abort()
    assert not (tmp_path / "s.tar").exists()


def test_duplicate_key_rejected_and_nothing_visible(tmp_path):
    path = tmp_path / "shard-000000.tar"
    with pytest.raises(SchemaError, match="duplicate sample key 'dup'"):
        with ShardWriter(path) as w:
            w.write(make_sample("dup", 1))
            w.write(make_sample("dup", 2))
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []  # the temporary file is gone too


def test_schema_checks(tmp_path):
    s = make_sample("k")
    w = ShardWriter(tmp_path / "s.tar")
    with pytest.raises(SchemaError, match="fbank must be"):
        w.write(Sample("k", np.zeros((10, 64)), s.frames, 0, s.metadata))
    with pytest.raises(SchemaError, match="not JPEG"):
        w.write(Sample("k", s.fbank, [b"PNG"], 0, s.metadata))
    with pytest.raises(SchemaError, match="metadata lacks"):
        w.write(Sample("k", s.fbank, s.frames, 0, {"key": "k"}))
    w.abort()


def test_byte_identical(tmp_path):
    samples = [make_sample(f"c{i}", i) for i in range(3)]
    a = write_shard(tmp_path / "a.tar", samples).read_bytes()
    b = write_shard(tmp_path / "b.tar", samples).read_bytes()
    assert a == b


def test_reader_transforms_and_deterministic_shuffle(tmp_path):
    paths = [
        write_shard(tmp_path / f"shard-{j:06d}.tar", [make_sample(f"c{j}_{i}", 10 * j + i) for i in range(5)])
        for j in range(3)
    ]
    cfg = ReaderConfig(seed=3)
    keys1 = [s["key"] for s in ShardStream(paths, cfg, shuffle_buffer=4).iter_samples()]
    keys2 = [s["key"] for s in ShardStream(paths, cfg, shuffle_buffer=4).iter_samples()]
    keys3 = [s["key"] for s in ShardStream(paths, ReaderConfig(seed=4), shuffle_buffer=4).iter_samples()]
    assert keys1 == keys2 and sorted(keys1) == sorted(keys3) and keys1 != keys3
    assert len(set(keys1)) == 15
    s = collate([next(ShardStream(paths[:1], ReaderConfig(shuffle=False)).iter_samples())])
    orig = make_sample("c0_0", 0)
    expect = (torch.from_numpy(orig.fbank.astype(np.float32)) - FBANK_MEAN) / FBANK_STD
    # the reader's (x - mean) / std in float32 against the same expression here: float32 defaults (11 ulps) suffice
    torch.testing.assert_close(s["audio"][0], expect)
    # frame 5 does not exist with 3 frames -> eval picks the middle one
    torch.testing.assert_close(s["video"][0], image_transform(orig.frames[1], 224))
    assert s["video"].shape == (1, 3, 224, 224) and s["audio"].dtype == torch.float32 and s["label"].tolist() == [0]


def test_image_transform_matches_torchvision():
    from torchvision import transforms as T

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (180, 300, 3), dtype=np.uint8)).save(buf, format="JPEG")
    ref = T.Compose(
        [
            T.Resize(224, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(224),
            T.ToTensor(),
            T.Normalize(mean=[0.4850, 0.4560, 0.4060], std=[0.2290, 0.2240, 0.2250]),
        ]
    )(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    ours = image_transform(buf.getvalue(), 224)
    # |normalised| <= (1 - 0.406) / 0.225 = 2.64, where a float32 ulp is 2.4e-7; torchvision and we round the
    # /255, -mean, /std chain in another order (<= 2 ulps apart): 1e-6 is ~4 ulps of the largest value
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)


def test_join_two_sets_by_key_skips_unpaired(tmp_path):
    video = [write_shard(tmp_path / "v" / "shard-000000.tar", [make_sample(f"k{i}", i) for i in range(4)])]
    audio = [write_shard(tmp_path / "a" / "shard-000000.tar", [make_sample(f"k{i}", 10 + i) for i in (0, 2, 3)])]
    out = list(ShardStream(video, ReaderConfig(shuffle=False), audio_paths=audio).iter_samples())
    assert [s["key"] for s in out] == ["k0", "k2", "k3"]  # k1 failed in the audio set: no pair
    expect = torch.from_numpy(make_sample("k2", 12).fbank)
    torch.testing.assert_close(out[1]["audio"], expect)  # fbank from the audio set (float32 defaults, as above)
    torch.testing.assert_close(out[1]["video"].float(), image_transform_raw(make_sample("k2", 2).frames[1]))


def image_transform_raw(jpeg: bytes) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")).copy()).permute(2, 0, 1).float()


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_batches_do_not_depend_on_worker_count(tmp_path):
    from avtta.shards import BatchLoader

    paths = [
        write_shard(tmp_path / f"shard-{j:06d}.tar", [make_sample(f"c{j}_{i}", 10 * j + i, frames=1) for i in range(4)])
        for j in range(5)
    ]
    orders = []
    for workers in (0, 1, 2, 3):
        loader = BatchLoader(ShardStream(paths, ReaderConfig(seed=11), shuffle_buffer=6), 20, 3, num_workers=workers)
        batches = list(loader)
        assert [len(b["key"]) for b in batches] == [3] * 6 + [2]
        orders.append([k for b in batches for k in b["key"]])
    assert orders[0] == orders[1] == orders[2] == orders[3]
    assert sorted(orders[0]) == sorted(f"c{j}_{i}" for j in range(5) for i in range(4))
