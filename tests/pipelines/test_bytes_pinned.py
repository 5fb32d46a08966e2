"""The bytes of a small shard job and a small import are pinned: a refactor must not change one written byte.

The constants below were recorded from the code before the set-job refactor (issue 11, section 1). Every file the
two jobs write is pinned (tars, parquet tables, part and set JSON files, classes.csv).

What may legitimately differ between machines: the fbank members (``<key>.fbank.npy``). They come from torch's FFT
and float32 reductions, whose kernels differ between CPUs (AVX-512, AVX2, NEON), and a last-bit difference can flip
the float16 rounding of a value. Everything else is integer or fixed-order work (JPEG encoding by libjpeg, FLAC,
seeded numpy corruptions, JSON, tar headers). So each tar is pinned in three parts: the digest of its non-fbank
members (must hold on any machine), the digest of its fbank members, and the whole file. The whole-file digests of
tars and of the files that record them (``shards.parquet``, the part files) are asserted when the fbank digests
match the recorded ones, i.e. on a machine whose kernels round as the recording machine did; on any other machine
the test still checks all fbank-free bytes and says so in a skip.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from avtta.pipelines.importer import ImportConfig, run_import
from avtta.pipelines.shard_job import ShardJobConfig, run_shard_job
from avtta.pipelines.synth import write_json_list, write_label_csv, write_reference_clip, write_test_video
from webdataset.tariterators import tarfile_samples

FBANK = "fbank.npy"
DIGITS = 24  # hex digits kept of each sha256 (96 bits: far beyond any accidental collision, lines stay short)
# Files whose bytes contain the sha256 of a tar, hence of its fbank members.
_RECORDS_TAR_DIGESTS = ("shards.parquet",)


def _member_digest(raws: list[dict], *, fbank: bool) -> str:
    h = hashlib.sha256()
    for raw in raws:
        for name in sorted(k for k in raw if not k.startswith("__") and (k == FBANK) == fbank):
            h.update(f"{raw['__key__']}.{name}\0".encode())
            h.update(hashlib.sha256(raw[name]).digest())
    return h.hexdigest()


def digests(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under root; each tar adds ``<path>:content`` and ``<path>:fbank``."""
    out = {}
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(root).as_posix()
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()[:DIGITS]
        if p.suffix == ".tar":
            raws = [{k: v for k, v in r.items() if k != "__url__"} for r in tarfile_samples([{"url": str(p)}])]
            out[f"{rel}:content"] = _member_digest(raws, fbank=False)[:DIGITS]
            out[f"{rel}:fbank"] = _member_digest(raws, fbank=True)[:DIGITS]
    return out


def fbank_dependent(rel: str) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return (rel.endswith(".tar") or name in _RECORDS_TAR_DIGESTS or "/_parts/shard-" in rel) and ":" not in rel


def check_pinned(found: dict[str, str], pinned: dict[str, str]) -> None:
    assert sorted(found) == sorted(pinned), "the set of written files changed"
    wrong = {k: v for k, v in found.items() if not fbank_dependent(k) and not k.endswith(":fbank") and pinned[k] != v}
    assert not wrong, f"bytes changed: {sorted(wrong)}"
    fbank_same = all(found[k] == pinned[k] for k in found if k.endswith(":fbank"))
    if not fbank_same:
        pytest.skip("fbank bits differ from the recording machine (other FFT kernels); fbank-free bytes are equal")
    wrong = {k for k, v in found.items() if pinned[k] != v}
    assert not wrong, f"bytes changed: {sorted(wrong)}"


# ---------------------------------------------------------------------------------------------------------------
# the shard job

SMALL_JOB = {"shard_size": 2, "waveform": True, "workers": 0, "progress": False}  # both jobs: 2 shards per set


def _shard_job(root: Path) -> Path:
    videos = root / "videos"
    for i in range(3):
        cls = "dog" if i % 2 else "cat"
        (videos / cls).mkdir(parents=True, exist_ok=True)
        write_test_video(videos / cls / f"v{i}.mp4", seconds=1.0, fps=10, size=(48, 32), audio_rate=16000, seed=i)
    out = root / "out"
    cfg = ShardJobConfig(
        videos=str(videos),
        out=str(out),
        dataset="toy",
        corrupt=("none", "video:gaussian_noise@3", "audio:gaussian_noise@2"),
        frames=3,
        frame_size=32,
        seed=11,
        **SMALL_JOB,
    )
    summary = run_shard_job(cfg)
    assert summary.ok == 3 and summary.failed == 0
    return out


