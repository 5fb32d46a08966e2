"""Training loop (``avtta.models.train``) on in-memory batches; the ``avtta train`` command line."""

from __future__ import annotations

import json

import pytest
import torch
from avtta.models import create_model
from avtta.models.train import EVAL_MODES, TrainConfig, eval_logits, evaluate, lr_factor, train

from avtta.cli import build_parser

NUM_CLASSES = 4


class Batches:
    """An epoch of in-memory batches; the label is visible in both modalities (a learnable toy task)."""

    def __init__(self, n: int, batch_size: int, seed: int, fail_at_epoch: int | None = None):
        gen = torch.Generator().manual_seed(seed)
        label = torch.arange(n) % NUM_CLASSES
        audio = 0.5 * torch.randn(n, 32, 128, generator=gen)
        audio[:, :, :32] += (label.float() - 1.5).view(-1, 1, 1)  # level of the low mel bins
        video = 0.5 * torch.randn(n, 3, 32, 32, generator=gen)
        video[:, 0] += (label.float() - 1.5).view(-1, 1, 1)  # red channel
        self.batches = [
            {"audio": audio[i : i + batch_size], "video": video[i : i + batch_size], "label": label[i : i + batch_size],
             "key": [f"clip{j}" for j in range(i, min(n, i + batch_size))]}
            for i in range(0, n, batch_size)
        ]  # fmt: skip
        self.epochs_seen: list[int] = []
        self.fail_at_epoch = fail_at_epoch

    def set_epoch(self, epoch: int) -> None:
        self.epochs_seen.append(epoch)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        if self.fail_at_epoch is not None and self.epochs_seen and self.epochs_seen[-1] == self.fail_at_epoch:
            raise KeyboardInterrupt  # the run is killed during this epoch
        return iter(self.batches)


def config(tmp_path, **kw) -> TrainConfig:
    base = {"model": "cav_mae_ft_test", "out": str(tmp_path / "run"), "epochs": 3, "lr": 3e-3, "batch_size": 16,
            "num_classes": NUM_CLASSES, "progress": False, "device": "cpu", "dataset": "toy"}  # fmt: skip
    return TrainConfig(**{**base, **kw})


def test_train_learns_and_writes_a_loadable_checkpoint(tmp_path) -> None:
    val = Batches(32, 16, seed=1)
    result = train(config(tmp_path, epochs=4), Batches(64, 16, seed=0), val)
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} >= {
        "model.safetensors", "model.json", "train_config.json", "history.json", "state.safetensors", "state.json"
    }  # fmt: skip
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4] == [h["epoch"] for h in result.history]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    # not a float tolerance: a learning check on a separable toy task; 75 % is 3x chance (25 %)
    assert history[-1]["acc_multimodal"] >= 75.0
    assert {"acc_multimodal", "acc_audio", "acc_video"} <= set(history[-1])
    model = create_model("cav_mae_ft_test", checkpoint=run)
    assert model.num_classes == NUM_CLASSES
    assert evaluate(model, val) == {k: v for k, v in history[-1].items() if k.startswith("acc_")}
    saved = json.loads((run / "train_config.json").read_text())
    assert saved["lr"] == 3e-3 and saved["model"] == "cav_mae_ft_test"
    with pytest.raises(ValueError, match="already holds a training run"):
        train(config(tmp_path, epochs=4), Batches(64, 16, seed=0), val)
    with pytest.raises(ValueError, match="cannot resume with a different config.*'lr'"):
        train(config(tmp_path, epochs=4, lr=1e-3), Batches(64, 16, seed=0), val, resume=True)


def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path) -> None:
    straight = train(config(tmp_path / "a"), Batches(48, 16, seed=0))
    data = Batches(48, 16, seed=0, fail_at_epoch=2)  # killed during the third epoch
    with pytest.raises(KeyboardInterrupt):
        train(config(tmp_path / "b"), data)
    assert json.loads((tmp_path / "b" / "run" / "state.json").read_text())["progress"]["epochs_done"] == 2
    resumed = train(config(tmp_path / "b"), Batches(48, 16, seed=0), resume=True)
    assert resumed.epochs_done == 3 and [h["epoch"] for h in resumed.history] == [1, 2, 3]
    a = create_model("cav_mae_ft_test", checkpoint=straight.checkpoint).state_dict()
    b = create_model("cav_mae_ft_test", checkpoint=resumed.checkpoint).state_dict()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # resuming a finished run is a no-op
    assert train(config(tmp_path / "b"), Batches(48, 16, seed=0), resume=True).epochs_done == 3


