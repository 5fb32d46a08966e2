"""Sample-level modality valuation: Shapley values by hand, side-effect-free forwards, the report and its figure."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from avtta.adapt.valuation import modality_logits, shapley_values, valuate_batch
from avtta.adapt.valuation_report import (
    SAMPLE_SCHEMA,
    batch_rows,
    iterations_histogram,
    plot_valuation,
    samples_table,
    summarize_valuation,
    write_valuation_report,
)
from avtta.models import create_model

from avtta import adapt

C = 10


def _logits_for(pred: int, n_classes: int = 3) -> torch.Tensor:
    row = torch.zeros(n_classes)
    row[pred] = 1.0
    return row


# (fused correct, audio-only correct, video-only correct) -> (phi_a, phi_v), from v(both) in {0, 2}, v(a), v(v) in
# {0, 1}: phi_a = (v_a + v_both - v_v) / 2, phi_v = (v_v + v_both - v_a) / 2, worked out by hand.
PATTERNS = {
    (1, 1, 1): (1.0, 1.0),
    (1, 1, 0): (1.5, 0.5),
    (1, 0, 1): (0.5, 1.5),
    (1, 0, 0): (1.0, 1.0),
    (0, 1, 1): (0.0, 0.0),
    (0, 1, 0): (0.5, -0.5),
    (0, 0, 1): (-0.5, 0.5),
    (0, 0, 0): (0.0, 0.0),
}


def test_shapley_values_for_all_eight_patterns() -> None:
    label = 0
    patterns = list(itertools.product((1, 0), repeat=3))
    assert set(patterns) == set(PATTERNS)
    fused = torch.stack([_logits_for(label if f else 1) for f, _, _ in patterns])
    audio = torch.stack([_logits_for(label if a else 2) for _, a, _ in patterns])
    video = torch.stack([_logits_for(label if v else 1) for _, _, v in patterns])
    phi_a, phi_v = shapley_values(fused, audio, video, torch.full((8,), label))
    assert phi_a.tolist() == [PATTERNS[p][0] for p in patterns]  # exact: halves of small integers
    assert phi_v.tolist() == [PATTERNS[p][1] for p in patterns]
    assert torch.equal(phi_a + phi_v, 2.0 * torch.tensor([p[0] for p in patterns], dtype=torch.float32))
    with pytest.raises(ValueError, match="must all be"):
        shapley_values(fused, audio[:, :2], video, torch.zeros(8))
    with pytest.raises(ValueError, match="7 labels for 8"):
        shapley_values(fused, audio, video, torch.zeros(7))


def test_modality_logits_are_the_missing_modality_forwards_in_one_pair() -> None:
    model = create_model("cav_mae_ft_test", num_classes=C)
    g = torch.Generator().manual_seed(0)
    audio, video = torch.randn(5, 32, 128, generator=g), torch.randn(5, 3, 32, 32, generator=g)
    calls = []
    hook = lambda module, args, kwargs: calls.append(kwargs["mode"])  # noqa: E731
    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    a_logits, v_logits = modality_logits(model, audio, video)
    handle.remove()
    assert calls == ["missingaudioonly", "missingvideoonly"]  # one pair per batch, not per sample
    with torch.no_grad():
        assert torch.equal(a_logits, model(audio, None, mode="missingaudioonly"))
        assert torch.equal(v_logits, model(None, video, mode="missingvideoonly"))
    assert a_logits.shape == v_logits.shape == (5, C) and not a_logits.requires_grad


@pytest.mark.parametrize("name", ["tent", "sar", "audio_assist"])
def test_valuation_never_changes_what_a_method_does(name: str) -> None:
    if name == "audio_assist":
        from avtta.adapt.methods.audio_assist import AudioAssist, AudioAssistConfig

        def build():
            model = create_model("cav_mae_ft_test", num_classes=C)
            return AudioAssist(model, AudioAssistConfig(threshold=0.0, lr=1e-2))
    else:

        def build():
            return adapt.create_method(name, create_model("cav_mae_ft_test", num_classes=C), lr=1e-2)

    plain, valued = build(), build()
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(3, 32, 128, generator=g), torch.randn(3, 3, 32, 32, generator=g)) for _ in range(3)]
    labels = torch.tensor([0, 1, 2])
    for audio, video in batches:
        expected = plain.step(audio, video)
        state = copy.deepcopy(valued.model.state_dict())
        opt = copy.deepcopy(valued.optimizer.state_dict())
        gen = valued.generator.get_state().clone()
        valuate_batch(valued.model, audio, video, torch.zeros(3, C), labels, autocast=valued.autocast())  # before
        got = valued.step(audio, video)
        values = valuate_batch(valued.model, audio, video, got, labels, autocast=valued.autocast())  # and after
        assert torch.equal(got, expected)
        # the valuation forwards touch nothing: parameters, optimiser, generator, grad flags, train/eval mode
        after = dict(valued.model.state_dict())
        valuate_batch(valued.model, audio, video, got, labels)
        assert all(torch.equal(after[k], v) for k, v in valued.model.state_dict().items())
        assert not valued.model.training
        assert torch.equal(gen, valued.generator.get_state())
        assert set(state) == set(after) and opt.keys() == valued.optimizer.state_dict().keys()
        assert all(p.grad is None for p in valued.model.parameters())
        assert values.phi_a.shape == (3,) and values.prediction.tolist() == got.argmax(1).tolist()
    for p, q in zip(plain.model.parameters(), valued.model.parameters(), strict=True):
        assert torch.equal(p, q) and p.requires_grad == q.requires_grad


def _synthetic_rows() -> list[dict]:
    rows = []
    # source/clean: patterns (1,1,0) and (1,0,1) -> phi (1.5, .5), (.5, 1.5): balance 0, one audio- one video-led
    # source/fog:   (1,1,0) twice -> (1.5, .5): balance +1, audio carries both
    # tent/fog:     (0,0,1) and (1,1,1) -> (-.5, .5) and (1, 1): balance -0.5, one video-led, one tie
    table = {
        ("source", "clean"): [(1.5, 0.5, True), (0.5, 1.5, True)],
        ("source", "fog"): [(1.5, 0.5, True), (1.5, 0.5, True)],
        ("tent", "clean"): [(1.0, 1.0, True), (1.0, 1.0, True)],
        ("tent", "fog"): [(-0.5, 0.5, False), (1.0, 1.0, True)],
        ("audio_assist", "fog"): [(0.5, -0.5, False), (1.5, 0.5, True)],
    }
    for (method, name), samples in table.items():
        for i, (pa_, pv, correct) in enumerate(samples):
            rows.append(
                {
                    "key": f"k{i}",
                    "set": name,
                    "method": method,
                    "seed": 1,
                    "label": 0,
                    "prediction": 0 if correct else 1,
                    "correct": correct,
                    "phi_a": pa_,
                    "phi_v": pv,
                    "iterations": i + 1 if method == "audio_assist" else None,
                }
            )
    return rows


def test_report_on_a_small_synthetic_table(tmp_path) -> None:
    table = samples_table(_synthetic_rows())
    assert table.schema == SAMPLE_SCHEMA
    pq.write_table(table, tmp_path / "samples.parquet")
    summary = summarize_valuation(tmp_path / "samples.parquet")
    got = {(r["method"], r["set"]): r for r in summary.to_pylist()}
    assert [k for k in got] == [
        ("source", "clean"),
        ("source", "fog"),
        ("tent", "clean"),
        ("tent", "fog"),
        ("audio_assist", "fog"),
    ]
    fog = got[("tent", "fog")]
    assert (fog["samples"], fog["accuracy"], fog["mean_phi_a"], fog["mean_phi_v"]) == (2, 50.0, 0.25, 0.75)
    assert (fog["balance"], fog["share_audio"], fog["share_video"], fog["share_tie"]) == (-0.5, 0.0, 50.0, 50.0)
    assert got[("source", "fog")]["share_audio"] == 100.0 and got[("source", "fog")]["balance"] == 1.0
    assert got[("source", "clean")]["balance"] == 0.0 and got[("source", "clean")]["share_audio"] == 50.0
    assert got[("audio_assist", "fog")]["mean_iterations"] == 1.5 and got[("tent", "fog")]["mean_iterations"] is None
    hist = iterations_histogram(table).to_pylist()
    assert hist == [
        {"method": "audio_assist", "set": "fog", "iterations": 1, "count": 1},
        {"method": "audio_assist", "set": "fog", "iterations": 2, "count": 1},
    ]
    with pytest.raises(ValueError, match="missing"):
        samples_table([{"key": "x"}])
    with pytest.raises(ValueError, match="lacks column"):
        summarize_valuation(pa.table({"set": ["a"]}))


def test_valuation_png_is_written_and_not_trivial(tmp_path) -> None:
    import matplotlib.image

    paths = write_valuation_report(samples_table(_synthetic_rows()), tmp_path)
    assert set(paths) == {"summary", "markdown", "iterations", "figure"}
    assert "| tent | fog | 2 | 50.0 |" in paths["markdown"].read_text()
    png = paths["figure"]
    assert png.name == "valuation.png" and png.stat().st_size > 10_000
    image = matplotlib.image.imread(png)[..., :3]
    assert image.shape[0] > 200 and image.shape[1] > 400
    # both ends of the diverging scale are drawn: a strongly red (audio) cell and a clearly blue (video) cell
    red = (image[..., 0] > 0.6) & (image[..., 2] < 0.35)
    blue = (image[..., 2] > 0.6) & (image[..., 0] < 0.45)
    assert red.sum() > 100 and blue.sum() > 100
    with pytest.raises(ValueError, match="empty"):
        plot_valuation(summarize_valuation(samples_table(_synthetic_rows())).slice(0, 0), tmp_path / "x.png")
    assert np.isfinite(image).all()


def test_batch_rows_feed_the_samples_table() -> None:
    logits = torch.tensor([[0.0, 1.0], [2.0, 0.0], [0.0, 3.0]])
    fused, audio, video = logits, torch.tensor([[1.0, 0.0]] * 3), torch.tensor([[0.0, 1.0]] * 3)
    phi_a, phi_v = shapley_values(fused, audio, video, torch.tensor([1, 0, 0]))
    values = type("V", (), {"phi_a": phi_a, "phi_v": phi_v})()
    rows = batch_rows(["a", "b", "c"], "fog", "audio_assist", 3, torch.tensor([1, 0, 0]), logits, values, [2, 0, 5])
    table = samples_table(rows)
    assert table.column("correct").to_pylist() == [True, True, False]
    assert table.column("prediction").to_pylist() == [1, 0, 1]
    # a: fused right, audio wrong, video right -> (0.5, 1.5); b: right, right, wrong -> (1.5, 0.5);
    # c: fused wrong, audio right, video wrong -> (0.5, -0.5)
    assert table.column("phi_a").to_pylist() == [0.5, 1.5, 0.5]
    assert table.column("phi_v").to_pylist() == [1.5, 0.5, -0.5]
    assert table.column("iterations").to_pylist() == [2, 0, 5]
    plain = samples_table(batch_rows(["a"], "clean", "tent", 1, [0], logits[:1]))
    assert plain.column("phi_a").to_pylist() == [None] and plain.column("iterations").to_pylist() == [None]
    with pytest.raises(ValueError, match="2 keys, 3 labels"):
        batch_rows(["a", "b"], "fog", "tent", 1, [0, 0, 0], logits)
