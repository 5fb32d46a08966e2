"""``avtta demo --balance`` (avtta/demo_balance.py): three source models x Source/READ/BriMPR, on the quick data."""

from __future__ import annotations

import json

import pytest


def test_balance_flag_is_registered():
    from avtta.cli import build_parser

    args = build_parser().parse_args(["demo", "--balance", "--quick", "--out", "o"])
    assert args.balance and args.quick and callable(args.func)
    assert not build_parser().parse_args(["demo"]).balance


def test_variants_are_the_three_source_models():
    from avtta.models.train import TrainConfig

    from avtta.demo import PROFILES
    from avtta.demo_balance import balance_variants

    default = balance_variants(PROFILES["default"])
    assert default == {
        "plain": {},
        "resample": {"resample": "sample", "resample_warmup": 5},  # the official warm-up
        "structure": {"structure_loss": 0.1, "structure_queue": 256},
    }
    for profile in ("quick", "default"):
        p = PROFILES[profile]
        for options in balance_variants(p).values():
            cfg = TrainConfig(epochs=p.epochs, **options)  # valid
            assert cfg.resample == "none" or cfg.resample_warmup < p.epochs  # re-sampled epochs follow the warm-up


@pytest.mark.slow
def test_balance_demo_on_quick_data_then_cached(quick_demo):
    """On the quick demo's ``--data`` / ``--out``: its videos, shards and plain source model are reused (one catalog),
    then re-sampled / structure-loss source models -> Source, READ, BriMPR -> table + plot; a rerun is cached."""
    from avtta.shards.schema import SCHEMA_VERSION

    from avtta.demo_balance import BALANCE_METHODS, run_balance_demo

    tmp_path, demo = quick_demo
    result = run_balance_demo(out=tmp_path / "runs", data=tmp_path / "data", quick=True, workers=0, progress=False)
    assert result.out == tmp_path / "runs" / "quick" / "balance"
    # the demo's data, shards and source model, found where `avtta demo` put them: nothing generated or sharded again
    assert result.cached == ["generate", "shard", "train plain"]
    catalog = str(tmp_path / "data" / "quick" / f"shards-v{SCHEMA_VERSION}")
    assert json.loads((result.out / "balance.json").read_text())["catalog"] == catalog
    assert json.loads((demo.out / "demo.json").read_text())["catalog"] == catalog
    assert sorted(p.name for p in (tmp_path / "data" / "quick").iterdir()) == [f"shards-v{SCHEMA_VERSION}", "videos"]
    assert result.clean["plain"] == demo.clean
    models = ("plain", "resample", "structure")
    assert {(r["model"], r["method"], r["corruption"]) for r in result.rows} == {
        (m, x, c) for m in models for x in BALANCE_METHODS for c in ("v:gaussian_noise", "a:gaussian_noise")
    }
    assert all(0.0 <= r["accuracy"] <= 100.0 and r["samples"] == 24 for r in result.rows)
    assert {m: set(v) for m, v in result.clean.items()} == dict.fromkeys(models, {"acc_multimodal", "acc_audio",
                                                                                 "acc_video"})  # fmt: skip
    # The options really trained: epoch 2 re-sampled (after a 1-epoch warm-up), the structure loss active.
    history = json.loads((result.out / "models" / "resample" / "history.json").read_text())
    assert "resample_rows" not in history[0] and history[1]["resample_rows"] >= 48
    history = json.loads((result.out / "models" / "structure" / "history.json").read_text())
    assert history[-1]["structure_loss"] > 0
    for name in ("table_balance.md", "balance.png", "results.parquet", "balance.json"):
        assert (result.out / name).stat().st_size > 0, name
    table = (result.out / "table_balance.md").read_text()
    assert all(f"| {m}: {x} |" in table for m in models for x in BALANCE_METHODS)
    assert "| resample | --resample sample --resample-warmup 1 |" in table

    again = run_balance_demo(out=tmp_path / "runs", data=tmp_path / "data", quick=True, workers=0, progress=False)
    assert set(again.cached) == {"generate", "shard", *(f"{s} {m}" for s in ("train", "adapt") for m in models)}
    assert again.table == result.table