def test_single_modality_training_and_init_from_checkpoint(tmp_path) -> None:
    result = train(config(tmp_path / "a", mode="audioonly", epochs=1), Batches(32, 16, seed=0), Batches(16, 16, 1))
    assert set(k for k in result.history[0] if k.startswith("acc_")) == {"acc_audio"}
    # fine-tune the 4-class model to 3 classes: the head is replaced, the trunk kept
    cfg = config(tmp_path / "b", init=str(result.checkpoint), num_classes=3, epochs=1, lr=None)
    assert cfg.base_lr == 1e-4
    data = Batches(32, 16, seed=0)
    for batch in data.batches:
        batch["label"] = batch["label"] % 3
    tuned = create_model("cav_mae_ft_test", checkpoint=train(cfg, data).checkpoint)
    assert tuned.num_classes == 3 and tuned.mlp_head[1].weight.shape == (3, 16)


@pytest.mark.parametrize("train_mode", list(EVAL_MODES))
def test_eval_logits_equal_the_forward_modes(train_mode: str) -> None:
    """The validation heads share the stacks; each must equal the model's forward in its mode."""
    model = create_model("cav_mae_ft_test", num_classes=NUM_CLASSES).eval()
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():  # distinct LayerNorms, so that a wrong selector or recipe shows
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.copy_(1 + 0.5 * torch.randn(module.weight.shape, generator=gen))
                module.bias.copy_(0.5 * torch.randn(module.bias.shape, generator=gen))
        batch = Batches(4, 4, seed=2).batches[0]
        logits = eval_logits(model, batch["audio"], batch["video"], train_mode)
        assert set(logits) == set(EVAL_MODES[train_mode])
        for name, mode in EVAL_MODES[train_mode].items():
            # the same forward, batched otherwise: float32 defaults (rtol 1.3e-6, atol 1e-5) cover reassociation
            torch.testing.assert_close(logits[name], model(batch["audio"], batch["video"], mode))


def test_lr_schedule() -> None:
    factors = [lr_factor(s, 100, 10, 0.01) for s in range(100)]
    # closed-form float64 schedule values: approx's default rel 1e-6 only absorbs float64 rounding
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(b <= a for a, b in zip(factors[10:], factors[11:], strict=False))
    # step 99 of 100 is one step short of the cosine's end (0.01); that last step moves it by < 1e-3
    assert factors[-1] == pytest.approx(0.01, abs=1e-3)


def test_cli_parses_into_config_without_overriding_defaults(monkeypatch, tmp_path) -> None:
    seen = {}

    def fake_train(cfg, resume=False):
        seen["cfg"], seen["resume"] = cfg, resume
        from avtta.models.train import TrainResult

        return TrainResult(out=tmp_path, checkpoint=tmp_path / "model.safetensors", epochs_done=1,
                           history=[{"epoch": 1, "acc_multimodal": 50.0}])  # fmt: skip

    monkeypatch.setattr("avtta.models.train.train", fake_train)
    args = build_parser().parse_args(
        ["train", "--catalog", "cat", "--dataset", "demo", "--epochs", "2", "--val-split", "none", "--resume",
         "--model-overrides", '{"depth": 3}', "--no-progress"]
    )  # fmt: skip
    assert args.func(args) == 0
    cfg = seen["cfg"]
    assert seen["resume"] is True and cfg.epochs == 2 and cfg.val_split is None and cfg.model_overrides == {"depth": 3}
    defaults = TrainConfig()
    assert (cfg.model, cfg.lr, cfg.batch_size, cfg.freqm, cfg.timem) == (
        defaults.model,
        defaults.lr,
        defaults.batch_size,
        defaults.freqm,
        defaults.timem,
    )
    assert cfg.progress is False and cfg.catalog == "cat"


@pytest.fixture(scope="module")
def toy_catalog(tmp_path_factory, small_videos):
    from avtta.pipelines.shard_job import ShardJobConfig, run_shard_job

    out = tmp_path_factory.mktemp("catalog")
    common = dict(videos=str(small_videos), out=str(out), dataset="toy", frames=2, shard_size=4, workers=0,
                  progress=False, corrupt=("none",))  # fmt: skip
    run_shard_job(ShardJobConfig(split="train", **common))
    run_shard_job(ShardJobConfig(split="test", **common))
    return out


def test_cli_trains_tiny_on_real_shards(toy_catalog, tmp_path) -> None:
    """`avtta train` end to end: shard reader (1024 x 128 fbank, 224-px frames) -> tiny model -> checkpoint."""
    from avtta.cli import main

    out = tmp_path / "run"
    argv = ["train", "--catalog", str(toy_catalog), "--dataset", "toy", "--model", "cav_mae_ft_tiny", "--epochs", "2",
            "--batch-size", "4", "--workers", "0", "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(0 <= h[k] <= 100 for h in history for k in ("acc_multimodal", "acc_audio", "acc_video"))
    model = create_model("cav_mae_ft_tiny", checkpoint=out)
    assert model.num_classes == 2 and model.num_audio_patches == 128 and model.num_video_patches == 49
    assert json.loads((out / "train_config.json").read_text())["freqm"] == 48
    assert main([*argv[:7], "--epochs", "3", *argv[9:], "--resume"]) == 0  # one more epoch
    assert len(json.loads((out / "history.json").read_text())) == 3
    assert main(argv) == 2  # an existing run without --resume: one clear error line, exit code 2
