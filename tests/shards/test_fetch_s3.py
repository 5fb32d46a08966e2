"""Reading shard sets from a real S3 server (SeaweedFS on loopback): both access modes, the shard cache, errors.

The synthetic catalog of ``conftest.synthetic_catalog`` is uploaded as it is to a fresh bucket; every batch read
from ``s3://`` must equal the batch read from the folder (keys, labels and tensors, bit for bit).
"""

from __future__ import annotations

import os
import shutil

import pyarrow.parquet as pq
import pytest
from avtta.manifests import open_dataset
from avtta.shards import storage
from avtta.shards.fetch import FetchConfig, RangeFetcher, coalesce

from .test_reader_pin import digest

CLEAN = "toy/test/clean"


def _upload(folder, url: str) -> str:
    fs, path = storage.resolve(url)
    fs.put(str(folder) + "/", path + "/", recursive=True)
    return url


@pytest.fixture(scope="module")
def bucket(s3_server) -> str:
    """One bucket for this module (each bucket is a SeaweedFS collection with volumes of its own); tests use
    prefixes of their own in it."""
    return f"s3://{s3_server.bucket('s3read')}"


@pytest.fixture
def s3_prefix(bucket, s3_server, monkeypatch, request) -> str:
    """A fresh prefix of the module's bucket, with the server's endpoint and credentials in the environment."""
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    return f"{bucket}/{request.node.name.replace('[', '-').rstrip(']')}"


@pytest.fixture
def s3_catalog(synthetic_catalog, s3_prefix) -> str:
    return _upload(synthetic_catalog, f"{s3_prefix}/cat")


def _shards(folder) -> dict[str, str]:
    """shard file -> sha256 of the clean set (from its shards.parquet)."""
    table = pq.read_table(folder / CLEAN / "shards.parquet").to_pydict()
    return dict(zip(table["file"], table["sha256"], strict=True))


def test_coalesce_merges_only_near_ranges_of_one_shard():
    reqs = [("b", 0, 10), ("a", 600, 10), ("a", 0, 100), ("a", 100, 50), ("a", 160, 5)]
    assert coalesce(reqs, max_gap=0) == [("a", 0, 150, [2, 3]), ("a", 160, 165, [4]), ("a", 600, 610, [1]),
                                         ("b", 0, 10, [0])]  # fmt: skip
    assert coalesce(reqs, max_gap=10) == [("a", 0, 165, [2, 3, 4]), ("a", 600, 610, [1]), ("b", 0, 10, [0])]


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize("access", ["index", "stream"])
@pytest.mark.parametrize("workers", [0, 2])
def test_s3_batches_equal_local(synthetic_catalog, s3_catalog, access, workers):
    kw = dict(batch_size=4, seed=7, num_workers=workers, access=access, with_metadata=True)
    if access == "stream":
        kw["shuffle_buffer"] = 6
    for corruption in ("clean", ("video:fog@5", "audio:rain@5")):
        local = digest(open_dataset(synthetic_catalog, "toy", "test", corruption, **kw))
        assert digest(open_dataset(s3_catalog, "toy", "test", corruption, **kw)) == local


def test_index_mode_fetches_fbank_and_frame_in_one_get(s3_catalog):
    """Frame 0 follows the fbank in the tar (one 512-byte header between): one GET per sample (batches of one)."""
    loader = open_dataset(s3_catalog, "toy", "test", batch_size=1, frame=0, shuffle=False, num_workers=0)
    n = sum(len(b["key"]) for b in loader)
    assert (n, loader.dataset._reader.requests) == (10, 10)


def test_range_fetcher_coalesces_within_max_gap(synthetic_catalog, s3_catalog):
    """The fbank and frame 5 of a sample (five frames apart) are one GET by default, two with ``max_gap=0``."""
    members = pq.read_table(synthetic_catalog / CLEAN / "members.parquet").to_pylist()
    rows = {(m["key"], m["field"]): m for m in members if m["key"] == "k01"}
    url = f"{s3_catalog}/{CLEAN}/{rows['k01', 'fbank.npy']['shard']}"
    wanted = [(url, rows["k01", f]["offset"], rows["k01", f]["size"]) for f in ("fbank.npy", "frame_5.jpg")]
    with open(synthetic_catalog / CLEAN / rows["k01", "fbank.npy"]["shard"], "rb") as fh:
        expected = []
        for _, offset, size in wanted:
            fh.seek(offset)
            expected.append(fh.read(size))
    for gap, gets in ((FetchConfig().max_gap, 1), (0, 2)):
        fetcher = RangeFetcher(FetchConfig(max_gap=gap))
        assert [bytes(v) for v in fetcher.fetch(wanted)] == expected and fetcher.requests == gets


