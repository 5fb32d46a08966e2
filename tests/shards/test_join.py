"""The one audio/video join: an inner join on keys, the same in both access modes, counted and logged."""

from __future__ import annotations

import logging

import pytest
import torch
from avtta.manifests import open_dataset
from avtta.shards.loader import join_keys

PAIR = ("video:fog@5", "audio:rain@5")  # k05 failed in the video set, k02 in the audio set


def by_key(loader):
    """key -> (audio, video, label) over every batch."""
    return {k: (b["audio"][j], b["video"][j], int(b["label"][j])) for b in loader for j, k in enumerate(b["key"])}


def load(catalog, selection, **kw):
    return open_dataset(catalog, "toy", "test", selection, batch_size=3, num_workers=0, **kw)


def test_join_keys_is_an_inner_join_in_video_order(caplog):
    with caplog.at_level(logging.WARNING):
        joined = join_keys(["c", "a", "b", "x"], ["a", "y", "b", "c"], "V", "A")
    assert joined.keys == ["c", "a", "b"] and (joined.video_only, joined.audio_only) == (1, 1)
    assert "joining V with A: 1 clips only in the first and 1 only in the second" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert join_keys(["a", "b"], ["b", "a"], "V", "A").keys == ["a", "b"]
    assert caplog.text == ""  # nothing left out, nothing to say
    with pytest.raises(ValueError, match="V and A have no clip in common: they cannot be joined"):
        join_keys(["a"], ["b"], "V", "A")
    with pytest.raises(ValueError, match="sample key 'a' appears twice in A"):
        join_keys(["a"], ["a", "a"], "V", "A")


@pytest.mark.parametrize("access", ["index", "stream"])
def test_unmatched_keys_on_either_side_are_left_out_and_counted(synthetic_catalog, access, caplog):
    with caplog.at_level(logging.WARNING):
        loader = load(synthetic_catalog, PAIR, access=access)
    both = by_key(loader)
    expected = [f"k{i:02d}" for i in range(10) if i not in (2, 5)]
    assert sorted(both) == expected and len(loader) == 3  # 8 clips in batches of 3
    assert caplog.text.count("1 clips only in the first and 1 only in the second") == 1  # logged once
    video, audio = by_key(load(synthetic_catalog, PAIR[0])), by_key(load(synthetic_catalog, PAIR[1]))
    for key, (a, v, label) in both.items():  # fbank from the audio set, frame and label from the video set
        assert torch.equal(a, audio[key][0]) and torch.equal(v, video[key][1]) and label == video[key][2]


def test_both_access_modes_join_to_identical_tensors(synthetic_catalog):
    indexed = by_key(load(synthetic_catalog, PAIR, frame=2))
    streamed = by_key(load(synthetic_catalog, PAIR, frame=2, access="stream"))
    assert sorted(indexed) == sorted(streamed)
    for key, (a, v, label) in indexed.items():
        assert torch.equal(a, streamed[key][0]) and torch.equal(v, streamed[key][1]) and label == streamed[key][2]


@pytest.mark.parametrize("access", ["index", "stream"])
def test_sets_without_a_common_clip_are_an_error(synthetic_catalog, access):
    with pytest.raises(ValueError, match="have no clip in common: they cannot be joined"):
        load(synthetic_catalog, ("video:fog@5", "audio:wind@5"), access=access)


def test_shuffle_buffer_is_a_stream_setting(synthetic_catalog):
    with pytest.raises(ValueError, match="shuffle_buffer=10 applies to access='stream' only"):
        load(synthetic_catalog, "clean", shuffle_buffer=10)
    assert len(load(synthetic_catalog, "clean", shuffle_buffer=10, access="stream")) == 4
