"""avtta import: reference layouts (frame folders + WAVs + JSON lists) -> shards, with validation as it goes."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch
from avtta.pipelines.features import FBANK_MEAN, FBANK_STD, compute_fbank
from avtta.pipelines.importer import (
    ImportConfig,
    ImportEntry,
    ImportFailure,
    LabelIndex,
    discover_json_sets,
    import_sample,
    read_json_list,
    run_import,
)
from avtta.pipelines.synth import write_json_list, write_label_csv, write_reference_clip, write_wav
from PIL import Image
from webdataset.tariterators import tarfile_samples

CLIP_ID = "BkjpjAohg-0"
AUDIOSET_LABELS = "/m/04rlf,/m/07pjwq1,/m/07s72n,/m/08cyft"
FOREIGN_ROOT = "/home/someone/Projects/AV-C-Robustness-Benchmark/assets"  # as in AVRobustBench's eval.json


def reference_image(path: Path) -> torch.Tensor:
    """The reference loader's eval image transform, written with torchvision."""
    tv = pytest.importorskip("torchvision.transforms")
    t = tv.Compose(
        [
            tv.Resize(224, interpolation=tv.InterpolationMode.BICUBIC),
            tv.CenterCrop(224),
            tv.ToTensor(),
            tv.Normalize(mean=[0.4850, 0.4560, 0.4060], std=[0.2290, 0.2240, 0.2250]),
        ]
    )
    return t(Image.open(path))


def read_shard_set(root: Path, rel: str) -> dict[str, dict]:
    out = {}
    for f in pq.read_table(root / rel / "shards.parquet").column("file").to_pylist():
        for raw in tarfile_samples([{"url": str(root / rel / f)}]):
            assert raw["__key__"] not in out
            out[raw["__key__"]] = raw
    return out


def failures(root: Path, rel: str) -> dict[str, str]:
    rows = pq.read_table(root / rel / "failures.parquet").to_pylist()
    return {r["video_id"] or r["path"]: r["reason"] for r in rows}


# ---------------------------------------------------------------------------------------------------------------
# 1. the real clip in the reference layout


@pytest.fixture()
def real_tree(fixtures_dir, tmp_path):
    clip = fixtures_dir / "audioset_clip"
    labels = write_label_csv(
        tmp_path / "class_labels_indices.csv", AUDIOSET_LABELS.split(","), ["Music", "Ding-dong", "Bell", "Chime"]
    )
    # a list as AVRobustBench ships it: absolute paths of another machine, video_path with a trailing slash
    lst = write_json_list(
        tmp_path / "eval.json",
        [
            {
                "wav": f"{FOREIGN_ROOT}/eval_audio/{CLIP_ID}.wav",
                "labels": AUDIOSET_LABELS,
                "video_id": CLIP_ID,
                "video_path": f"{FOREIGN_ROOT}/eval_frames/",
            }
        ],
    )
    return clip, labels, lst


def test_import_sample_real_clip_equals_reference(real_tree, reference_fbank):
    clip, labels, lst = real_tree
    entries = read_json_list(
        lst,
        path_map=[
            (f"{FOREIGN_ROOT}/eval_audio", str(clip)),
            (f"{FOREIGN_ROOT}/eval_frames", str(clip / "eval_frames")),
        ],
    )
    assert len(entries) == 1 and entries[0].wav == str(clip / f"{CLIP_ID}.wav")
    out = import_sample(entries[0], LabelIndex.from_csv(labels))
    sample = out.sample
    np.testing.assert_array_equal(sample.fbank, reference_fbank(clip / f"{CLIP_ID}.wav").numpy())  # exactly
    assert len(sample.frames) == 10
    for k in range(10):  # the original JPEG bytes, untouched
        assert sample.frames[k] == (clip / "eval_frames" / f"frame_{k}" / f"{CLIP_ID}.jpg").read_bytes()
    assert sample.label == 0 and sample.metadata["labels"] == [0, 1, 2, 3]
    # 160,128 samples / 16 kHz = 10.008 s exactly; approx's default rel 1e-6 absorbs the float64 division only
    assert sample.metadata["sample_rate"] == 16000 and sample.metadata["duration"] == pytest.approx(10.008)
    assert out.record.label == 0 and out.record.row("shard-000000.tar")["corruption"] == "clean"


