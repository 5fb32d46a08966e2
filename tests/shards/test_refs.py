"""The index mode's columnar sample index (SampleRefs.build over Arrow tables, Keys): ranges, joins, errors, size."""

from __future__ import annotations

import pickle

import numpy as np
import pyarrow as pa
import pytest
from avtta.shards.indexed import Keys, SampleRefs


def members(rows: list[tuple[str, str, str, int, int]]) -> pa.Table:
    shard, key, field, offset, size = (list(c) for c in zip(*rows, strict=True))
    return pa.table({"shard": shard, "key": key, "field": field, "offset": offset, "size": size})


def samples(rows: list[tuple[str, str, int]]) -> pa.Table:
    shard, key, label = (list(c) for c in zip(*rows, strict=True))
    return pa.table({"shard": pa.array(shard).dictionary_encode(), "key": key, "label": label})


def sample_members(shard: str, key: str, base: int, frames: int = 3, extra: tuple[str, ...] = ("json",)) -> list:
    """Rows of one sample whose member ``j`` lies at ``base + 100 * j`` with size ``10 + j``."""
    fields = ["fbank.npy", *extra, *(f"frame_{k}.jpg" for k in range(frames))]
    return [(shard, key, f, base + 100 * j, 10 + j) for j, f in enumerate(fields)]


def test_ranges_of_every_member():
    rows = sample_members("/s/a.tar", "x", 0, 3) + sample_members("/s/b.tar", "y", 5000, 2, ("json", "wav.flac"))
    rows.reverse()  # row order in the index does not matter
    rows.append(("/s/a.tar", "other", "fbank.npy", 1, 1))  # members of clips not in the manifest are ignored
    refs = SampleRefs.build(samples([("/s/b.tar", "y", 4), ("/s/a.tar", "x", 2)]), members(rows))
    assert len(refs) == 2 and list(refs.keys) == ["y", "x"] and refs.labels.tolist() == [4, 2]
    assert [refs.paths[s] for s in refs.video_shard] == ["/s/b.tar", "/s/a.tar"]
    assert refs.audio_shard.tolist() == refs.video_shard.tolist()
    assert refs.fbank.tolist() == [[5000, 10], [0, 10]]
    assert refs.meta.tolist() == [[5100, 11], [100, 11]]
    assert refs.wave.tolist() == [[5200, 12], [0, -1]]  # x has no waveform
    assert refs.num_frames.tolist() == [2, 3]
    assert refs.frames[0].tolist() == [[5300, 13], [5400, 14], [-1, -1]]
    assert refs.frames[1].tolist() == [[200, 12], [300, 13], [400, 14]]


def test_same_key_in_two_shards_and_a_sample_listed_twice():
    rows = sample_members("/s/a.tar", "x", 0) + sample_members("/s/b.tar", "x", 9000)
    refs = SampleRefs.build(
        samples([("/s/b.tar", "x", 1), ("/s/a.tar", "x", 0), ("/s/b.tar", "x", 1)]), members(rows)
    )  # fmt: skip
    assert refs.fbank[:, 0].tolist() == [9000, 0, 9000]
    assert refs.frames[:, 0, 0].tolist() == [9200, 200, 9200]


def test_joined_sets_take_the_fbank_of_the_audio_set(caplog):
    video = sample_members("/v/0.tar", "x", 0) + sample_members("/v/0.tar", "y", 1000)
    audio = [("/a/0.tar", "y", "fbank.npy", 777, 5), ("/a/0.tar", "z", "fbank.npy", 888, 5)]
    refs = SampleRefs.build(
        samples([("/v/0.tar", "x", 0), ("/v/0.tar", "y", 1)]), members(video), members(audio), names=("V", "A")
    )  # fmt: skip
    assert list(refs.keys) == ["y"] and refs.labels.tolist() == [1]  # x and z have no pair: left out, logged
    assert refs.paths[refs.audio_shard[0]] == "/a/0.tar" and refs.fbank.tolist() == [[777, 5]]
    assert refs.paths[refs.video_shard[0]] == "/v/0.tar" and refs.frames[0, 0].tolist() == [1200, 12]
    assert "1 clips only in the first and 1 only in the second" in caplog.text


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (sample_members("/s/b.tar", "x", 0), "sample 'x' of the manifest is not in the member index of /s/a.tar"),
        ([r for r in sample_members("/s/a.tar", "x", 0) if r[2] != "fbank.npy"], "'x' in /s/a.tar has no fbank.npy"),
        ([r for r in sample_members("/s/a.tar", "x", 0) if r[2] != "frame_1.jpg"], r"has frames \[0, 2\], not 0..N-1"),
        (sample_members("/s/a.tar", "x", 0) + [("/s/a.tar", "x", "frame_0.jpg", 1, 1)], r"frames \[0, 0, 1, 2\]"),
        ([r for r in sample_members("/s/a.tar", "x", 0) if not r[2].startswith("frame")], r"has frames \[\]"),
    ],
)
def test_an_incomplete_sample_is_named(rows, message):
    rows = rows + sample_members("/s/a.tar", "ok", 5000)
    with pytest.raises(ValueError, match=message):
        SampleRefs.build(samples([("/s/a.tar", "ok", 0), ("/s/a.tar", "x", 0)]), members(rows))


def test_keys_are_one_buffer():
    names = [f"clip{i:05d}" for i in range(2000)] + ["", "é-ü"]
    keys = Keys.from_arrow(pa.chunked_array([names[:700], names[700:]]).slice(1))
    assert len(keys) == len(names) - 1 and keys[0] == names[1] and keys[-1] == "é-ü" and keys[-2] == ""
    assert keys.take([5, 0, 5, len(keys) - 1]) == [names[6], names[1], names[6], "é-ü"]
    assert keys.take(np.array([], dtype=np.int64)) == []
    with pytest.raises(IndexError):
        keys[len(keys)]
    # what a DataLoader worker is handed: two buffers, not 2,000 string objects
    assert len(pickle.dumps(keys)) < 1.2 * (sum(len(n.encode()) for n in names) + 8 * len(names)) + 500
    assert pickle.loads(pickle.dumps(keys)).take([1, 2]) == names[2:4]
