"""The storage layer against local paths and a real S3 server (SeaweedFS on loopback)."""

from __future__ import annotations

import time

import pytest
from avtta.shards import storage


def test_local_round_trip(tmp_path):
    url = str(tmp_path / "a" / "b.txt")
    storage.atomic_write(url, "x\ny\n")
    assert storage.read_text(url) == "x\ny\n"
    assert storage.read_text("file://" + url) == "x\ny\n"
    assert storage.listdir(tmp_path / "a") == ["b.txt"]
    assert storage.find(tmp_path, "b.txt") == [url]
    assert storage.read_ranges(url, [(0, 1), (2, 3)]) == [b"x", b"y"]
    assert storage.is_local(url) and storage.is_local("file:///x") and not storage.is_local("s3://b/x")
    assert [p.name for p in tmp_path.rglob("*")] == ["a", "b.txt"]  # no temporary left


def test_s3_round_trip(s3_bucket, tmp_path):
    url = storage.join(s3_bucket, "run", "a", "b.txt")
    assert url == f"{s3_bucket}/run/a/b.txt"
    assert not storage.exists(url)
    storage.atomic_write(url, "hello\n")
    assert storage.exists(url) and storage.isdir(storage.join(s3_bucket, "run"))
    assert storage.read_text(url) == "hello\n"
    assert storage.listdir(storage.join(s3_bucket, "run")) == ["a"]
    assert storage.find(s3_bucket, "b.txt") == [url]
    assert storage.read_ranges(url, [(1, 3), (3, 5), (0, 1)]) == [b"el", b"lo", b"h"]
    before = storage.state(s3_bucket)
    storage.atomic_write(url, b"hello again\n")
    assert storage.state(s3_bucket) != before  # a rewrite changes the version tag
    src = tmp_path / "big.bin"
    src.write_bytes(bytes(range(256)) * 100)
    with storage.staged_path(storage.join(s3_bucket, "big.bin")) as tmp:
        tmp.write_bytes(src.read_bytes())
        assert not storage.exists(storage.join(s3_bucket, "big.bin"))  # invisible until the block ends
    with storage.local_copy(storage.join(s3_bucket, "big.bin")) as local:
        assert local.read_bytes() == src.read_bytes()
    assert not local.exists()
    with pytest.raises(RuntimeError), storage.staged_path(storage.join(s3_bucket, "failed.bin")) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer died")
    assert not storage.exists(storage.join(s3_bucket, "failed.bin"))
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        storage.read_bytes(storage.join(s3_bucket, "missing.txt"))


def test_s3_errors_name_the_url_and_hide_the_secret(s3_server, s3_bucket, monkeypatch):
    url = storage.join(s3_bucket, "x.txt")
    with pytest.raises(storage.StorageError, match="no such bucket") as err:
        storage.atomic_write("s3://avtta-no-such-bucket/x.txt", b"1")
    assert "s3://avtta-no-such-bucket/x.txt" in str(err.value)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-" + s3_server.SECRET_KEY)
    with pytest.raises(storage.StorageError, match="access denied") as err:
        storage.atomic_write(url, b"1")
    assert url in str(err.value) and s3_server.SECRET_KEY not in str(err.value)
    monkeypatch.setenv("AVTTA_S3_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    t0 = time.monotonic()
    with pytest.raises(storage.StorageError, match="cannot reach") as err:
        storage.read_bytes(url)
    assert time.monotonic() - t0 < 60  # bounded retries, no hang
    assert url in str(err.value) and "127.0.0.1:9" in str(err.value)