def test_run_import_real_clip_reads_back_as_reference(real_tree, tmp_path, reference_fbank):
    from avtta.manifests import open_dataset

    clip, labels, lst = real_tree
    cfg = ImportConfig(
        out=str(tmp_path / "out"),
        dataset="audioset",
        labels=str(labels),
        json=(str(lst),),
        path_map=(f"{FOREIGN_ROOT}/eval_audio={clip}", f"{FOREIGN_ROOT}/eval_frames={clip}/eval_frames"),
        workers=0,
        progress=False,
    )
    summary = run_import(cfg)
    assert (summary.ok, summary.failed) == (1, 0)
    info = summary.sets[0]
    assert (info.modality, info.source, info.frame_size, info.num_frames) == ("clean", "avtta import", 224, 10)
    batch = next(
        iter(open_dataset(tmp_path / "out", "audioset", "test", "clean", batch_size=1, shuffle=False, num_workers=0))
    )
    ref = reference_fbank(clip / f"{CLIP_ID}.wav").numpy()
    stored = read_shard_set(tmp_path / "out", info.path)[CLIP_ID]
    fbank = np.load(io.BytesIO(stored["fbank.npy"]))
    # shards keep fbank in float16 (schema): exact at that precision
    np.testing.assert_array_equal(fbank, ref.astype(np.float16))
    expected_audio = (torch.from_numpy(ref.astype(np.float16).astype(np.float32)) - FBANK_MEAN) / FBANK_STD
    torch.testing.assert_close(batch["audio"][0], expected_audio, rtol=0, atol=0)
    # eval frame = frame_5, through the reference transform; atol: |value| <= 2.64 (ulp 2.4e-7), the two float32
    # /255, -mean, /std chains round in another order: 1e-6 is ~4 ulps of the largest value
    torch.testing.assert_close(
        batch["video"][0], reference_image(clip / "eval_frames" / "frame_5" / f"{CLIP_ID}.jpg"), rtol=0, atol=1e-6
    )
    assert int(batch["label"][0]) == 0


# ---------------------------------------------------------------------------------------------------------------
# 2. a generated Kinetics50-C-style tree with broken files


CLASSES = ["abseiling", "hurling_(sport)", "massaging_person's_head"]
IDS = [f"vid{i:02d}" for i in range(8)]
VIDEO_SETS = [("fog", 1), ("fog", 3), ("gaussian_noise", 1)]
AUDIO_SETS = [("rain", 5), ("wind", 2)]


def _frames(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(1, 48, 64, 3))
    return np.clip(base + rng.integers(-20, 20, size=(10, 48, 64, 3)), 0, 255).astype(np.uint8)


def _wave(seed: int, seconds: float = 0.5) -> np.ndarray:
    return (0.2 * np.random.default_rng(seed).standard_normal(int(16000 * seconds))).astype(np.float32)


