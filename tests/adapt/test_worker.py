"""`avtta adapt` end to end on tiny real shards: every protocol, every method, tables and heatmap, Ray fan-out."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from avtta.adapt import list_methods
from avtta.adapt.worker import AdaptConfig, run_adaptation
from avtta.pipelines.shard_job import ShardJobConfig, run_shard_job

SPECS = ("none", "video:gaussian_noise@5", "video:fog@5", "audio:gaussian_noise@5", "av:gaussian@5")


@pytest.fixture(scope="module")
def catalog(toy_catalog):
    return toy_catalog(SPECS)


def cfg(catalog, checkpoint, out, **kw):
    base = dict(
        catalog=str(catalog),
        dataset="toy",
        checkpoint=str(checkpoint),
        seeds=(111,),
        batch_size=4,
        num_workers=0,
        out=str(out),
        progress=False,
        method_config={"brimpr": {"num_samples_source": 6}, "eata": {"fisher_size": 6}},
    )
    base.update(kw)
    return AdaptConfig(**base)


def test_all_methods_video_protocol(catalog, checkpoint, tmp_path):
    rows = run_adaptation(cfg(catalog, checkpoint, tmp_path / "run", protocol="video", methods=("all",)))
    assert [r["method"] for r in rows[::2]] == list_methods()  # every registered method, in registry order
    assert [r["corruption"] for r in rows[:2]] == ["gaussian_noise", "fog"]  # reference order
    for r in rows:
        assert r["samples"] == 6 and r["batches"] == 2 and 0.0 <= r["accuracy"] <= 100.0
    table = pq.read_table(tmp_path / "run" / "results.parquet")
    assert table.num_rows == 2 * len(list_methods())
    for name in ("results.csv", "table.md", "heatmap.png", "config.json"):
        assert (tmp_path / "run" / name).stat().st_size > 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["conditions"] == ["gaussian_noise", "fog"]
    # the source stats / Fisher caches were written as safetensors beside the catalog
    assert sorted(p.suffix for p in (catalog / "_cache").iterdir()) == [".safetensors", ".safetensors"]
    # their names are the cache keys of earlier runs: <key>-<checkpoint>-<source set job>-<n>-f<frame>-<order>
    names = sorted(p.name for p in (catalog / "_cache").iterdir())
    assert [n.split("-")[0] for n in names] == ["brimpr", "fisher"]
    assert names[0].endswith("-6-feval-ix.safetensors") and names[0].startswith("brimpr-stats-")
    assert names[1].endswith("-6-feval-ix.safetensors")
    # rerunning gives identical numbers (deterministic shuffling and resets)
    again = run_adaptation(cfg(catalog, checkpoint, tmp_path / "run2", protocol="video", methods=("all",)))
    assert [r["accuracy"] for r in again] == [r["accuracy"] for r in rows]
    # `avtta report` re-renders the tables
    (tmp_path / "run" / "table.md").unlink()
    res = subprocess.run(
        [sys.executable, "-m", "avtta", "report", str(tmp_path / "run")], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    assert "| method |" in res.stdout and (tmp_path / "run" / "table.md").exists()


@pytest.mark.parametrize(
    "protocol,expect",
    [
        ("audio", ["gaussian_noise"]),
        ("av", ["gaussian"]),
        ("both", ["gaussian_noise+gaussian_noise", "fog+gaussian_noise"]),
        ("clean", ["clean"]),
    ],
)
def test_protocols(catalog, checkpoint, tmp_path, protocol, expect):
    rows = run_adaptation(cfg(catalog, checkpoint, tmp_path / protocol, protocol=protocol, methods=("source", "tent")))
    assert [r["corruption"] for r in rows if r["method"] == "tent"] == expect


def test_continual_differs_from_reset(catalog, checkpoint, tmp_path):
    reset = run_adaptation(cfg(catalog, checkpoint, tmp_path / "a", protocol="video", methods=("tent",)))
    cont = run_adaptation(cfg(catalog, checkpoint, tmp_path / "b", protocol="video", methods=("tent",), continual=True))
    assert len(cont) == 2 and all(r["continual"] for r in cont)
    assert cont[0]["accuracy"] == reset[0]["accuracy"]  # the first condition starts from the source model in both


def test_bad_selection_names_the_value(catalog, checkpoint, tmp_path):
    with pytest.raises(ValueError, match="nosuch"):
        run_adaptation(cfg(catalog, checkpoint, tmp_path / "x", protocol="video", corruptions=("nosuch",)))
    with pytest.raises(ValueError, match="unknown TTA method 'nope'"):
        run_adaptation(cfg(catalog, checkpoint, tmp_path / "x", methods=("nope",)))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        run_adaptation(cfg(catalog, tmp_path / "missing.pth", tmp_path / "x"))


@pytest.mark.slow
@pytest.mark.ray
def test_ray_fan_out_on_two_node_cluster_survives_a_lost_worker(catalog, checkpoint, tmp_path, ray_nodes):
    methods = ("source", "tent", "read")
    local = run_adaptation(
        cfg(catalog, checkpoint, tmp_path / "local", protocol="video", methods=methods, valuation=True)
    )
    args = ["adapt", "--catalog", str(catalog), "--dataset", "toy", "--protocol", "video", "--methods",
            ",".join(methods), "--checkpoint", str(checkpoint), "--seeds", "111", "--batch-size", "4", "--workers",
            "0", "--out", str(tmp_path / "ray"), "--ray-address", ray_nodes.address, "--no-progress",
            "--valuation"]  # fmt: skip
    # one actor killed while it adapts: its job is run again from the method's reset state, elsewhere or on the
    # restarted actor, so every number equals the undisturbed in-process run (a half-adapted model would not)
    res = ray_nodes.run_killing(args, "worker")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Ray: 2 workers" in res.stderr  # one actor per node CPU of the 2-node cluster
    assert "adaptation job" in res.stderr and "Ray worker lost" in res.stderr

    def same(row: dict) -> dict:  # timing aside; NaN compared as equal
        return {k: None if v != v else v for k, v in row.items() if k not in ("seconds", "samples_per_s")}

    remote = pq.read_table(tmp_path / "ray" / "results.parquet").to_pylist()
    assert [same(r) for r in remote] == [same(r) for r in local]
    # per sample: the prediction and the modality values phi_a / phi_v, read from the logits of the model as it
    # scored, bit for bit (one torch thread in the actors as in this process)
    remote, local = (pq.read_table(tmp_path / d / "samples.parquet").to_pylist() for d in ("ray", "local"))
    assert [same(r) for r in remote] == [same(r) for r in local]


def test_reference_batch_averaged_accuracy_and_both_tau(catalog, checkpoint, tmp_path):
    import torch
    from avtta.adapt.worker import AdaptationWorker
    from avtta.manifests import open_dataset

    c = cfg(catalog, checkpoint, tmp_path / "r", protocol="video", corruptions=("fog",), methods=("source",))
    row = run_adaptation(c)[0]
    model = AdaptationWorker(c).build_model()
    accs, hits = [], 0
    for batch in open_dataset(catalog, "toy", "test", "video:fog@5", batch_size=4, seed=111, num_workers=0):
        with torch.no_grad():
            hit = int((model(batch["audio"], batch["video"]).argmax(1) == batch["label"]).sum())
        hits += hit
        accs.append(round(100 * hit / len(batch["key"]), 2))
    assert row["accuracy"] == pytest.approx(100 * hits / 6)  # the same float64 ratio: default rel 1e-6 suffices
    assert row["accuracy_batch_avg"] == round(sum(accs) / len(accs), 2)  # the last batch (2 clips) weighs like 4
    # BriMPR's contrastive temperature is 0.25 when both modalities are corrupted (run_both.py), 0.07 otherwise
    both = AdaptationWorker(cfg(catalog, checkpoint, tmp_path / "b", protocol="both"))
    one = AdaptationWorker(cfg(catalog, checkpoint, tmp_path / "o", protocol="video"))
    assert both.method("brimpr").config.tau == 0.25 and one.method("brimpr").config.tau == 0.07


def test_joining_sets_of_different_jobs_is_refused(tmp_path, small_videos):
    from avtta.manifests import open_dataset

    common = dict(videos=str(small_videos), out=str(tmp_path), dataset="toy", frames=2, workers=0, progress=False)
    run_shard_job(ShardJobConfig(corrupt=("video:fog@5",), shard_size=4, **common))
    run_shard_job(ShardJobConfig(corrupt=("audio:gaussian_noise@5",), shard_size=3, **common))
    with pytest.raises(ValueError, match="not made by one job"):
        open_dataset(tmp_path, "toy", "test", ("video:fog@5", "audio:gaussian_noise@5"))


def test_access_modes_read_the_same_samples(catalog, checkpoint, tmp_path):
    """`--access stream` reads the same tensors in another order: Source (no update) scores exactly the same."""
    rows = {}
    for access in ("index", "stream"):
        c = cfg(catalog, checkpoint, tmp_path / access, protocol="video", corruptions=("fog",), methods=("source",))
        rows[access] = run_adaptation(dataclasses.replace(c, access=access))[0]
    assert rows["index"]["accuracy"] == rows["stream"]["accuracy"] and rows["index"]["samples"] == 6
    with pytest.raises(ValueError, match="--access must be 'index' or 'stream', got 'mmap'"):
        run_adaptation(cfg(catalog, checkpoint, tmp_path / "x", access="mmap"))


def test_cli_leaves_unset_options_to_adapt_config(monkeypatch, capsys):
    """`avtta adapt` restates no default: unset options are absent, so AdaptConfig's own defaults apply."""
    import avtta.adapt.worker as worker

    from avtta.cli import build_parser

    seen = []
    monkeypatch.setattr(worker, "run_adaptation", seen.append)
    required = ["adapt", "--catalog", "c", "--dataset", "d", "--checkpoint", "k"]
    for extra in ([], ["--batch-size", "8", "--frame", "4", "--seeds", "1-3", "--no-progress", "--continual"]):
        args = build_parser().parse_args(required + extra)
        assert args.func(args) == 0
    assert seen[0] == AdaptConfig(catalog="c", dataset="d", checkpoint="k")
    assert seen[1] == AdaptConfig(
        catalog="c", dataset="d", checkpoint="k", batch_size=8, frame=4, seeds=(1, 2, 3), progress=False, continual=True
    )
    with pytest.raises(SystemExit):
        build_parser().parse_args(["adapt", "--help"])
    assert f"(default: {AdaptConfig.batch_size})" in capsys.readouterr().out  # the help shows AdaptConfig's value


