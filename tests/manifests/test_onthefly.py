"""Corrupting the clean set while reading equals reading the sets ``avtta shard --corrupt`` wrote (issue 16).

One small shard job writes the clean set (with ``--waveform``) and every registered corruption at severities 1 and 5
(36 x 2 sets of three 1 s clips, 3 frames of 32 x 32, so that it stays fast); the on-the-fly reader of the clean set
must yield the same model inputs for every set: frame pixels exactly, the fbank to its float16 storage precision.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from avtta.corruptions import list_corruptions
from avtta.manifests import Catalog, open_dataset
from avtta.pipelines.shard_job import ShardJobConfig, run_shard_job
from avtta.pipelines.synth import write_test_video
from avtta.shards.transforms import FBANK_MEAN, FBANK_STD

SEVERITIES = (1, 5)
SPECS = [f"{c}@{s}" for c in list_corruptions() for s in SEVERITIES]


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Catalog:
    root = tmp_path_factory.mktemp("otf")
    videos = root / "videos"
    for i in range(3):
        cls = "dog" if i % 2 else "cat"
        (videos / cls).mkdir(parents=True, exist_ok=True)
        write_test_video(videos / cls / f"v{i}.mp4", seconds=1.0, fps=10, size=(48, 32), audio_rate=16000, seed=i)
    cfg = ShardJobConfig(
        videos=str(videos),
        out=str(root / "out"),
        dataset="toy",
        corrupt=("none", "video:all@1", "video:all@5", "audio:all@1", "audio:all@5", "av:all@1", "av:all@5"),
        frames=3,
        frame_size=32,
        shard_size=2,
        seed=7,
        waveform=True,
        workers=0,
        progress=False,
    )
    summary = run_shard_job(cfg)
    assert summary.failed == 0 and len(summary.sets) == 1 + len(SPECS)
    return Catalog(root / "out")


def _batches(cat: Catalog, corruption, **kw) -> list[dict]:
    kw = {"batch_size": 2, "shuffle": False, "num_workers": 0, "pin_memory": False, **kw}
    return list(open_dataset(cat, "toy", "test", corruption=corruption, **kw))


def assert_same_inputs(written: list[dict], otf: list[dict], what: str) -> None:
    assert [b["key"] for b in written] == [b["key"] for b in otf], what
    for w, o in zip(written, otf, strict=True):
        assert torch.equal(w["label"], o["label"]), what
        assert torch.equal(w["video"], o["video"]), f"{what}: frame pixels differ"
        # Both fbanks are float16 values normalised in float32. The same float16 value gives the same float32 bits;
        # the only allowed difference is one float16 ulp of the raw value (a last-bit difference of the float32 FFT
        # or product between the writer's single thread and this process flips the rounding), divided by the std.
        raw = w["audio"].double() * FBANK_STD + FBANK_MEAN
        ulp = torch.from_numpy(np.spacing(np.abs(raw.numpy()).astype(np.float16)).astype(np.float64))
        diff = (w["audio"].double() - o["audio"].double()).abs()
        assert bool((diff <= ulp / FBANK_STD * 1.001 + 1e-6).all()), f"{what}: fbank beyond float16 precision"


@pytest.mark.parametrize("spec", SPECS)
def test_on_the_fly_equals_written_set(written: Catalog, spec: str) -> None:
    assert_same_inputs(_batches(written, spec), _batches(written, spec, source="clean"), spec)


def test_clean_on_the_fly_is_the_clean_set(written: Catalog) -> None:
    assert_same_inputs(_batches(written, "clean"), _batches(written, "clean", source="clean"), "clean")


def test_joined_pair_on_the_fly(written: Catalog) -> None:
    pair = ("video:fog@5", "audio:rain@5")
    assert_same_inputs(_batches(written, pair), _batches(written, pair, source="clean"), str(pair))
    pair = ("av:rain@1", "audio:wind@5")  # an AV set's frames with another set's audio
    assert_same_inputs(_batches(written, pair), _batches(written, pair, source="clean"), str(pair))


@pytest.mark.parametrize("frame", [0, 2])
def test_any_frame_equals_written_set(written: Catalog, frame: int) -> None:
    # one frame corrupted alone has the pixels of frame k of the clip corrupted as a whole (per-frame draws)
    for spec in ("video:glass_blur@5", "av:crowd@5"):
        w = _batches(written, spec, frame=frame)
        assert_same_inputs(w, _batches(written, spec, frame=frame, source="clean"), f"{spec} frame {frame}")


def test_workers_give_the_same_batches(written: Catalog) -> None:
    # the corruption and the fbank run in the DataLoader workers: the same inputs as in this process
    for spec in ("av:rain@5", ("video:zoom_blur@5", "audio:gaussian_noise@1")):
        serial = _batches(written, spec, source="clean")
        assert_same_inputs(serial, _batches(written, spec, source="clean", num_workers=2), str(spec))


def test_batched_fbank_on_a_device_equals_the_workers(written: Catalog) -> None:
    # fbank_device: the batch's fbanks in this process, torch batched; the same float16 values but for rounding
    spec = "audio:traffic@5"
    assert_same_inputs(_batches(written, spec), _batches(written, spec, source="clean", fbank_device="cpu"), spec)


def test_bad_on_the_fly_selections(written: Catalog) -> None:
    with pytest.raises(ValueError, match="access='index'"):
        open_dataset(written, "toy", corruption="video:fog@5", source="clean", access="stream")
    with pytest.raises(ValueError, match="source must be"):
        open_dataset(written, "toy", corruption="video:fog@5", source="written")
    with pytest.raises(ValueError, match="cannot be applied while reading"):
        open_dataset(written, "toy", corruption="video:not_a_kernel@5", source="clean")
    with pytest.raises(ValueError, match="source='clean'"):
        open_dataset(written, "toy", corruption="video:fog@5", fbank_device="cpu")


def test_the_corruptions_change_the_inputs(written: Catalog) -> None:
    # the equality above is not that of two clean reads: every modality a spec corrupts differs from the clean set
    clean = _batches(written, "clean")[0]
    for spec, changed in (("video:fog@5", "video"), ("audio:rain@5", "audio"), ("av:rain@5", "both")):
        b = _batches(written, spec, source="clean")[0]
        assert torch.equal(b["video"], clean["video"]) == (changed == "audio"), spec
        assert torch.equal(b["audio"], clean["audio"]) == (changed == "video"), spec


def test_audio_needs_the_waveform(written: Catalog) -> None:
    from dataclasses import replace

    from avtta.manifests.dataset import on_the_fly_hook

    clean = replace(written.get("toy", "test"), waveform=False)
    assert on_the_fly_hook(clean, "video:fog@5").video  # frames need no waveform
    with pytest.raises(ValueError, match="without --waveform"):
        on_the_fly_hook(clean, "audio:rain@5")


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_on_the_fly_from_s3_equals_local(written: Catalog, s3_bucket) -> None:
    """The clean set on S3 (frames and waveforms by ranged GETs, in the workers too): the same inputs, bit for bit."""
    from avtta.shards import storage

    fs, path = storage.resolve(s3_bucket)
    for rel in ("catalog.parquet", "toy/classes.csv"):
        fs.put_file(str(written.root / rel), f"{path}/cat/{rel}")
    fs.put(str(written.root / "toy/test/clean") + "/", f"{path}/cat/toy/test/clean/", recursive=True)
    remote = Catalog(f"{s3_bucket}/cat")
    for spec, workers in (("av:rain@5", 0), (("video:zoom_blur@5", "audio:gaussian_noise@1"), 2)):
        local = _batches(written, spec, source="clean", num_workers=workers)
        got = _batches(remote, spec, source="clean", num_workers=workers)
        assert [b["key"] for b in got] == [b["key"] for b in local]
        for a, b in zip(local, got, strict=True):
            assert all(torch.equal(a[k], b[k]) for k in ("audio", "video", "label")), spec