@pytest.fixture(scope="module")
def kinetics_tree(tmp_path_factory):
    """READ/BriMPR layout: data folders plus json/clean, json/video/<c>, json/audio/<c>, json/both (skipped)."""
    root = tmp_path_factory.mktemp("ks50c")
    write_label_csv(root / "class_labels_indices_ks50.csv", CLASSES)
    labels = {vid: CLASSES[i % 3] for i, vid in enumerate(IDS)}
    for i, vid in enumerate(IDS):
        write_reference_clip(root / "frames", root / "audio", vid, _frames(i), _wave(i))
        for c, s in VIDEO_SETS:
            write_reference_clip(root / "video_c" / c / f"severity_{s}", None, vid, _frames(100 + i + 10 * s))
        for c, s in AUDIO_SETS:
            write_wav(root / "audio_c" / c / f"severity_{s}" / f"{vid}.wav", _wave(200 + i + 10 * s))

    def entry(vid, wav, video_path, label=None):
        return {"video_id": vid, "wav": str(wav), "video_path": str(video_path) + "/", "labels": label or labels[vid]}

    clean = [entry(v, root / "audio" / f"{v}.wav", root / "frames") for v in IDS]
    clean.append(entry("vid00", root / "audio" / "vid00.wav", root / "frames", "no_such_class") | {"video_id": "vidX"})
    clean.append(
        {
            "video_id": "vidN",
            "wav": str(root / "audio" / "vid01.wav"),
            "video_path": str(root / "frames"),
            "labels": None,
        }
    )
    clean.append({"video_id": "vidM", "labels": CLASSES[0], "video_path": str(root / "frames")})  # no wav field
    write_json_list(root / "json" / "clean" / "severity_0.json", clean)
    for c, s in VIDEO_SETS:
        write_json_list(
            root / "json" / "video" / c / f"severity_{s}.json",
            [entry(v, root / "audio" / f"{v}.wav", root / "video_c" / c / f"severity_{s}") for v in IDS],
        )
    for c, s in AUDIO_SETS:
        items = [entry(v, root / "audio_c" / c / f"severity_{s}" / f"{v}.wav", root / "frames") for v in IDS]
        if c == "wind":
            items.append(items[1])  # duplicate id
        write_json_list(root / "json" / "audio" / c / f"severity_{s}.json", items)
    write_json_list(root / "json" / "both" / "fog" / "rain_severity_5.json", clean[:2])
    (root / "json" / "notes.json").write_text("{}")
    # broken files
    (root / "video_c" / "fog" / "severity_3" / "frame_5" / "vid03.jpg").unlink()
    jpg = root / "video_c" / "gaussian_noise" / "severity_1" / "frame_2" / "vid04.jpg"
    jpg.write_bytes(jpg.read_bytes()[: len(jpg.read_bytes()) // 2])
    gray = root / "video_c" / "fog" / "severity_1" / "frame_0" / "vid05.jpg"
    Image.fromarray(np.zeros((48, 64), np.uint8), mode="L").save(gray, format="JPEG")
    (root / "audio_c" / "rain" / "severity_5" / "vid06.wav").write_bytes(b"RIFF\x00\x00garbage" * 10)
    (root / "audio_c" / "wind" / "severity_2" / "vid07.wav").unlink()
    return root


EXPECTED_FAILURES = {
    "clean": {
        "vidX": "unknown label 'no_such_class'",
        "vidN": "no label (null in the list)",
        "vidM": "entry lacks wav",
    },
    "video:fog@1": {"vid05": "frame is not an RGB JPEG (mode L)"},
    "video:fog@3": {"vid03": "missing frame: "},
    "video:gaussian_noise@1": {"vid04": "unreadable frame: "},
    "audio:rain@5": {"vid06": "unreadable wav: "},
    "audio:wind@2": {"vid07": "missing wav: ", "vid01": "duplicate video id 'vid01'"},
}


def test_discover_reference_layout(kinetics_tree):
    sets = discover_json_sets(kinetics_tree / "json")
    assert sorted(s.spec for s in sets) == sorted(EXPECTED_FAILURES)  # both/ and notes.json are not sets
    assert {s.split for s in sets} == {"test"}
    single = discover_json_sets(kinetics_tree / "json" / "video" / "fog" / "severity_3.json")
    assert [s.spec for s in single] == ["video:fog@3"]  # inferred from its place in the root
    both = discover_json_sets(kinetics_tree / "json", include_both=True)
    assert "av:fog+rain@5" in {s.spec for s in both}


@pytest.fixture(scope="module")
def imported(kinetics_tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("imported")
    cfg = ImportConfig(
        out=str(out),
        dataset="ks50",
        labels=str(kinetics_tree / "class_labels_indices_ks50.csv"),
        json=(str(kinetics_tree / "json"),),
        shard_size=3,
        workers=0,
        progress=False,
    )
    return out, run_import(cfg), cfg


def test_generated_tree_imports_completely(kinetics_tree, imported):
    out, summary, _ = imported
    by_spec = {s.spec: s for s in summary.sets}
    assert set(by_spec) == set(EXPECTED_FAILURES)
    total_entries = 0
    for spec, info in by_spec.items():
        fails = failures(out, info.path)
        expected = EXPECTED_FAILURES[spec]
        assert set(fails) == set(expected), spec
        for vid, reason in expected.items():
            assert fails[vid].startswith(reason), (spec, fails[vid])
        samples = read_shard_set(out, info.path)
        good = set(IDS) - {v for v, reason in expected.items() if not reason.startswith("duplicate")}
        assert set(samples) == good, spec  # every good sample exactly once (read_shard_set checks duplicates)
        assert info.samples == len(good) and info.failures == len(expected)
        rows = pq.read_table(out / info.path / "samples.parquet").to_pylist()
        assert sorted(r["key"] for r in rows) == sorted(good)
        total_entries += info.samples + info.failures
        assert info.shards == len(pq.read_table(out / info.path / "shards.parquet"))
    assert summary.ok + summary.failed == total_entries == summary.entries


def test_generated_tree_contents(kinetics_tree, imported):
    out, summary, _ = imported
    by_spec = {s.spec: s for s in summary.sets}
    # audio set: fbank of the corrupted wav; frames are the clean ones
    rain = read_shard_set(out, by_spec["audio:rain@5"].path)["vid02"]
    wav, _ = sf.read(kinetics_tree / "audio_c" / "rain" / "severity_5" / "vid02.wav", dtype="float32")
    np.testing.assert_array_equal(np.load(io.BytesIO(rain["fbank.npy"])), compute_fbank(wav).astype(np.float16))
    assert rain["frame_5.jpg"] == (kinetics_tree / "frames" / "frame_5" / "vid02.jpg").read_bytes()
    meta = json.loads(rain["json"])
    assert meta["corruption"] == "audio:rain@5" and meta["severity"] == 5
    assert meta["label_names"] == [CLASSES[2]] and int(rain["cls"]) == 2
    # video set: corrupted frames, clean audio
    fog = read_shard_set(out, by_spec["video:fog@3"].path)["vid02"]
    assert (
        fog["frame_5.jpg"] == (kinetics_tree / "video_c" / "fog" / "severity_3" / "frame_5" / "vid02.jpg").read_bytes()
    )
    clean_wav, _ = sf.read(kinetics_tree / "audio" / "vid02.wav", dtype="float32")
    np.testing.assert_array_equal(np.load(io.BytesIO(fog["fbank.npy"])), compute_fbank(clean_wav).astype(np.float16))
    # chunks are aligned across sets: shard i of every set holds the same clips (minus failures)
    clean = {k: v["__url__"].rsplit("/", 1)[1] for k, v in read_shard_set(out, by_spec["clean"].path).items()}
    other = {k: v["__url__"].rsplit("/", 1)[1] for k, v in read_shard_set(out, by_spec["video:fog@1"].path).items()}
    assert all(clean[k] == other[k] for k in other)


def test_rerun_resumes_and_changed_job_is_refused(kinetics_tree, imported):
    out, _, cfg = imported
    before = {p: p.read_bytes() for p in out.rglob("*.tar")}
    again = run_import(cfg)
    assert again.resumed_chunks == sum(s.shards for s in again.sets) + 1  # one chunk per set is all-failure
    assert {p: p.read_bytes() for p in out.rglob("*.tar")} == before
    changed = dataclasses.replace(cfg, frames=(5,))
    with pytest.raises(ValueError, match="different job"):
        run_import(changed)


# ---------------------------------------------------------------------------------------------------------------
# single entries, plain layout, CLI


def test_import_sample_failure_reasons(kinetics_tree, tmp_path):
    labels = LabelIndex.from_csv(kinetics_tree / "class_labels_indices_ks50.csv")
    ok = ImportEntry(
        "vid00", str(kinetics_tree / "audio" / "vid00.wav"), str(kinetics_tree / "frames"), CLASSES[0], "x.json#0"
    )
    assert import_sample(ok, labels).sample.label == 0
    assert import_sample(ok, labels, frame_ids=(5,)).sample.frames == [
        (kinetics_tree / "frames" / "frame_5" / "vid00.jpg").read_bytes()
    ]
    # a display name is accepted like a mid
    assert import_sample(ok.__class__(**{**ok.__dict__, "labels": f"{CLASSES[1]}"}), labels).sample.label == 1
    png = tmp_path / "frames" / "frame_0" / "vid00.jpg"
    png.parent.mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(png, format="PNG")
    empty = write_wav(tmp_path / "empty.wav", np.zeros(0, np.float32))
    cases = {
        "frame is not a JPEG (PNG)": {"video_path": str(tmp_path / "frames")},
        "empty wav (0 samples)": {"wav": str(empty)},
        "unknown label 'zebra'": {"labels": f"{CLASSES[0]},zebra"},
        "no label (empty label string)": {"labels": " "},
    }
    for reason, change in cases.items():
        with pytest.raises(ImportFailure, match=reason.replace("(", r"\(").replace(")", r"\)")):
            import_sample(ok.__class__(**{**ok.__dict__, **change}), labels, frame_ids=(0,))


def test_short_wav_is_padded_and_recorded(kinetics_tree, tmp_path):
    labels = LabelIndex.from_csv(kinetics_tree / "class_labels_indices_ks50.csv")
    short = write_wav(tmp_path / "short.wav", _wave(9, seconds=0.01))  # 160 samples < one window
    entry = ImportEntry("vid00", str(short), str(kinetics_tree / "frames"), CLASSES[0], "x#0")
    sample = import_sample(entry, labels).sample
    assert np.all(sample.fbank[0] != 0) and np.all(sample.fbank[1:] == 0)
    assert "zero-padded" in sample.metadata["import"]["note"]


def test_plain_layout_and_cli(kinetics_tree, tmp_path):
    from avtta.cli import main

    lst = tmp_path / "labels.csv"
    lst.write_text(
        "video_id,label\n" + "".join(f"{v},{CLASSES[i % 3]}\n" for i, v in enumerate(IDS)) + "ghost,abseiling\n"
    )
    code = main(
        [
            "import",
            "--audio",
            str(kinetics_tree / "audio"),
            "--frames-dir",
            str(kinetics_tree / "frames"),
            "--list",
            str(lst),
            "--labels",
            str(kinetics_tree / "class_labels_indices_ks50.csv"),
            "--out",
            str(tmp_path / "out"),
            "--dataset",
            "ks50",
            "--corruption",
            "video:fog@2",
            "--frames",
            "0-9",
            "--workers",
            "0",
            "--no-progress",
        ]
    )
    assert code == 0
    info = json.loads((tmp_path / "out" / "ks50" / "test" / "video" / "fog" / "severity_2" / "set.json").read_text())
    assert (info["samples"], info["failures"], info["corruption"], info["severity"]) == (8, 1, "fog", 2)
    assert failures(tmp_path / "out", info["path"])["ghost"].startswith("missing wav: ")
    assert (tmp_path / "out" / "catalog.parquet").exists()
    # bad arguments: one clear line, exit code 2
    assert main(["import", "--out", str(tmp_path / "o2"), "--dataset", "x", "--workers", "0"]) == 2


def test_adapt_runs_on_imported_catalog(imported, tmp_path):
    """`avtta adapt` on the imported catalog alone: no JSON list is needed any more."""
    from avtta.models.cav_mae import cav_mae_ft_tiny
    from avtta.models.checkpoint import save_checkpoint

    from avtta.cli import main

    out, _, _ = imported
    torch.manual_seed(0)
    ckpt = save_checkpoint(cav_mae_ft_tiny(num_classes=len(CLASSES)), tmp_path / "tiny.safetensors")
    code = main(
        [
            "adapt",
            "--catalog",
            str(out),
            "--dataset",
            "ks50",
            "--protocol",
            "video",
            "--corruptions",
            "fog",
            "--severity",
            "3",
            "--methods",
            "source,tent",
            "--checkpoint",
            str(ckpt),
            "--seeds",
            "1",
            "--batch-size",
            "4",
            "--workers",
            "0",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "run"),
            "--no-progress",
        ]
    )
    assert code == 0
    rows = pq.read_table(tmp_path / "run" / "results.parquet").to_pylist()
    assert sorted(r["method"] for r in rows) == ["source", "tent"]
    assert all(r["samples"] == len(IDS) - 1 and r["corruption"] == "fog" and r["severity"] == 3 for r in rows)


@pytest.mark.ray
def test_ray_import_gives_same_bytes(kinetics_tree, imported, tmp_path, ray_local):
    out, _, cfg = imported
    ray_cfg = dataclasses.replace(cfg, out=str(tmp_path / "ray"), workers=2)
    run_import(ray_cfg)
    assert _digest(tmp_path / "ray") == _digest(out)


def _digest(root: Path) -> dict[str, str]:
    """sha256 of the shards and tables under root, and the relative paths of every other file (none left over)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.suffix in (".tar", ".parquet") else ""
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow
@pytest.mark.ray
def test_import_on_the_cluster_survives_a_lost_worker(kinetics_tree, imported, tmp_path, ray_nodes):
    out = imported[0]
    labels = str(kinetics_tree / "class_labels_indices_ks50.csv")
    args = ["import", "--json", str(kinetics_tree / "json"), "--labels", labels,
            "--out", str(tmp_path / "ray"), "--dataset", "ks50", "--shard-size", "3", "--no-progress",
            "--ray-address", ray_nodes.address]  # fmt: skip
    started = lambda: any((tmp_path / "ray").rglob("_parts/shard-*.json"))  # noqa: E731 - a chunk is done
    res = ray_nodes.run_killing(args, "worker", ready=started)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Ray worker lost" in res.stderr  # the lost chunk ran again (the shared path of run_chunks)
    assert _digest(tmp_path / "ray") == _digest(out)


def test_wav_formats_follow_the_loader(kinetics_tree, tmp_path, reference_fbank):
    """A 44.1 kHz wav (as pydub-written corrupted audio can be, item 30) gives the loader's fbank at that rate."""
    labels = LabelIndex.from_csv(kinetics_tree / "class_labels_indices_ks50.csv")
    rng = np.random.default_rng(4)
    wav = write_wav(tmp_path / "a.wav", (0.1 * rng.standard_normal(44100)).astype(np.float32), rate=44100)
    entry = ImportEntry("vid00", str(wav), str(kinetics_tree / "frames"), CLASSES[0], "x#0")
    sample = import_sample(entry, labels, frame_ids=(5,)).sample
    np.testing.assert_array_equal(sample.fbank, reference_fbank(wav).numpy())
    assert sample.metadata["sample_rate"] == 44100 and sample.metadata["import"]["wav_sample_rate"] == 44100
    # stereo: channel 0 feeds the fbank, as kaldi.fbank(channel=-1) does
    stereo = np.stack([0.1 * rng.standard_normal(16000), 0.3 * rng.standard_normal(16000)]).astype(np.float32)
    wav2 = write_wav(tmp_path / "s.wav", stereo)
    sample = import_sample(ImportEntry("vid00", str(wav2), entry.video_path, CLASSES[0], "x#1"), labels, frame_ids=(5,))
    left, _ = sf.read(wav2, dtype="float32")
    np.testing.assert_array_equal(sample.sample.fbank, compute_fbank(left[:, 0]))
    assert sample.sample.metadata["import"]["wav_channels"] == 2


def test_audio_assist_on_imported_catalog_with_another_label_space(imported, tmp_path):
    """audio_assist on the imported set, its pseudo-labels from a separate audio checkpoint with its own classes mapped
    through a label-map CSV (validated against both class lists); iterations are recorded per sample."""
    from avtta.adapt.worker import AdaptConfig, run_adaptation
    from avtta.models.cav_mae import cav_mae_ft_tiny
    from avtta.models.checkpoint import save_checkpoint

    out, _, _ = imported
    torch.manual_seed(0)
    ckpt = save_checkpoint(cav_mae_ft_tiny(num_classes=len(CLASSES)), tmp_path / "tiny.safetensors")
    audio_classes = ["rope", "stick", "hands", "wind"]
    labeler = save_checkpoint(cav_mae_ft_tiny(num_classes=len(audio_classes)), tmp_path / "labeler.safetensors")
    (tmp_path / "audio_classes.txt").write_text("\n".join(audio_classes) + "\n")
    links = [
        ("rope", CLASSES[0], 1.0),
        ("stick", CLASSES[1], 1.0),
        ("hands", CLASSES[2], 0.5),
        ("hands", CLASSES[0], 0.5),
    ]
    (tmp_path / "map.csv").write_text(
        "audio_label,video_label,weight\n" + "".join(f"{a},{v},{w}\n" for a, v, w in links)
    )
    settings = {
        "labeler": str(labeler),
        "labeler_classes": str(tmp_path / "audio_classes.txt"),
        "label_map": str(tmp_path / "map.csv"),
        # adapt every clip and stop on the maximum only (a random model's views agree at once), so the cycle runs
        "threshold": 0.0,
        "consistency": "off",
        "loss_tolerance": 0.0,
    }
    cfg = AdaptConfig(
        catalog=str(out), dataset="ks50", checkpoint=str(ckpt), protocol="video", corruptions=("fog",),
        severity=(3,), methods=("audio_assist",), seeds=(1,), batch_size=4, num_workers=0, device="cpu",
        out=str(tmp_path / "run"), progress=False, quiet=True, method_config={"audio_assist": settings},
    )  # fmt: skip
    rows = run_adaptation(cfg)
    assert rows[0]["samples"] == len(IDS) - 1 and rows[0]["iterations_mean"] >= 1
    samples = pq.read_table(tmp_path / "run" / "samples.parquet").to_pylist()
    assert len(samples) == len(IDS) - 1 and all(1 <= r["iterations"] <= 5 for r in samples)

    # an unknown label in the map is an error naming the label and the file
    (tmp_path / "bad.csv").write_text(f"audio_label,video_label,weight\nrope,{CLASSES[0]},1\nrope,curling,1\n")
    bad = dataclasses.replace(cfg, method_config={"audio_assist": {**settings, "label_map": str(tmp_path / "bad.csv")}})
    with pytest.raises(ValueError, match=r"curling.*bad\.csv|bad\.csv.*curling"):
        run_adaptation(bad)


def test_import_to_s3_gives_the_local_bytes(imported, s3_bucket):
    """`avtta import --out s3://...`: every object equals the file of the local import (shards, parts, manifests)."""
    from avtta.shards import storage

    out, _, cfg = imported
    url = storage.join(s3_bucket, "imported")
    run_import(dataclasses.replace(cfg, out=url))
    remote = {u[len(url) + 1 :]: hashlib.sha256(storage.read_bytes(u)).hexdigest() for u in storage.find(url)}
    local = {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in out.rglob("*") if p.is_file()}
    assert remote == local and len(remote) > 20


def _without_places(raw: dict, *places: tuple[str, str]) -> dict:
    """A raw shard sample with the input paths in its metadata written as the local import wrote them."""
    meta = raw["json"].decode()
    for remote, local in places:
        meta = meta.replace(remote, local)
    return {k: v for k, v in raw.items() if k != "__url__"} | {"json": meta}


def test_import_reads_lists_frames_and_wavs_from_s3(kinetics_tree, imported, s3_bucket, s3_upload, tmp_path):
    """`avtta import --json s3://...` with the lists' paths mapped onto the bucket: every set, sample and failure
    of the local import, the same fbanks and JPEG bytes, the failure rows naming the objects."""
    from avtta.shards import storage

    local_out, local_summary, cfg = imported
    tree = storage.join(s3_bucket, "ks50c")
    s3_upload(kinetics_tree, tree)
    out = tmp_path / "from_s3"
    summary = run_import(
        dataclasses.replace(
            cfg,
            out=str(out),
            json=(storage.join(tree, "json"),),
            labels=storage.join(tree, "class_labels_indices_ks50.csv"),
            path_map=(f"{kinetics_tree}={tree}",),
        )
    )
    assert [(s.spec, s.samples, s.failures) for s in summary.sets] == [
        (s.spec, s.samples, s.failures) for s in local_summary.sets
    ]
    places = ((tree, str(kinetics_tree)),)
    for info in summary.sets:
        remote, local = read_shard_set(out, info.path), read_shard_set(local_out, info.path)
        assert remote.keys() == local.keys() and remote, info.spec
        for key in remote:
            assert _without_places(remote[key], *places) == _without_places(local[key]), (info.spec, key)
        fails = failures(out, info.path)
        for vid, reason in EXPECTED_FAILURES[info.spec].items():
            assert fails[vid].startswith(reason), (info.spec, fails[vid])
            if reason.startswith(("missing", "unreadable")):
                assert f"{tree}/" in fails[vid]  # the row names the object, not a local path
    # a JSON list on the store whose relative paths resolve against the list's own prefix
    lst = storage.join(tree, "relative", "clean.json")
    entries = [{"video_id": v, "wav": f"../audio/{v}.wav", "video_path": "../frames", "labels": "x"} for v in IDS]
    storage.atomic_write(lst, json.dumps({"data": entries}))
    [relative] = discover_json_sets(lst)
    assert relative.entries[0].wav == storage.join(tree, "audio", f"{IDS[0]}.wav")
    assert relative.entries[0].frame_path(5) == storage.join(tree, "frames", "frame_5", f"{IDS[0]}.jpg")


def test_plain_layout_from_s3_with_the_cli(kinetics_tree, s3_bucket, s3_upload, tmp_path):
    """The plain layout (`--audio`, `--frames-dir`, `--list` as URLs) through the CLI, out to the store as well."""
    from avtta.shards import storage

    from avtta.cli import main

    tree = storage.join(s3_bucket, "plain")
    s3_upload(kinetics_tree / "audio", storage.join(tree, "audio"))
    s3_upload(kinetics_tree / "frames", storage.join(tree, "frames"))
    listing = "video_id,label\n" + "".join(f"{v},{CLASSES[i % 3]}\n" for i, v in enumerate(IDS)) + "ghost,abseiling\n"
    storage.atomic_write(storage.join(tree, "labels.csv"), listing)
    out = storage.join(s3_bucket, "plain-out")
    args = ["import", "--audio", storage.join(tree, "audio"), "--frames-dir", storage.join(tree, "frames")]
    labels = str(kinetics_tree / "class_labels_indices_ks50.csv")
    args += ["--list", storage.join(tree, "labels.csv"), "--labels", labels]
    args += ["--out", out, "--dataset", "ks50", "--frames", "5", "--workers", "0", "--no-progress"]
    assert main(args) == 0
    info = json.loads(storage.read_text(storage.join(out, "ks50", "test", "clean", "set.json")))
    assert (info["samples"], info["failures"]) == (len(IDS), 1)
    rows = pq.read_table(io.BytesIO(storage.read_bytes(storage.join(out, info["path"], "failures.parquet"))))
    rows = rows.to_pylist()
    assert [r["reason"] for r in rows] == [f"missing wav: {storage.join(tree, 'audio', 'ghost.wav')}"]
    # a folder that is not on the store: one clear line (exit 2) naming it
    missing = ["import", "--audio", storage.join(tree, "nothing"), *args[3:]]
    assert main(missing) == 2
