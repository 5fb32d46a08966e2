"""Raw videos -> a Kinetics50-C sweep (15 + 6 severity-5 sets and the clean set): avtta against the reference chain.

Both ways start from the same raw 10-s clips: the real AudioSet clip of shared/fixtures (540 x 360 H.264 29.97 fps,
AAC 44.1 kHz), copied ``--clips`` times under distinct names, and the same five noise recordings.

Reference chain, every script from a checkout outside this repository, each run as its own process as a user runs
it, files untouched:

1. frames: CAV-MAE's ``src/preprocess/extract_video_frame.py`` (OpenCV decoding and seeking, 10 frames per clip,
   Resize(224) + CenterCrop, JPEG q75 through torchvision's ``save_image``);
2. the 16 kHz wav: CAV-MAE's ``src/preprocess/extract_audio.py`` (``ffmpeg -i V -vn -ar 16000`` then ``sox ...
   remix 1``); ffmpeg is the static binary of pip ``imageio-ffmpeg``; there is no sox here, so ``sox IN OUT remix 1``
   is a two-line shell stand-in calling that ffmpeg with ``-af pan=mono|c0=c0`` (keeps channel 1, sample for sample);
3. BriMPR's ``make_corruptions/make_c_video.py --corruption C --severity 5``, once per video corruption, run from
   ``make_corruptions/`` (it opens the frost pictures there) on the JPEG folders; ImageMagick through pip ``Wand``
   and the system libMagickWand (Debian ``libmagickwand-6.q16-6``). Two compatibility shims, set before the script
   runs: ``np.float_ = np.float64`` (NumPy 2 removed the alias its ``plasma_fractal`` uses) and Wand imported first
   (the script points ``MAGICK_HOME`` at its author's home directory);
4. BriMPR's ``make_corruptions/make_c_audio.py --corruption C --severity 5``, once per audio corruption, on the wavs
   (pip ``pydub`` reads and writes WAV itself, without ffmpeg); ``--weather_path`` holds the five recordings;
5. the JSON lists: BriMPR's ``data_process/create_clean_json.py``, ``create_video_c_json.py`` and
   ``create_audio_c_json.py`` (these two write severities 1-5, as they do; a refer JSON gives the labels).

The reference never computes the fbank offline: its data loader does it on every read (``--loader-fbank`` times
that once per sample of the 22 sets, as an extra line, not part of the end-to-end figure).

avtta: ``avtta shard --corrupt video:all@5 audio:all@5 none --reference-frames --noise-dir W`` as a command (its
start-up included), ``--workers 0`` (in-process) and ``--workers 2`` (embedded Ray, start-up included). Then one
in-process run of the same job with timers around its stages (decode, frame resize, clean JPEG, each corruption,
corrupted JPEG, fbank, writing) says where avtta's time goes.

The two ways run interleaved, ``--repeats`` times; every ratio is taken within one repeat. Checkouts::

    fetch github:Luchicken/BriMPR and github:YuanGongND/cav-mae (or git clone them), outside this repository, then
    .venv/bin/pip install -r benchmarks/requirements-refchain.txt && apt-get install libmagickwand-6.q16-6
    unshare -n sh -c 'ip link set lo up && .venv/bin/python benchmarks/bench_refchain.py --brimpr /work/ext/BriMPR \
        --cavmae /work/ext/cav-mae'

Without ``--brimpr`` / ``--cavmae`` only avtta's side runs (and says so).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

from avtta.corruptions import tables

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("AVTTA_SHARED", ROOT.parent / "shared"))
CLIP = SHARED / "fixtures" / "audioset_clip" / "BkjpjAohg-0.mp4"
LABEL = "playing_drums"  # any label of the ks50 CSV; the clip's own AudioSet labels are not Kinetics classes
# Kinetics50-C's five recordings are not public (spec corruptions.md 2.2); the fixtures' recordings stand in, the
# same files for both ways. crowd_speech is 48 kHz stereo, so the reference's crowd wavs come out 48 kHz stereo.
NOISES = {
    "traffic": "concert",
    "crowd": "crowd_speech",
    "rain": "rain",
    "thunder": "crackling_fire_and_siren",
    "wind": "wind",
}
# Runs a BriMPR script unchanged after two compatibility shims (see the module docstring).
BRIMPR_SHIM = (
    "import runpy, sys\n"
    "import numpy as np\n"
    "np.float_ = np.float64\n"
    "import wand.image\n"
    "sys.argv = sys.argv[1:]\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)
SOX_STANDIN = '#!/bin/sh\n# sox IN OUT remix 1: keep channel 1\nexec ffmpeg -nostdin -loglevel error -y -i "$1" \\\n  -af "pan=mono|c0=c0" -c:a pcm_s16le "$2"\n'  # noqa: E501


class StageError(RuntimeError):
    pass


def children_cpu() -> float:
    """CPU seconds (user + system) of the waited-for child processes so far, their own waited-for children included."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_logged(cmd: list[str], log: Path, *, cwd: Path | None = None, env: dict | None = None) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of ``cmd``; its output goes to ``log``, whose tail a failure quotes.

    The CPU seconds count the command and every descendant it waited for (the reference's DataLoader workers), less
    distorted by the machine's other jobs than the wall clock; Ray's workers are not reaped by the command, so an avtta
    run on Ray counts its driver only.
    """
    c0 = children_cpu()
    t0 = time.perf_counter()
    with open(log, "ab") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n".encode())
        fh.flush()
        rc = subprocess.run(cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT, check=False).returncode
    dt, cpu = time.perf_counter() - t0, children_cpu() - c0
    if rc:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise StageError(f"{' '.join(cmd[:4])} ... exited {rc} (log {log}):\n  " + "\n  ".join(tail))
    return dt, cpu


# ---------------------------------------------------------------------------------------------------------------
# inputs


def make_inputs(root: Path, clips: int) -> dict[str, Path]:
    """``clips`` copies of the fixture clip, the noise folder and the label CSV, shared by both ways."""
    if not CLIP.is_file():
        raise SystemExit(f"bench_refchain: the fixture clip {CLIP} is missing (set AVTTA_SHARED to shared/)")
    videos = root / "videos" / LABEL
    videos.mkdir(parents=True, exist_ok=True)
    for i in range(clips):
        p = videos / f"clip{i:04d}.mp4"
        if not p.exists():
            shutil.copyfile(CLIP, p)
    weather = root / "weather"
    weather.mkdir(exist_ok=True)
    for name, folder in NOISES.items():
        src = sorted((SHARED / "fixtures" / "noise" / folder).glob("*.wav"))[0]
        if not (weather / f"{name}.wav").exists():
            shutil.copyfile(src, weather / f"{name}.wav")
    labels = root / "labels.csv"
    labels.write_text(f"index,mid,display_name\n0,{LABEL},{LABEL}\n")
    listing = root / "videos.csv"  # CAV-MAE's input list: one path per line, no header
    listing.write_text("".join(f"{p}\n" for p in sorted(videos.glob("*.mp4"))))
    refer = root / "refer.json"  # the labels create_clean_json.py looks up, as ks50_test_refer.json gives them
    refer.write_text(
        json.dumps({"data": [{"video_id": p.stem, "labels": LABEL} for p in sorted(videos.glob("*.mp4"))]})
    )
    return {"videos": videos.parent, "weather": weather, "labels": labels, "list": listing, "refer": refer}


def tool_dir(root: Path) -> Path:
    """A folder for PATH with ``ffmpeg`` (imageio-ffmpeg's binary) and the ``sox`` stand-in."""
    try:
        import imageio_ffmpeg
    except ImportError:
        raise SystemExit(
            "bench_refchain: the reference side needs pip imageio-ffmpeg (benchmarks/requirements-refchain.txt)"
        ) from None
    bin_dir = root / "bin"
    bin_dir.mkdir(exist_ok=True)
    ffmpeg = bin_dir / "ffmpeg"
    if not ffmpeg.exists():
        ffmpeg.symlink_to(imageio_ffmpeg.get_ffmpeg_exe())
    sox = bin_dir / "sox"
    sox.write_text(SOX_STANDIN)
    sox.chmod(0o755)
    return bin_dir


def check_reference(brimpr: Path, cavmae: Path) -> None:
    need = [
        cavmae / "src/preprocess/extract_video_frame.py",
        cavmae / "src/preprocess/extract_audio.py",
        brimpr / "make_corruptions/make_c_video.py",
        brimpr / "make_corruptions/make_c_audio.py",
        brimpr / "make_corruptions/frost1.png",
        *(brimpr / "data_process" / f for f in ("create_clean_json.py", "create_video_c_json.py")),
        brimpr / "data_process/create_audio_c_json.py",
    ]
    missing = [str(p) for p in need if not p.is_file()]
    if missing:
        raise SystemExit(f"bench_refchain: not in the checkouts: {', '.join(missing)}")
    probe = "import pydub, wand.image, cv2, skimage"
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False)
    if res.returncode:
        raise SystemExit(
            "bench_refchain: the reference scripts need pip pydub and Wand (pip install -r "
            "benchmarks/requirements-refchain.txt) and the system libMagickWand (apt-get install "
            f"libmagickwand-6.q16-6): {res.stderr.strip().splitlines()[-1]}"
        )


# ---------------------------------------------------------------------------------------------------------------
# the reference chain


def reference_chain(root: Path, inputs: dict[str, Path], brimpr: Path, cavmae: Path) -> dict[str, tuple[float, float]]:
    """Run the chain into ``root`` (emptied first); (wall, CPU) seconds per stage."""
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    env = {**os.environ, "PATH": f"{tool_dir(root.parent)}{os.pathsep}{os.environ['PATH']}"}
    log = root / "log.txt"
    py = sys.executable
    frames, wavs = root / "frames", root / "wavs"
    video_c, audio_c, json_root = root / "video_c", root / "audio_c", root / "json"
    pre = cavmae / "src" / "preprocess"
    make_c = brimpr / "make_corruptions"
    stages: dict[str, tuple[float, float]] = {}
    listing = str(inputs["list"])
    stages["frames (decode + extract)"] = run_logged(
        [py, str(pre / "extract_video_frame.py"), "-input_file_list", listing, "-target_fold", str(frames)],
        log,
        env=env,
    )
    stages["16 kHz wav"] = run_logged(
        [py, str(pre / "extract_audio.py"), "-input_file_list", listing, "-target_fold", str(wavs)], log, env=env
    )
    for c in tables.VIDEO_ORDER:
        args = ["--corruption", c, "--severity", "5", "--data_path", str(frames), "--save_path", str(video_c)]
        stages[f"video:{c}"] = run_logged([py, "-c", BRIMPR_SHIM, "make_c_video.py", *args], log, cwd=make_c, env=env)
    for c in tables.AUDIO_ORDER:
        args = ["--corruption", c, "--severity", "5", "--data_path", str(wavs), "--save_path", str(audio_c)]
        args += ["--weather_path", f"{inputs['weather']}/"]
        stages[f"audio:{c}"] = run_logged([py, "make_c_audio.py", *args], log, cwd=make_c, env=env)
    dp = brimpr / "data_process"
    clean_json = json_root / "clean" / "severity_0.json"
    json_cmds = [
        [py, str(dp / "create_clean_json.py"), "--refer-path", str(inputs["refer"]), "--video-path", f"{frames}/",
         "--audio-path", str(wavs), "--save-path", str(json_root)],
        [py, str(dp / "create_video_c_json.py"), "--clean-path", str(clean_json), "--video-c-path", str(video_c),
         "--audio-path", str(wavs)],
        [py, str(dp / "create_audio_c_json.py"), "--clean-path", str(clean_json), "--video-path", f"{frames}/",
         "--audio-c-path", str(audio_c)],
    ]  # fmt: skip
    steps = [run_logged(cmd, log, env=env) for cmd in json_cmds]
    stages["JSON lists"] = (sum(w for w, _ in steps), sum(c for _, c in steps))
    check_reference_outputs(root, len(list(inputs["list"].read_text().split())))
    return stages


def check_reference_outputs(root: Path, clips: int) -> None:
    """Every file of the sweep exists: 10 JPEGs per clip and set, one wav per clip and set, the JSON lists."""
    want = {
        "frames": 10 * clips,
        "wavs": clips,
        **{f"video_c/{c}/severity_5": 10 * clips for c in tables.VIDEO_ORDER},
        **{f"audio_c/{c}/severity_5": clips for c in tables.AUDIO_ORDER},
    }
    for rel, n in want.items():
        got = sum(1 for p in (root / rel).rglob("*") if p.is_file())
        if got != n:
            raise StageError(f"reference chain: {root / rel} holds {got} files, expected {n}")
    lists = list((root / "json").rglob("severity_*.json"))
    if len(lists) != 1 + 5 * (len(tables.VIDEO_ORDER) + len(tables.AUDIO_ORDER)):
        raise StageError(f"reference chain: {len(lists)} JSON lists under {root / 'json'}")


def loader_fbank_seconds(wav_root: Path, audio_c: Path) -> float:
    """Seconds of the reference loader's audio work (read, DC removal, Kaldi fbank) for one read of the 22 sets."""
    import soundfile as sf
    import torch
    import torchaudio

    torch.set_num_threads(1)  # as each DataLoader worker of the reference runs it
    wavs = sorted(wav_root.glob("*.wav"))
    sets = [wavs] * (1 + len(tables.VIDEO_ORDER)) + [
        sorted((audio_c / c / "severity_5").glob("*.wav")) for c in tables.AUDIO_ORDER
    ]
    t0 = time.perf_counter()
    for files in sets:
        for f in files:
            data, sr = sf.read(f, dtype="float32", always_2d=True)
            w = torch.from_numpy(data.T.copy())
            w = w - w.mean()
            torchaudio.compliance.kaldi.fbank(
                w, htk_compat=True, sample_frequency=sr, use_energy=False, window_type="hanning", num_mel_bins=128,
                dither=0.0, frame_shift=10,
            )  # fmt: skip
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------------------------
# avtta


def shard_args(inputs: dict[str, Path], out: Path, workers: int, shard_size: int) -> list[str]:
    return [
        "--videos", str(inputs["videos"]), "--labels", str(inputs["labels"]), "--out", str(out), "--dataset", "ks50",
        "--corrupt", "video:all@5", "audio:all@5", "none", "--reference-frames", "--noise-dir", str(inputs["weather"]),
        "--shard-size", str(shard_size), "--workers", str(workers), "--no-progress",
    ]  # fmt: skip


def avtta_command(root: Path, inputs: dict[str, Path], workers: int, shard_size: int) -> tuple[float, float]:
    """(wall, CPU) seconds of the ``avtta shard`` command (process start, imports, Ray start-up included)."""
    out = root / f"avtta-{workers}"
    shutil.rmtree(out, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "avtta", "shard", *shard_args(inputs, out, workers, shard_size)]
    log = root / f"avtta-{workers}.log"
    timing = run_logged(cmd, log)
    # The command's summary line, e.g. "8 clips: 8 ok, 0 failed; 22 shard sets, ...": every clip in every set.
    clips = len(inputs["list"].read_text().split())
    summary = re.findall(r"^(\d+) clips: (\d+) ok, (\d+) failed; (\d+) shard sets", log.read_text(), re.M)
    if not summary or summary[-1] != (str(clips), str(clips), "0", "22"):
        raise StageError(f"avtta shard did not write {clips} clips into 22 sets: {summary[-1:]} (log {log})")
    return timing


@contextmanager
def stage_timers():
    """Timers around the shard job's stage functions (wrapping the real functions; outputs unchanged).

    Yields a dict stage -> [wall seconds, CPU seconds of this process] (the job runs single-threaded in-process).
    """
    import avtta.pipelines.decode as decode
    import avtta.pipelines.features as features
    import avtta.pipelines.shard_job as job
    from avtta.pipelines import setjob

    spent: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])

    def timed(fn, label_of):
        def wrapper(*a, **kw):
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                return fn(*a, **kw)
            finally:
                acc = spent[label_of(*a, **kw)]
                acc[0] += time.perf_counter() - t0
                acc[1] += time.process_time() - c0

        return wrapper

    saved = [
        (decode, "decode_clip"), (decode, "resize_center_crop"), (features, "compute_fbank"),
        (job, "apply_corruption"), (job, "encode_jpeg"), (job, "decode_rgb"),
        (setjob.ChunkOutput, "add"), (setjob.ChunkOutput, "commit"),
    ]  # fmt: skip
    originals = [(obj, name, getattr(obj, name)) for obj, name in saved]
    decode.decode_clip = timed(decode.decode_clip, lambda *a, **k: "decode_clip")
    decode.resize_center_crop = timed(decode.resize_center_crop, lambda *a, **k: "frame resize + crop")
    features.compute_fbank = timed(features.compute_fbank, lambda *a, **k: "fbank")
    job.apply_corruption = timed(job.apply_corruption, lambda spec, *a, **k: f"corrupt {spec}")
    job.encode_jpeg = timed(job.encode_jpeg, lambda f, q, *a, **k: f"JPEG encode q{q}")
    job.decode_rgb = timed(job.decode_rgb, lambda *a, **k: "clean JPEG decode (frames corrupted)")
    setjob.ChunkOutput.add = timed(setjob.ChunkOutput.add, lambda *a, **k: "writing (tar members)")
    setjob.ChunkOutput.commit = timed(setjob.ChunkOutput.commit, lambda *a, **k: "writing (commit shards, parts)")
    try:
        yield spent
    finally:
        for obj, name, fn in originals:
            setattr(obj, name, fn)


