"""The demo: the synthetic audio-visual data set (pipelines/demo_data.py) and the end-to-end orchestration."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest
from avtta.manifests import read_label_csv
from avtta.pipelines.decode import decode_clip
from avtta.pipelines.demo_data import (
    AUDIO_PATTERNS,
    DATASET_FILE,
    DemoConfig,
    class_attributes,
    class_table,
    generate_demo_dataset,
    render_clip,
)
from avtta.pipelines.inputs import list_inputs

TINY = dict(num_classes=3, train=12, test=6, seconds=1.0, size=48, fps=8.0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """3 classes x 4 train clips (+ 2 test clips per class), written in this process."""
    root = tmp_path_factory.mktemp("demo") / "data"
    return generate_demo_dataset(root, workers=0, **TINY)


@pytest.mark.parametrize("n", range(2, 11))
def test_class_attributes_are_distinct_pairs_and_each_value_is_shared(n):
    pairs = class_attributes(n)
    assert len(set(pairs)) == n  # the pair identifies the class
    if n % 2 == 0 and n >= 4:
        # the cycle closes: every visual and every audio value belongs to exactly two classes,
        # so neither modality alone can do better than 1 in 2
        assert set(Counter(v for v, _ in pairs).values()) == {2}
        assert set(Counter(a for _, a in pairs).values()) == {2}
    mids = [m for m, _ in class_table(n)]
    assert len(set(mids)) == n and all("/" not in m and "." not in m for m in mids)


def test_class_count_out_of_range_raises(tmp_path):
    with pytest.raises(ValueError, match="num_classes"):
        generate_demo_dataset(tmp_path, num_classes=11, train=1, test=1)
    with pytest.raises(ValueError, match="size"):
        generate_demo_dataset(tmp_path, size=63, train=1, test=1)


def test_tiny_dataset_layout_labels_and_decodable_streams(tiny):
    assert read_label_csv(tiny.labels) == class_table(3)
    for split, n in (("train", 12), ("test", 6)):
        files = sorted((tiny.root / split).rglob("*.mp4"))
        assert len(files) == n
        # balanced, class = sub-folder, ids carry no class
        assert Counter(f.parent.name for f in files) == Counter({m: n // 3 for m, _ in class_table(3)})
        assert len({f.stem for f in files}) == n
    clips, classes = list_inputs(tiny.train, tiny.labels)
    assert classes == class_table(3) and all(not c.error for c in clips)
    dec = decode_clip(sorted(tiny.test.rglob("*.mp4"))[0], frame_size=64)
    assert dec.missing == () and dec.frames.shape == (10, 64, 64, 3)
    assert dec.info["video_codec"] == "h264" and dec.info["audio_codec"] == "aac"
    # fps is a container rational (8/1): approx's default rel 1e-6. The 1 s clip's AAC audio may carry one frame of
    # encoder padding (1024 samples, 6.4 % at 16 kHz): 10 %. 0.01 tells audio from the zeros of a dropped stream.
    assert dec.info["width"] == 48 and dec.info["fps"] == pytest.approx(8.0)
    assert abs(dec.waveform.shape[0] / 16000 - 1.0) < 0.1 and np.abs(dec.waveform).max() > 0.01
    rows = pq.read_table(tiny.clips).to_pylist()
    assert len(rows) == 18 and {r["audio"] for r in rows} <= set(range(len(AUDIO_PATTERNS)))
    for r in rows:
        assert (tiny.root / r["path"]).exists()
        assert class_attributes(3)[r["label"]] == (r["visual"], r["audio"])


def test_same_options_same_bytes_in_parallel(tiny, tmp_path):
    again = generate_demo_dataset(tmp_path / "again", workers=2, **TINY)
    ours = sorted(p.relative_to(tiny.root) for p in tiny.root.rglob("*.mp4"))
    theirs = sorted(p.relative_to(again.root) for p in again.root.rglob("*.mp4"))
    assert ours == theirs
    for rel in ours:
        assert (tiny.root / rel).read_bytes() == (again.root / rel).read_bytes(), rel


def test_complete_dataset_is_reused_and_other_options_refused(tiny):
    before = {p: p.stat().st_mtime_ns for p in tiny.root.rglob("*.mp4")}
    generate_demo_dataset(tiny.root, workers=0, **TINY)
    assert {p: p.stat().st_mtime_ns for p in tiny.root.rglob("*.mp4")} == before
    assert json.loads((tiny.root / DATASET_FILE).read_text())["config"]["num_classes"] == 3
    with pytest.raises(ValueError, match="other options"):
        generate_demo_dataset(tiny.root, workers=0, **{**TINY, "seed": 1})


def test_clip_carries_its_class_cues():
    """The visual cue (object hue) is in the frame, the audio cue (pattern) in the waveform."""
    cfg = DemoConfig(num_classes=10, seconds=1.0, size=48, fps=8.0)
    frames, wave, params = render_clip(cfg, "train", 5, label=6)  # azure + fall
    assert (params["visual"], params["audio"]) == class_attributes(10)[6]
    assert params["audio_params"]["pattern"] == "fall"
    assert frames.dtype == np.uint8 and frames.shape == (8, 48, 48, 3)
    assert wave.dtype == np.float32 and wave.shape == (1, 16000) and np.abs(wave).max() < 1
    # a "fall" glide: pitch moves downwards between the jumps; a "hum" has no glide parameters
    _, _, hum = render_clip(cfg, "train", 5, label=0)
    assert "depth_oct" in params["audio_params"] and "depth_oct" not in hum["audio_params"]
    # the rendered main object's mean colour has the class hue (blue dominates for azure)
    hue = params["video_params"]["hue"] % 360
    assert abs(hue - 216) <= 14
    again = render_clip(cfg, "train", 5, label=6)
    assert np.array_equal(again[0], frames) and np.array_equal(again[1], wave)


# ----------------------------------------------------------------------------------------------- orchestration


def test_demo_command_is_registered():
    from avtta.cli import build_parser

    args = build_parser().parse_args(["demo", "--quick", "--out", "o", "--data", "d", "--workers", "0"])
    assert args.quick and not args.full and args.out == "o" and args.workers == 0 and callable(args.func)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--quick", "--full"])


def test_profiles_select_registered_corruptions():
    from avtta.corruptions import list_corruptions

    from avtta.demo import PROFILES

    known = set(list_corruptions())
    for profile in PROFILES.values():
        specs = profile.corruption_specs()
        assert specs[0] == "none"
        assert all(s.rsplit("@", 1)[0] in known for s in specs[1:]), specs
    assert len(PROFILES["full"].corruption_specs()) == 1 + len(known)
    assert len(PROFILES["full"].seeds) == 3 and len(PROFILES["default"].seeds) == 1
    # online adaptation needs steps to act: at least 30 per default test set (issue: 7 at batch 64 showed nothing)
    default = PROFILES["default"]
    assert -(-default.test_clips // default.batch_size) >= 30
    assert PROFILES["full"].methods == ("all",) == default.methods


@pytest.mark.slow
def test_quick_demo_end_to_end_then_cached(quick_demo):
    """The smoke profile: real mp4s -> shards -> trained source model -> all methods -> table; a rerun is cached."""
    from avtta.adapt import list_methods

    from avtta.demo import run_demo

    tmp_path, result = quick_demo
    methods = list_methods()
    assert len(methods) == 15  # the BriMPR repository's eight, the six newer methods and audio_assist
    assert {(r["method"], r["corruption"]) for r in result.rows if r["protocol"] != "clean"} == {
        (m, c) for m in methods for c in ("v:gaussian_noise", "a:gaussian_noise")
    }
    assert all(0.0 <= r["accuracy"] <= 100.0 and r["samples"] == 24 for r in result.rows)
    assert set(result.clean) == {"acc_multimodal", "acc_audio", "acc_video"}
    for name in ("table.md", "heatmap.png", "results.parquet", "demo.json"):
        assert (result.out / name).stat().st_size > 0, name
    table = (result.out / "table.md").read_text()
    assert all(f"| {m} |" in table for m in methods) and "v:gaussian_noise" in table
    assert result.cached == []

    again = run_demo(out=tmp_path / "runs", data=tmp_path / "data", quick=True, workers=0, progress=False)
    assert again.cached == ["generate", "shard", "train", "adapt"]
    assert again.table == result.table
    assert again.timings["total"] < result.timings["total"]


@pytest.mark.slow
def test_quick_demo_on_s3_matches_local_and_reruns_cached(quick_demo, s3_bucket, capsys):
    """``avtta demo --data s3://... --out s3://...``: videos, shards and every result land in the bucket (SeaweedFS),
    the table is the local run's, and a rerun finds every step done there."""
    from avtta.shards import storage
    from avtta.shards.schema import SCHEMA_VERSION

    from avtta.cli import main
    from avtta.demo import run_demo

    data, out = f"{s3_bucket}/data", f"{s3_bucket}/runs"
    args = ["demo", "--quick", "--data", data, "--out", out, "--workers", "0", "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"{out}/quick: table.md" in printed and "(cached:" not in printed
    assert storage.exists(f"{data}/quick/videos/dataset.json")
    assert any(u.endswith(".tar") for u in storage.find(f"{data}/quick/shards-v{SCHEMA_VERSION}"))
    for name in ("table.md", "heatmap.png", "results.parquet", "results.csv", "demo.json", "source/model.safetensors"):
        assert storage.size(f"{out}/quick/{name}") > 0, name
    assert storage.exists(f"{out}/quick/adapt/video/demo_step.json")
    local = quick_demo[1]
    assert storage.read_text(f"{out}/quick/table.md") == (local.out / "table.md").read_text()

    again = run_demo(out=out, data=data, quick=True, workers=0, progress=False)
    assert again.cached == ["generate", "shard", "train", "adapt"] and again.out == f"{out}/quick"
    assert again.table == local.table

    # `avtta demo --balance` on the same URLs: the bucket's videos, shards and plain source model are reused
    from avtta.demo_balance import run_balance_demo

    balance = run_balance_demo(out=out, data=data, quick=True, workers=0, progress=False)
    assert balance.cached == ["generate", "shard", "train plain"] and balance.out == f"{out}/quick/balance"
    assert json.loads(storage.read_text(f"{out}/quick/balance/balance.json"))["catalog"] == (
        f"{data}/quick/shards-v{SCHEMA_VERSION}"
    )
    for name in ("table_balance.md", "balance.png", "results.parquet", "models/resample/model.safetensors"):
        assert storage.size(f"{out}/quick/balance/{name}") > 0, name
    assert storage.listdir(f"{data}/quick") == [f"shards-v{SCHEMA_VERSION}", "videos"]  # one catalog