def test_cache_dir_reuses_shards_by_sha256(synthetic_catalog, s3_catalog, tmp_path):
    cache = tmp_path / "cache"
    local = digest(open_dataset(synthetic_catalog, "toy", "test", batch_size=4, seed=7, num_workers=0))
    first = open_dataset(s3_catalog, "toy", "test", batch_size=4, seed=7, num_workers=0, cache_dir=cache)
    assert digest(first) == local
    assert first.dataset._reader.requests == 0  # whole shards were downloaded instead of ranged GETs
    shas = _shards(synthetic_catalog)
    assert sorted(p.name for p in cache.rglob("*.tar")) == sorted(f"{s}.tar" for s in shas.values())
    # the shards are gone from the bucket: a second run (another seed too) reads the cache only
    fs, path = storage.resolve(s3_catalog)
    for name in shas:
        fs.rm_file(f"{path}/{CLEAN}/{name}")
    again = open_dataset(s3_catalog, "toy", "test", batch_size=4, seed=7, num_workers=0, cache_dir=cache)
    assert digest(again) == local and again.dataset._reader.requests == 0
    stream = open_dataset(s3_catalog, "toy", "test", batch_size=4, seed=7, num_workers=2, cache_dir=cache,
                          access="stream", shuffle_buffer=6)  # fmt: skip
    assert len([k for b in stream for k in b["key"]]) == 10
    # a cache file of the wrong size (a damaged copy) is fetched again: the object is missing now, so that fails
    victim = next(cache.rglob("*.tar"))
    victim.write_bytes(victim.read_bytes()[:-1])
    with pytest.raises(FileNotFoundError, match=r"s3://.*/toy/test/clean/shard-00000\d\.tar"):
        digest(open_dataset(s3_catalog, "toy", "test", batch_size=4, seed=7, num_workers=0, cache_dir=cache))


def test_cache_refuses_a_shard_that_does_not_match_its_sha256(synthetic_catalog, s3_prefix, tmp_path):
    """A shard replaced after its set was written (same size, other bytes) is never cached or read as the set."""
    copy = tmp_path / "cat"
    shutil.copytree(synthetic_catalog, copy)
    shard = copy / CLEAN / "shard-000001.tar"
    data = bytearray(shard.read_bytes())
    data[-2000] ^= 0xFF  # inside the tar's zero padding at the end: the samples still read the same
    shard.write_bytes(bytes(data))
    url = _upload(copy, f"{s3_prefix}/cat")
    with pytest.raises(ValueError, match=r"shard-000001\.tar does not match its shards\.parquet"):
        digest(open_dataset(url, "toy", "test", batch_size=4, num_workers=0, cache_dir=tmp_path / "cache"))
    kept = {p.name for p in (tmp_path / "cache").rglob("*") if p.is_file() and not p.name.endswith(".lock")}
    assert kept <= {f"{sha}.tar" for name, sha in _shards(copy).items() if name != shard.name}  # no temporaries


def test_missing_object_and_bucket_name_the_url(s3_catalog):
    fs, path = storage.resolve(s3_catalog)
    fs.rm_file(f"{path}/{CLEAN}/shard-000002.tar")
    for access in ("index", "stream"):
        loader = open_dataset(s3_catalog, "toy", "test", batch_size=4, num_workers=0, access=access)
        with pytest.raises(FileNotFoundError, match=f"{s3_catalog}/{CLEAN}/shard-000002.tar"):
            digest(loader)
    missing = "s3://avtta-no-such-bucket/cat"
    with pytest.raises(OSError, match=missing) as err:
        open_dataset(missing, "toy", "test")
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in str(err.value)


@pytest.mark.slow
def test_ray_data_reads_our_shards(synthetic_catalog, s3_catalog, ray_local):
    """``ray.data.read_webdataset`` reads our shards from a folder and from ``s3://`` (the README's snippet)."""
    import pyarrow.fs as pafs
    import ray.data

    ours = sorted(k for b in open_dataset(synthetic_catalog, "toy", "test", batch_size=4, num_workers=0)
                  for k in b["key"])  # fmt: skip
    folder = ray.data.read_webdataset(str(synthetic_catalog / CLEAN), decoder=None, file_extensions=["tar"])
    rows = folder.take_all()
    assert sorted(r["__key__"] for r in rows) == ours
    assert {"cls", "fbank.npy", "frame_0.jpg", "json"} <= set(rows[0])
    # keys given to the filesystem (Ray's workers may have been started before this test set the environment)
    fs = pafs.S3FileSystem(access_key=os.environ["AWS_ACCESS_KEY_ID"], secret_key=os.environ["AWS_SECRET_ACCESS_KEY"],
                           endpoint_override=os.environ["AVTTA_S3_ENDPOINT"])  # fmt: skip
    remote = ray.data.read_webdataset(f"{s3_catalog}/{CLEAN}", filesystem=fs, decoder=None, file_extensions=["tar"])
    assert sorted(r["__key__"] for r in remote.take_all()) == ours