SHARD_JOB_PINNED: dict[str, str] = {
    "catalog.parquet": "0075eb119892b7dbb718c960",
    "toy/classes.csv": "96ab9fadc40b9a32b9dd8704",
    "toy/test/audio/gaussian_noise/severity_2/_parts/job.json": "8d4def014a9d83683779959a",
    "toy/test/audio/gaussian_noise/severity_2/_parts/shard-000000.json": "6e2531f167aa5925d0747649",
    "toy/test/audio/gaussian_noise/severity_2/_parts/shard-000001.json": "6ab6d935a937ec2a3b82b1de",
    "toy/test/audio/gaussian_noise/severity_2/failures.parquet": "1e3063c47d0dfeadf4055ba8",
    "toy/test/audio/gaussian_noise/severity_2/members.parquet": "8b57120eadd387c1f79d6793",
    "toy/test/audio/gaussian_noise/severity_2/samples.parquet": "bfb836eeeccaf33055dbe53f",
    "toy/test/audio/gaussian_noise/severity_2/set.json": "c738081ec526dc4f489fcfb0",
    "toy/test/audio/gaussian_noise/severity_2/shard-000000.tar": "377da7cf6737cf32c68bf4e6",
    "toy/test/audio/gaussian_noise/severity_2/shard-000000.tar:content": "1ce475d6b4e727b663dda268",
    "toy/test/audio/gaussian_noise/severity_2/shard-000000.tar:fbank": "56c201733a45e4ccbe37072f",
    "toy/test/audio/gaussian_noise/severity_2/shard-000001.tar": "00ee63efb01999fb63d8d776",
    "toy/test/audio/gaussian_noise/severity_2/shard-000001.tar:content": "8cb20846ec9a7c5c1372eecf",
    "toy/test/audio/gaussian_noise/severity_2/shard-000001.tar:fbank": "eb4ee77181ebaa119a4aa943",
    "toy/test/audio/gaussian_noise/severity_2/shards.parquet": "29a1fe75f14d65e3ee6d9cbb",
    "toy/test/clean/_parts/job.json": "81212ff37a49ef9dd0d3df93",
    "toy/test/clean/_parts/shard-000000.json": "370033c9157d13240a9fc4b7",
    "toy/test/clean/_parts/shard-000001.json": "2ed9256a4822be7d14e150d1",
    "toy/test/clean/failures.parquet": "1e3063c47d0dfeadf4055ba8",
    "toy/test/clean/members.parquet": "27462ff32df00542054443aa",
    "toy/test/clean/samples.parquet": "5ad677e5ef88378cb8929e26",
    "toy/test/clean/set.json": "75e836ab55768c1a379c6416",
    "toy/test/clean/shard-000000.tar": "564edeca81e3872a59a19ff2",
    "toy/test/clean/shard-000000.tar:content": "73e571bc30bca5abf3256360",
    "toy/test/clean/shard-000000.tar:fbank": "abc8e0879dde132157d2574f",
    "toy/test/clean/shard-000001.tar": "58de9a0a5811becd29e1a54b",
    "toy/test/clean/shard-000001.tar:content": "f3deabaa4aded4182cc08d01",
    "toy/test/clean/shard-000001.tar:fbank": "483bf5c100cc31e53f25810f",
    "toy/test/clean/shards.parquet": "9d5d297bb0f0fabd3aaca4c1",
    "toy/test/video/gaussian_noise/severity_3/_parts/job.json": "9b5ac0283b77d1418afe9699",
    "toy/test/video/gaussian_noise/severity_3/_parts/shard-000000.json": "5235c65e227371d9c02c230e",
    "toy/test/video/gaussian_noise/severity_3/_parts/shard-000001.json": "de6aed70149c1d9aa36ed3d7",
    "toy/test/video/gaussian_noise/severity_3/failures.parquet": "1e3063c47d0dfeadf4055ba8",
    "toy/test/video/gaussian_noise/severity_3/members.parquet": "a9b0826499cb9565adbe8e07",
    "toy/test/video/gaussian_noise/severity_3/samples.parquet": "8e052c2201a4ed68e5667723",
    "toy/test/video/gaussian_noise/severity_3/set.json": "acd0b445fa119e1a0b60d877",
    "toy/test/video/gaussian_noise/severity_3/shard-000000.tar": "bf8177280600e229a0e03255",
    "toy/test/video/gaussian_noise/severity_3/shard-000000.tar:content": "b814dddb0bf7ec51e93ff228",
    "toy/test/video/gaussian_noise/severity_3/shard-000000.tar:fbank": "abc8e0879dde132157d2574f",
    "toy/test/video/gaussian_noise/severity_3/shard-000001.tar": "03d4fd043d1578bffc728cb3",
    "toy/test/video/gaussian_noise/severity_3/shard-000001.tar:content": "a59ddcb39af71405e131880b",
    "toy/test/video/gaussian_noise/severity_3/shard-000001.tar:fbank": "483bf5c100cc31e53f25810f",
    "toy/test/video/gaussian_noise/severity_3/shards.parquet": "fcdf0d98d18320b6462bd2da",
}


def test_shard_job_bytes_pinned(tmp_path):
    check_pinned(digests(_shard_job(tmp_path)), SHARD_JOB_PINNED)


# ---------------------------------------------------------------------------------------------------------------
# the importer (a READ/BriMPR layout with relative paths, so no absolute tmp path enters the bytes)

CLASSES = ["abseiling", "hurling"]


