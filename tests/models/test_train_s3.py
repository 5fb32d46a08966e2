"""``avtta train`` into an ``s3://`` run folder: the files go up after every epoch, and a resume continues there."""

from __future__ import annotations

import json

import pytest
import torch
from avtta.models import create_model
from avtta.models.train import train
from avtta.shards import storage

from .test_cav_mae_train import Batches, config


def test_train_to_s3_resumes_and_equals_a_local_run(tmp_path, s3_bucket) -> None:
    straight = train(config(tmp_path / "local"), Batches(48, 16, seed=0))
    url = f"{s3_bucket}/runs/train"
    with pytest.raises(KeyboardInterrupt):  # killed during the third epoch: two epochs are on S3
        train(config(tmp_path, out=url), Batches(48, 16, seed=0, fail_at_epoch=2))
    state = json.loads(storage.read_text(f"{url}/state.json"))
    assert state["progress"]["epochs_done"] == 2
    assert json.loads(storage.read_text(f"{url}/train_config.json"))["out"] == url  # not the local staging folder
    resumed = train(config(tmp_path, out=url), Batches(48, 16, seed=0), resume=True)
    assert resumed.epochs_done == 3 and resumed.checkpoint == f"{url}/model.safetensors"
    with storage.local_copy(resumed.checkpoint) as local:
        b = create_model("cav_mae_ft_test", checkpoint=local).state_dict()
    a = create_model("cav_mae_ft_test", checkpoint=straight.checkpoint).state_dict()
    assert all(torch.equal(a[name], b[name]) for name in a)
    names = set(storage.listdir(url))
    assert names >= {"model.safetensors", "model.json", "train_config.json", "history.json", "state.json"}
    with pytest.raises(ValueError, match="already holds a training run"):
        train(config(tmp_path, out=url), Batches(48, 16, seed=0))