def avtta_profile(root: Path, inputs: dict[str, Path], shard_size: int) -> dict[str, tuple[float, float]]:
    """One in-process run of the same job with stage timers: (wall, CPU) seconds per stage, "total" included."""
    from avtta.pipelines.shard_job import run_shard_job

    out = root / "avtta-profile"
    shutil.rmtree(out, ignore_errors=True)
    cfg = shard_config(inputs, out, shard_size)
    with stage_timers() as spent:
        t0, c0 = time.perf_counter(), time.process_time()
        run_shard_job(cfg)
        total = (time.perf_counter() - t0, time.process_time() - c0)
    stages = {k: tuple(v) for k, v in spent.items()}
    dec, crop = stages.pop("decode_clip"), stages.get("frame resize + crop", (0.0, 0.0))
    stages["decode (PyAV demux, decode, resample)"] = (dec[0] - crop[0], dec[1] - crop[1])
    stages["other (planning, manifests, catalog, Python)"] = tuple(
        t - sum(v[i] for v in stages.values()) for i, t in enumerate(total)
    )
    stages["total"] = total
    return stages


def shard_config(inputs: dict[str, Path], out: Path, shard_size: int):
    """The ShardJobConfig the CLI builds from :func:`shard_args` (in-process)."""
    from avtta.pipelines.shard_job import ShardJobConfig

    from avtta.cli import build_parser
    from avtta.cli._common import config_from_args

    args = build_parser().parse_args(["shard", *shard_args(inputs, out, 0, shard_size)])
    return config_from_args(ShardJobConfig, args, corrupt=tuple)


