"""The bytes of a small shard job and a small import are pinned: a refactor must not change one written byte.

The constants below were recorded from the code before the set-job refactor (issue 11, section 1), then re-recorded
once for schema version 2 (issue 16, a deliberate format change): corrupted frames are made from the decoded clean
JPEGs, as the clean set stores them, with one generator per frame, so that a reader corrupting the clean set on the
fly yields the written sets' samples; every metadata member and job fingerprint carries the new version, which is
why the import's bytes changed too. Every file the two jobs write is pinned (tars, parquet tables, part and set JSON
files, classes.csv).

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
    "catalog.parquet": "f3cdcc34e8828b179d0854e6",
    "toy/classes.csv": "96ab9fadc40b9a32b9dd8704",
    "toy/test/audio/gaussian_noise/severity_2/_parts/job.json": "a0e266c358ab970eaff7cb2a",
    "toy/test/audio/gaussian_noise/severity_2/_parts/shard-000000.json": "c957e247b18ab7e5e342c1de",
    "toy/test/audio/gaussian_noise/severity_2/_parts/shard-000001.json": "dcf7ec5f7dbb2ed0302677b0",
    "toy/test/audio/gaussian_noise/severity_2/failures.parquet": "1e3063c47d0dfeadf4055ba8",
    "toy/test/audio/gaussian_noise/severity_2/members.parquet": "8b57120eadd387c1f79d6793",
    "toy/test/audio/gaussian_noise/severity_2/samples.parquet": "bfb836eeeccaf33055dbe53f",
    "toy/test/audio/gaussian_noise/severity_2/set.json": "63f3eee9b93428174bb4aa26",
    "toy/test/audio/gaussian_noise/severity_2/shard-000000.tar": "41e7657d3bc4de113872518a",
    "toy/test/audio/gaussian_noise/severity_2/shard-000000.tar:content": "f369806ca8e06c5c1c690ce4",
    "toy/test/audio/gaussian_noise/severity_2/shard-000000.tar:fbank": "56c201733a45e4ccbe37072f",
    "toy/test/audio/gaussian_noise/severity_2/shard-000001.tar": "39c8c936f3a5f8aed3346cf8",
    "toy/test/audio/gaussian_noise/severity_2/shard-000001.tar:content": "5a689ff79dd6fc9b22a00650",
    "toy/test/audio/gaussian_noise/severity_2/shard-000001.tar:fbank": "eb4ee77181ebaa119a4aa943",
    "toy/test/audio/gaussian_noise/severity_2/shards.parquet": "1bba29cd2413313a1def4300",
    "toy/test/clean/_parts/job.json": "c114d8a9e16a323d43097aba",
    "toy/test/clean/_parts/shard-000000.json": "74d7ae24bac270e46ff43fc7",
    "toy/test/clean/_parts/shard-000001.json": "64ff3d988eab9749a3d346a0",
    "toy/test/clean/failures.parquet": "1e3063c47d0dfeadf4055ba8",
    "toy/test/clean/members.parquet": "27462ff32df00542054443aa",
    "toy/test/clean/samples.parquet": "5ad677e5ef88378cb8929e26",
    "toy/test/clean/set.json": "d4238867a2f1663f6c3ba9c1",
    "toy/test/clean/shard-000000.tar": "5988ca873b613efd927a8877",
    "toy/test/clean/shard-000000.tar:content": "ac74b6a6c9b02161a2a6c6c3",
    "toy/test/clean/shard-000000.tar:fbank": "abc8e0879dde132157d2574f",
    "toy/test/clean/shard-000001.tar": "b9ca0d443bf78261c62de847",
    "toy/test/clean/shard-000001.tar:content": "7c1bad53e6f8b695d699d75b",
    "toy/test/clean/shard-000001.tar:fbank": "483bf5c100cc31e53f25810f",
    "toy/test/clean/shards.parquet": "7686a2b63b14fb23cd7fea27",
    "toy/test/video/gaussian_noise/severity_3/_parts/job.json": "9352ca892776d957db383558",
    "toy/test/video/gaussian_noise/severity_3/_parts/shard-000000.json": "b992fde0499865e987090192",
    "toy/test/video/gaussian_noise/severity_3/_parts/shard-000001.json": "807eed4d441c0c1daac7cf4d",
    "toy/test/video/gaussian_noise/severity_3/failures.parquet": "1e3063c47d0dfeadf4055ba8",
    "toy/test/video/gaussian_noise/severity_3/members.parquet": "12a1d58f05fe30cee058ecdf",
    "toy/test/video/gaussian_noise/severity_3/samples.parquet": "39d91b7d478046e5509eb9fd",
    "toy/test/video/gaussian_noise/severity_3/set.json": "9d657bc2de1f243ea92b0575",
    "toy/test/video/gaussian_noise/severity_3/shard-000000.tar": "1d3561f7db50f4a303d2a90e",
    "toy/test/video/gaussian_noise/severity_3/shard-000000.tar:content": "ac79e4094b169817f29f4e59",
    "toy/test/video/gaussian_noise/severity_3/shard-000000.tar:fbank": "abc8e0879dde132157d2574f",
    "toy/test/video/gaussian_noise/severity_3/shard-000001.tar": "4631de593434dcab2e21f59a",
    "toy/test/video/gaussian_noise/severity_3/shard-000001.tar:content": "66d6fe7d356aa65342aca51f",
    "toy/test/video/gaussian_noise/severity_3/shard-000001.tar:fbank": "483bf5c100cc31e53f25810f",
    "toy/test/video/gaussian_noise/severity_3/shards.parquet": "3935baa6a01003dfffe14d75",
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
    "catalog.parquet": "045732ccb468df6b997df7a6",
    "ks/classes.csv": "459d85d13c9fac58c27cc217",
    "ks/test/clean/_parts/job.json": "a964dfba3d6b5904647ae3b6",
    "ks/test/clean/_parts/shard-000000.json": "6c8e6b0c2e2753854b8bb3fc",
    "ks/test/clean/_parts/shard-000001.json": "f1aac1c1d8c511c3d9978165",
    "ks/test/clean/failures.parquet": "d966e0a962d1d96d411713dd",
    "ks/test/clean/members.parquet": "0a8a2fde542d69f1f5b4fa05",
    "ks/test/clean/samples.parquet": "060a9103df138409d3aa42d8",
    "ks/test/clean/set.json": "ae5f9769c5195a050efd69c9",
    "ks/test/clean/shard-000000.tar": "8394261604ffcb89851844ae",
    "ks/test/clean/shard-000000.tar:content": "5317d1567cce54164d8697d9",
    "ks/test/clean/shard-000000.tar:fbank": "9568107a25eb98c2618ad8fd",
    "ks/test/clean/shard-000001.tar": "b35344065ae6a126da094b8b",
    "ks/test/clean/shard-000001.tar:content": "ec89202e15c199a4046ba820",
    "ks/test/clean/shard-000001.tar:fbank": "a235e4dd131a1ea6529b3b84",
    "ks/test/clean/shards.parquet": "b508f9f6c5e375f2044c610f",
    "ks/test/video/fog/severity_2/_parts/job.json": "57ecbc42ef7fe1ea44af1ee5",
    "ks/test/video/fog/severity_2/_parts/shard-000000.json": "4385529c123b85ac40e35895",
    "ks/test/video/fog/severity_2/_parts/shard-000001.json": "eadd557dc8f201fcd04aa0e4",
    "ks/test/video/fog/severity_2/failures.parquet": "1e3063c47d0dfeadf4055ba8",
    "ks/test/video/fog/severity_2/members.parquet": "e61a7af831a0731ecc281252",
    "ks/test/video/fog/severity_2/samples.parquet": "e6ee36f5a42585495e31e5e7",
    "ks/test/video/fog/severity_2/set.json": "3bf87036a55da02da75edde9",
    "ks/test/video/fog/severity_2/shard-000000.tar": "bd1e2f6452007195530dee53",
    "ks/test/video/fog/severity_2/shard-000000.tar:content": "6a46fd71c4098ac1c7a63ed2",
    "ks/test/video/fog/severity_2/shard-000000.tar:fbank": "9568107a25eb98c2618ad8fd",
    "ks/test/video/fog/severity_2/shard-000001.tar": "721745e2495a55761013055d",
    "ks/test/video/fog/severity_2/shard-000001.tar:content": "acba4d01154bfd9fffab6e25",
    "ks/test/video/fog/severity_2/shard-000001.tar:fbank": "a235e4dd131a1ea6529b3b84",
    "ks/test/video/fog/severity_2/shards.parquet": "72abff9356bb98fa106cf5d3",
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
