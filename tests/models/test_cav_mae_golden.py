"""Golden parity: the released-layout golden weights reproduce the official CAV-MAE forward modes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from avtta.models import create_model, sincos_pos_embed_2d

MODES = ["multimodal", "audioonly", "videoonly", "missingaudioonly", "missingvideoonly"]


@pytest.fixture(scope="module")
def golden_model(golden):
    config = json.loads((golden / "config.json").read_text())
    model = create_model(
        "cav_mae_ft_base",
        checkpoint=golden / "weights_released_layout.pth",
        embed_dim=config["embed_dim"],
        num_heads=config["num_heads"],
        depth=config["modality_specific_depth"],
        audio_length=config["audio_length"],
        img_size=config["img_size"],
    )
    assert model.num_classes == config["num_classes"]
    return model.eval()


@pytest.mark.parametrize("mode", MODES)
def test_official_forward_modes(golden, golden_model, mode: str) -> None:
    inputs = np.load(golden / "inputs.npz")
    reference = np.load(golden / "official_outputs.npz")[f"model/{mode}_logits"]
    audio = torch.from_numpy(inputs["test1_audio"].astype(np.float32))
    video = torch.from_numpy(inputs["test1_video"].astype(np.float32))
    with torch.no_grad():
        logits = golden_model(audio, video, mode).numpy()
    assert logits.shape == reference.shape
    # golden README: fp32 on CPU with another attention kernel agrees to ~1e-5 of the logit scale; 10x margin
    assert np.abs(logits - reference).max() <= 1e-4 * np.abs(reference).max()


def test_sincos_matches_golden_initial_positions(golden_model) -> None:
    # The golden model is untrained, so its stored positional embeddings are the official sin-cos tables.
    # Both are float64 sin/cos tables cast to float32: a last-bit difference between two libm's float64 results can
    # flip the float32 rounding by one ulp, <= 2^-23 for values in [-1, 1].
    one_ulp = float(torch.finfo(torch.float32).eps)
    torch.testing.assert_close(golden_model.pos_embed_a[0], sincos_pos_embed_2d(32, 8, 64), rtol=0, atol=one_ulp)
    torch.testing.assert_close(golden_model.pos_embed_v[0], sincos_pos_embed_2d(32, 14, 14), rtol=0, atol=one_ulp)