# ---------------------------------------------------------------------------------------------------------------


def load() -> str:
    return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips", type=int, default=8, help="copies of the fixture clip (default: 8)")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved repetitions of both ways (default: 2)")
    ap.add_argument("--brimpr", type=Path, help="checkout of Luchicken/BriMPR (none: avtta's side only)")
    ap.add_argument("--cavmae", type=Path, help="checkout of YuanGongND/cav-mae (frame and audio extraction)")
    ap.add_argument("--ray-workers", type=int, default=2, help="Ray workers of the second avtta run (default: 2)")
    ap.add_argument("--loader-fbank", action="store_true", help="also time the reference loader's fbank per read")
    ap.add_argument("--workdir", type=Path, help="keep the data here (default: a temporary folder, removed)")
    ap.add_argument("--csv", type=Path, help="write the per-stage table here")
    ap.add_argument("--json", type=Path, help="write every figure here")
    args = ap.parse_args(argv)
    if args.clips < 2:
        ap.error("--clips must be >= 2 (CAV-MAE's list reader needs two rows)")
    if (args.brimpr is None) != (args.cavmae is None):
        ap.error("--brimpr and --cavmae go together (the reference side needs both checkouts)")
    reference = args.brimpr is not None
    if reference:
        check_reference(args.brimpr.resolve(), args.cavmae.resolve())
    root = args.workdir or Path(tempfile.mkdtemp(prefix="avtta-refchain-"))
    root.mkdir(parents=True, exist_ok=True)
    inputs = make_inputs(root, args.clips)
    # Chunks of clips are the unit of parallel work: at least two per Ray worker, the same for both avtta runs.
    shard_size = max(1, args.clips // (2 * args.ray_workers))
    print(f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}; {args.clips} copies of {CLIP.name} (10 s, 540x360); 15 video + 6 audio "
          f"severity-5 sets + clean; shard size {shard_size}; {load()}", flush=True)  # fmt: skip
    if not reference:
        print("# reference side skipped: give --brimpr and --cavmae checkouts (see --help)")
    ways = ["avtta in-process", f"avtta Ray x{args.ray_workers}"] + (["reference chain"] if reference else [])
    runs: list[dict[str, tuple[float, float]]] = []
    ref_stages: list[dict[str, tuple[float, float]]] = []
    fbank_read = None
    try:
        for rep in range(args.repeats):
            row: dict[str, tuple[float, float]] = {}
            for way in ways if rep % 2 == 0 else ways[::-1]:
                if way == "reference chain":
                    stages = reference_chain(root / "reference", inputs, args.brimpr.resolve(), args.cavmae.resolve())
                    ref_stages.append(stages)
                    row[way] = (sum(w for w, _ in stages.values()), sum(c for _, c in stages.values()))
                else:
                    workers = 0 if way == "avtta in-process" else args.ray_workers
                    row[way] = avtta_command(root, inputs, workers, shard_size)
                print(f"repeat {rep + 1}: {way:18s} {row[way][0]:7.1f} s wall, {row[way][1]:7.1f} s CPU, "
                      f"{args.clips / row[way][0]:6.3f} clips/s  ({load()})", flush=True)  # fmt: skip
            runs.append(row)
        print("(stage timers: one more in-process run of the same job)", flush=True)
        prof = avtta_profile(root, inputs, shard_size)
        if reference and args.loader_fbank:
            fbank_read = loader_fbank_seconds(root / "reference" / "wavs", root / "reference" / "audio_c")
    except StageError as err:
        print(f"bench_refchain: {err}", file=sys.stderr)
        return 1
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps({
            "clips": args.clips, "shard_size": shard_size, "runs": runs, "reference_stages": ref_stages,
            "avtta_stages": prof, "loader_fbank_s": fbank_read, "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
        }, indent=2))  # fmt: skip
    table = report(args.clips, ways, runs, ref_stages, prof, fbank_read)
    if args.csv:
        with open(args.csv, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(table[0]))
            w.writeheader()
            w.writerows(table)
    return 0


