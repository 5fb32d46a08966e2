"""The set-job framework's small contracts: one failure-row format, one sample record, one Ray helper, the CLI."""

from __future__ import annotations

import functools

import pytest
from avtta.pipelines.ray_runner import FunctionWorker, run_tasks
from avtta.pipelines.setjob import SampleFailure, failure_row
from avtta.shards.schema import METADATA_FIELDS, SAMPLES_SCHEMA, SampleRecord

from avtta.cli import build_parser
from avtta.cli._common import config_from_args


def test_failure_row_has_one_format():
    assert failure_row("a.mp4", "a", SampleFailure("missing wav: x"))["reason"] == "missing wav: x"
    assert failure_row("a.mp4", "a", "duplicate video id 'a'")["reason"] == "duplicate video id 'a'"
    assert failure_row("a", "a", KeyError("k"))["reason"] == "unexpected KeyError: 'k'"
    assert failure_row("a", "a", OSError("x"), expected=(OSError,))["reason"] == "x"
    row = failure_row("a.mp4", "a", ValueError("bad"), context="video:fog@3")
    assert row == {"path": "a.mp4", "video_id": "a", "reason": "video:fog@3: ValueError: bad"}


def test_sample_record_derives_metadata_row_and_schema():
    rec = SampleRecord(
        key="k", video_id="k", source="s.mp4", labels=(3, 1), label_names=("c", "a"), corruption="clean",
        severity=0, params={"b": 1, "a": [2]}, seed=0, fps=29.97002997, duration=1.23456789, sample_rate=16000,
        num_frames=10, missing=("audio",), extra={"decode": {"x": 1}},
    )  # fmt: skip
    meta = rec.metadata()
    assert set(meta) == set(METADATA_FIELDS) | {"decode"}
    assert meta["fps"] == 29.97003 and meta["duration"] == 1.234568  # rounded in the metadata only
    row = rec.row("shard-000000.tar")
    assert list(row) == SAMPLES_SCHEMA.names  # one column per row key, in schema order
    assert row["label"] == 1 and row["fps"] == 29.97002997 and row["missing"] == "audio"
    assert row["params"] == '{"a": [2], "b": 1}'


class _Doubler:
    def __init__(self, offset: int):
        self.offset = offset

    def double(self, task: int) -> int:
        return 2 * task + self.offset


def test_run_tasks_in_process_keeps_order():
    out = run_tasks([3, 1, 2], make_worker=functools.partial(_Doubler, 1), call="double", workers=0, progress=False)
    assert out == [7, 3, 5]
    assert run_tasks([], make_worker=functools.partial(FunctionWorker, abs), workers=0) == []
    with pytest.raises(ValueError, match="workers must be >= 0"):
        run_tasks([1], make_worker=functools.partial(FunctionWorker, abs), workers=-1)


def test_run_tasks_on_ray_keeps_order(ray_local):
    out = run_tasks(list(range(7)), make_worker=functools.partial(FunctionWorker, abs), workers=2, progress=False)
    assert out == list(range(7))


def test_cli_unset_options_keep_library_defaults():
    from avtta.pipelines.importer import ImportConfig
    from avtta.pipelines.shard_job import ShardJobConfig

    parser = build_parser()
    args = parser.parse_args(["shard", "--videos", "v", "--out", "o", "--dataset", "d"])
    assert config_from_args(ShardJobConfig, args, corrupt=tuple) == ShardJobConfig(videos="v", out="o", dataset="d")
    args = parser.parse_args(
        ["-v", "shard", "--videos", "v", "--out", "o", "--dataset", "d", "--frames", "4", "--corrupt", "none",
         "video:fog@1", "--no-progress", "--waveform"]
    )  # fmt: skip
    cfg = config_from_args(ShardJobConfig, args, corrupt=tuple)
    assert (cfg.frames, cfg.corrupt, cfg.progress, cfg.verbose) == (4, ("none", "video:fog@1"), False, True)
    assert cfg.waveform
    args = parser.parse_args(["import", "--json", "j", "--out", "o", "--dataset", "d"])
    cfg = config_from_args(ImportConfig, args, json=tuple, path_map=tuple)
    assert cfg == ImportConfig(out="o", dataset="d", json=("j",))


def test_cli_help_shows_the_config_defaults(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["shard", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "clips per shard (default: 256)" in text and "(default: test)" in text