def _import(root: Path, monkeypatch) -> Path:
    monkeypatch.chdir(root)
    ids = ["a0", "a1", "a2"]
    for i, vid in enumerate(ids):
        rng = np.random.default_rng(i)
        frames = rng.integers(0, 256, size=(3, 24, 32, 3)).astype(np.uint8)
        wave = (0.2 * rng.standard_normal(4000)).astype(np.float32)
        write_reference_clip("frames", "audio", vid, frames, wave)
        write_reference_clip("video_c/fog/severity_2", None, vid, frames[:, ::-1].copy())
    write_label_csv("labels.csv", CLASSES)

    def entry(vid: str, wav: str, video_path: str, label: str) -> dict:
        return {"video_id": vid, "wav": wav, "video_path": video_path, "labels": label}

    clean = [entry(v, f"../../audio/{v}.wav", "../../frames/", CLASSES[i % 2]) for i, v in enumerate(ids)]
    clean.append(entry("bad", "../../audio/a0.wav", "../../frames/", "no_such_class"))
    write_json_list("json/clean/severity_0.json", clean)
    video = [entry(v, f"../../../audio/{v}.wav", "../../../video_c/fog/severity_2/", CLASSES[0]) for v in ids]
    write_json_list("json/video/fog/severity_2.json", video)
    cfg = ImportConfig(
        out="out",
        dataset="ks",
        labels="labels.csv",
        json=("json",),
        frames=(0, 2),
        **SMALL_JOB,
    )
    summary = run_import(cfg)
    assert summary.ok == 6 and summary.failed == 1
    return root / "out"


IMPORT_PINNED: dict[str, str] = {
    "catalog.parquet": "abee13994bf341bf33a58384",
    "ks/classes.csv": "459d85d13c9fac58c27cc217",
    "ks/test/clean/_parts/job.json": "051139f6e822593cb824dfdc",
    "ks/test/clean/_parts/shard-000000.json": "023a3a3ec50444569d5cc253",
    "ks/test/clean/_parts/shard-000001.json": "cc7688aa36d831c5d8e0adf6",
    "ks/test/clean/failures.parquet": "d966e0a962d1d96d411713dd",
    "ks/test/clean/members.parquet": "0a8a2fde542d69f1f5b4fa05",
    "ks/test/clean/samples.parquet": "060a9103df138409d3aa42d8",
    "ks/test/clean/set.json": "8ab814b06911f0cdb056f23c",
    "ks/test/clean/shard-000000.tar": "723aa297f46dd8f5ad36c684",
    "ks/test/clean/shard-000000.tar:content": "14f256403c8e2f9efbd46d33",
    "ks/test/clean/shard-000000.tar:fbank": "9568107a25eb98c2618ad8fd",
    "ks/test/clean/shard-000001.tar": "875d281448f96c2bfe3d5c0a",
    "ks/test/clean/shard-000001.tar:content": "40c34caaf20eab5c3ae2a86e",
    "ks/test/clean/shard-000001.tar:fbank": "a235e4dd131a1ea6529b3b84",
    "ks/test/clean/shards.parquet": "2583769537e25fca49ab2e9a",
    "ks/test/video/fog/severity_2/_parts/job.json": "11d7d51a1df2a424cbfaffe8",
    "ks/test/video/fog/severity_2/_parts/shard-000000.json": "897c5351275409ddac72906a",
    "ks/test/video/fog/severity_2/_parts/shard-000001.json": "741167701f84c7684e1df2a6",
    "ks/test/video/fog/severity_2/failures.parquet": "1e3063c47d0dfeadf4055ba8",
    "ks/test/video/fog/severity_2/members.parquet": "e61a7af831a0731ecc281252",
    "ks/test/video/fog/severity_2/samples.parquet": "e6ee36f5a42585495e31e5e7",
    "ks/test/video/fog/severity_2/set.json": "6e4ff593cfc988e50ef12d18",
    "ks/test/video/fog/severity_2/shard-000000.tar": "1a1534f96950b901f1eef9dd",
    "ks/test/video/fog/severity_2/shard-000000.tar:content": "485d7cf4641332bc2897e87c",
    "ks/test/video/fog/severity_2/shard-000000.tar:fbank": "9568107a25eb98c2618ad8fd",
    "ks/test/video/fog/severity_2/shard-000001.tar": "1d11932cbe26823a16361035",
    "ks/test/video/fog/severity_2/shard-000001.tar:content": "3ab53801a996d488588f688a",
    "ks/test/video/fog/severity_2/shard-000001.tar:fbank": "a235e4dd131a1ea6529b3b84",
    "ks/test/video/fog/severity_2/shards.parquet": "e8c172502a5403b775163e51",
}


def test_import_bytes_pinned(tmp_path, monkeypatch):
    check_pinned(digests(_import(tmp_path, monkeypatch)), IMPORT_PINNED)


if __name__ == "__main__":  # print the digests of the current code (to record the constants)
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        print(json.dumps(digests(_shard_job(Path(d))), indent=4))
    with tempfile.TemporaryDirectory() as d:
        mp = pytest.MonkeyPatch()
        print(json.dumps(digests(_import(Path(d), mp)), indent=4))
        mp.undo()
    sys.exit(0)