def report(n: int, ways: list[str], runs: list[dict], ref_stages: list[dict], prof: dict, fbank_read) -> list[dict]:
    """Print the end-to-end and per-stage tables; the per-stage rows."""
    reference = bool(ref_stages)
    print(f"\n| way | wall s (best / median of {len(runs)}) | clips/s (best) | CPU s (best) |"
          + (" speed-up, wall, per repeat | speed-up, CPU, per repeat |" if reference else "")
          + "\n|---|---:|---:|---:|" + ("---:|---:|" if reference else ""))  # fmt: skip
    for way in ways:
        wall = [r[way][0] for r in runs]
        line = f"| {way} | {min(wall):.1f} / {statistics.median(wall):.1f} | {n / min(wall):.3f} | "
        line += f"{min(r[way][1] for r in runs):.1f} |"
        if reference:
            for i in (0, 1):
                line += " " + ", ".join(f"{r['reference chain'][i] / r[way][i]:.1f}x" for r in runs) + " |"
        print(line)
    table: list[dict] = []
    if reference:
        best = min(ref_stages, key=lambda s: sum(w for w, _ in s.values()))
        total = (sum(w for w, _ in best.values()), sum(c for _, c in best.values()))
        table += stage_rows("reference", {**best, "total": total}, n)
    table += stage_rows("avtta in-process", prof, n)
    print("\n| way | stage | wall s | CPU s | CPU ms per clip | share of CPU |\n|---|---|---:|---:|---:|---:|")
    for r in table:
        print(f"| {r['way']} | {r['stage']} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} | {r['cpu_ms_per_clip']:.0f} | "
              f"{r['cpu_share_pct']:.1f} % |")  # fmt: skip
    if fbank_read is not None:
        print(f"\nreference loader, audio of one read of the 22 sets (wav, DC, Kaldi fbank): {fbank_read:.2f} s, "
              f"{1000 * fbank_read / (22 * n):.1f} ms per sample, paid again on every pass")  # fmt: skip
    return table


def stage_rows(way: str, stages: dict[str, tuple[float, float]], n: int) -> list[dict]:
    """Rows way, stage, wall_s, cpu_s, cpu_ms_per_clip, cpu_share_pct, the largest CPU first, the total last."""
    total_cpu = stages["total"][1] or 1.0
    order = sorted((k for k in stages if k != "total"), key=lambda k: -stages[k][1]) + ["total"]
    if way == "reference":
        order = [k for k in stages if k != "total"] + ["total"]  # the chain's own order
    return [
        {"way": way, "stage": k, "wall_s": stages[k][0], "cpu_s": stages[k][1],
         "cpu_ms_per_clip": 1000 * stages[k][1] / n, "cpu_share_pct": 100 * stages[k][1] / total_cpu}
        for k in order
    ]  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
