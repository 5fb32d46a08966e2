"""``avtta train --resample`` / ``--structure-loss`` end to end on the unit-test model (issue 14)."""

from __future__ import annotations

import random

import pytest
import torch
from avtta.models import create_model
from avtta.models.checkpoint import read_checkpoint_config
from avtta.models.train import TrainConfig, train
from safetensors.torch import load_file


class MemoryLoader:
    """In-memory stand-in for the indexed reader: seeded epoch order, ``set_order``, an eval view for valuation."""

    def __init__(self, n: int = 24, batch_size: int = 8, shuffle: bool = True, kill_at: int | None = None):
        g = torch.Generator().manual_seed(1)
        self.audio = torch.randn(n, 32, 128, generator=g)
        self.video = torch.randn(n, 3, 32, 32, generator=g)
        self.label = torch.arange(n) % 3
        self.audio[:, :3, :3] += self.label.view(-1, 1, 1).float()  # something to learn from the audio
        self.num_samples, self.batch_size, self.shuffle, self.kill_at = n, batch_size, shuffle, kill_at
        self.epoch, self._order = 0, None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_order(self, order) -> None:
        self._order = None if order is None else list(order)

    def order(self) -> list[int]:
        if self._order is not None:
            return list(self._order)
        order = list(range(self.num_samples))
        if self.shuffle:
            random.Random(f"0:{self.epoch}:order").shuffle(order)
        return order

    def __len__(self) -> int:
        return -(-len(self.order()) // self.batch_size)

    def __iter__(self):
        if self.kill_at is not None and self.epoch == self.kill_at:
            raise KeyboardInterrupt("simulated kill")
        order = self.order()
        for s in range(0, len(order), self.batch_size):
            i = order[s : s + self.batch_size]
            yield {"audio": self.audio[i], "video": self.video[i], "label": self.label[i], "key": [str(k) for k in i]}

    def valuation_view(self) -> MemoryLoader:
        view = MemoryLoader(self.num_samples, self.batch_size, shuffle=False)
        view.audio, view.video, view.label = self.audio, self.video, self.label
        return view


def _run(out, kill_at=None, resume=False, **options):
    cfg = TrainConfig(model="cav_mae_ft_test", num_classes=3, out=str(out), batch_size=8, progress=False,
                      val_split=None, device="cpu", **options)  # fmt: skip
    try:
        return train(cfg, MemoryLoader(kill_at=kill_at), None, resume=resume)
    except KeyboardInterrupt:
        return None


def _same_weights(a, b) -> bool:
    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


@pytest.mark.parametrize("method", ["sample", "modality"])
def test_resample_trains_records_and_resumes(tmp_path, method):
    options = {"resample": method, "resample_warmup": 2, "epochs": 4, "resample_part_ratio": 1.0}
    result = _run(tmp_path / "full", **options)
    assert [("resample_rows" in h) for h in result.history] == [False, False, True, True]
    assert (tmp_path / "full" / "plans" / "epoch_0003.json").exists()
    assert read_checkpoint_config(tmp_path / "full")["training"]["resample"]["method"] == method
    # Killed at the start of epoch 4 (its plan already written), resumed: the same weights as the unbroken run.
    assert _run(tmp_path / "killed", kill_at=3, **options) is None
    _run(tmp_path / "killed", resume=True, **options)
    assert _same_weights(tmp_path / "full", tmp_path / "killed")


def test_structure_loss_trains_saves_anchors_and_resumes(tmp_path):
    options = {"structure_loss": 0.1, "structure_anchors": 4, "structure_queue": 16, "epochs": 3}
    result = _run(tmp_path / "full", **options)
    assert all(h["structure_loss"] > 0 for h in result.history)  # the queue (2 batches) fills in epoch 1
    keys = sorted(k for k in load_file(str(tmp_path / "full" / "model.safetensors")) if k.startswith("structure."))
    assert keys == [f"structure.anchors_{s}_{m}" for s in ("in", "out") for m in ("a", "v")]
    assert read_checkpoint_config(tmp_path / "full")["training"]["structure"]["tensor_prefix"] == "structure."
    create_model("cav_mae_ft_test", checkpoint=tmp_path / "full")  # loading for adaptation ignores structure.*
    assert _run(tmp_path / "killed", kill_at=2, **options) is None
    _run(tmp_path / "killed", resume=True, **options)
    assert _same_weights(tmp_path / "full", tmp_path / "killed")


def test_balance_options_are_validated():
    with pytest.raises(ValueError, match="cannot be combined"):
        TrainConfig(resample="sample", structure_loss=1.0)
    with pytest.raises(ValueError, match="multimodal"):
        TrainConfig(resample="sample", mode="audioonly")
    with pytest.raises(ValueError, match="resample method"):
        TrainConfig(resample="both")


def test_cli_options_are_train_config_fields():
    from avtta.cli import build_parser
    from avtta.cli.train import _FIELDS

    assert set(_FIELDS) <= set(TrainConfig.__dataclass_fields__)
    args = build_parser().parse_args(
        ["train", "--catalog", "c", "--dataset", "d", "--resample", "modality", "--resample-warmup", "2",
         "--resample-part-ratio", "0.5", "--structure-anchors", "8", "--structure-queue", "64"]
    )  # fmt: skip
    given = {k: v for k, v in vars(args).items() if k in _FIELDS}
    cfg = TrainConfig(**given)
    assert (cfg.resample, cfg.resample_warmup, cfg.resample_part_ratio) == ("modality", 2, 0.5)
    assert (cfg.structure_anchors, cfg.structure_queue, cfg.structure_loss) == (8, 64, 0.0)
    args = build_parser().parse_args(["train", "--catalog", "c", "--dataset", "d", "--structure-loss", "0.1"])
    assert TrainConfig(**{k: v for k, v in vars(args).items() if k in _FIELDS}).structure_config.weight == 0.1


def test_a_run_saved_before_the_balance_options_resumes(tmp_path):
    import json

    _run(tmp_path / "old", epochs=1)
    path = tmp_path / "old" / "train_config.json"
    saved = json.loads(path.read_text())
    for name in [k for k in saved if k.startswith(("resample", "structure"))]:
        del saved[name]  # as written by avtta train before issue 14
    path.write_text(json.dumps(saved))
    assert len(_run(tmp_path / "old", resume=True, epochs=2).history) == 2
    with pytest.raises(ValueError, match="different config"):
        _run(tmp_path / "old", resume=True, epochs=3, structure_loss=0.1)