def test_valuation_and_samples_table(catalog, checkpoint, tmp_path):
    """--valuation adds phi_a / phi_v per sample without changing any result; audio_assist records iterations."""
    methods = ("source", "tent", "read", "audio_assist")
    plain = run_adaptation(cfg(catalog, checkpoint, tmp_path / "plain", protocol="video", methods=methods))
    valued = run_adaptation(
        cfg(catalog, checkpoint, tmp_path / "val", protocol="video", methods=methods, valuation=True)
    )
    assert [r["accuracy"] for r in valued] == [r["accuracy"] for r in plain]
    samples = pq.read_table(tmp_path / "val" / "samples.parquet").to_pylist()
    assert len(samples) == len(methods) * 2 * 6  # methods x conditions x clips
    expected = {"key", "set", "method", "seed", "label", "prediction", "correct", "phi_a", "phi_v", "iterations"}
    assert expected <= set(samples[0])
    # the Shapley values of the 0/1/2 game take only these values, and phi_a + phi_v = v(both) = 2 * correct
    assert {r["phi_a"] for r in samples} <= {-0.5, 0.0, 0.5, 1.0, 1.5}
    assert all(r["phi_a"] + r["phi_v"] == 2.0 * r["correct"] for r in samples)
    assert all((r["iterations"] is not None) == (r["method"] == "audio_assist") for r in samples)
    plain_samples = pq.read_table(tmp_path / "plain" / "samples.parquet").to_pylist()
    assert all(r["phi_a"] is None for r in plain_samples)
    assert [r["prediction"] for r in plain_samples] == [r["prediction"] for r in samples]
    assert (tmp_path / "val" / "valuation.png").stat().st_size > 10_000
    assert not (tmp_path / "plain" / "valuation.png").exists()
    iters = {r["method"]: r["iterations_mean"] for r in valued}
    assert iters["audio_assist"] >= 0 and iters["source"] != iters["source"]  # NaN where no cycle is recorded
