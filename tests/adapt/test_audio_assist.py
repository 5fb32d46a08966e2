"""Audio-assisted TTA: the parity surrogate (no official code exists), label maps, determinism and the base contract."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from avtta.adapt.methods.audio_assist import (
    AudioAssist,
    AudioAssistConfig,
    apply_view,
    combine_pseudo_label,
    run_cycle,
    sample_view_params,
    should_stop,
)
from avtta.adapt.methods.label_map import (
    identity_label_map,
    load_class_list,
    load_label_map,
    parse_label_map,
    resolve_label_map,
)
from avtta.models import create_model
from torch import nn

C = 10  # video (target) classes
B = 4
AUDIO_CLASSES = ("dog", "bark", "wind")
VIDEO_CLASSES = ("walking the dog", "flying a kite")
# p_a = [0.5, 0.3, 0.2] through this map gives mass [0.5 + 0.15, 0.15] (wind maps nowhere): q = [0.8125, 0.1875].
TINY_CSV = "audio_label,video_label,weight\ndog,walking the dog,1\nbark,walking the dog,0.5\nbark,flying a kite,0.5\n"


def _model(seed: int = 0, num_classes: int = C) -> nn.Module:
    return create_model("cav_mae_ft_test", num_classes=num_classes, init_seed=seed)


def _batch(seed: int, n: int = B) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 32, 128, generator=g), torch.randn(n, 3, 32, 32, generator=g)


def _make(model: nn.Module | None = None, **config) -> AudioAssist:
    # threshold 0 and lr 1e-2: every sample is adapted and each update visibly moves the tiny model.
    config = {"threshold": 0.0, "lr": 1e-2, **config}
    return AudioAssist(model if model is not None else _model(), AudioAssistConfig(**config))


def _trained(method: AudioAssist) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in method.model.named_parameters()}


class FixedLabeler(nn.Module):
    """An audio 'classifier' that always answers ``probs`` (a stand-in for another checkpoint)."""

    def __init__(self, probs: list[float]) -> None:
        super().__init__()
        self.num_classes = len(probs)
        self.logits = nn.Parameter(torch.tensor(probs).log())

    def forward(self, audio: torch.Tensor, video: torch.Tensor | None = None, mode: str = "audioonly") -> torch.Tensor:
        assert video is None and mode == "audioonly"
        return self.logits.expand(audio.shape[0], -1)


# ---------------------------------------------------------------------- pseudo-labels
def test_pseudo_label_hand_computed() -> None:
    lm = parse_label_map(TINY_CSV, AUDIO_CLASSES, VIDEO_CLASSES)
    assert lm.matrix.tolist() == [[1.0, 0.0], [0.5, 0.5], [0.0, 0.0]]
    assert lm.unmapped_audio_classes == ("wind",)
    audio_probs = torch.tensor([[0.5, 0.3, 0.2], [0.0, 0.0, 1.0]])
    model_probs = torch.tensor([[0.4, 0.6], [0.3, 0.7]])
    labels, conf, has_audio = combine_pseudo_label(audio_probs, lm.matrix, model_probs, audio_weight=0.5)
    # sample 0: c = 0.5 * [0.8125, 0.1875] + 0.5 * [0.4, 0.6] = [0.60625, 0.39375]
    # sample 1: all audio mass on the unmapped class -> no audio evidence, c = p_m = [0.3, 0.7]
    assert labels.tolist() == [0, 1]
    assert has_audio.tolist() == [True, False]
    # float32 arithmetic on numbers of order 1: a few ulps (1e-7 relative) at most.
    assert conf.tolist() == pytest.approx([0.60625, 0.7], abs=1e-6)
    # audio_weight 1: the mapped audio alone decides.
    _, conf1, _ = combine_pseudo_label(audio_probs[:1], lm.matrix, model_probs[:1], audio_weight=1.0)
    assert float(conf1) == pytest.approx(0.8125, abs=1e-6)


def test_pseudo_label_through_the_method_with_another_labeler() -> None:
    video = [f"v{i}" for i in range(C)]
    csv = "audio_label,video_label,weight\ndog,v3,1\nbark,v3,0.5\nbark,v7,0.5\n"
    lm = parse_label_map(csv, AUDIO_CLASSES, video)
    labeler = FixedLabeler([0.5, 0.3, 0.2])
    model = _model()
    cfg = AudioAssistConfig(labeler="ckpt/audioset.pth", audio_weight=1.0, threshold=0.9, lr=1e-2)
    method = AudioAssist(model, cfg, labeler_model=labeler, label_map=lm)
    before = _trained(method)
    audio, video_in = _batch(1)
    method.step(audio, video_in, keys=list("abcd"))
    assert method.last_pseudo_labels == [3] * B
    assert method.last_confidence == pytest.approx([0.8125] * B, abs=1e-6)
    assert method.last_iterations == [0] * B  # 0.8125 < threshold 0.9: nothing adapted
    assert all(torch.equal(before[n], p) for n, p in method.model.named_parameters())
    assert not labeler.logits.requires_grad


# ---------------------------------------------------------------------- the stop rule
def test_stop_rule_on_a_scripted_loss_sequence() -> None:
    def drive(losses: list[float], agree: list[bool], max_iterations: int, tol: float) -> tuple[int, list[int]]:
        updates: list[int] = []
        n, seen = run_cycle(lambda t: (losses[t], agree[t]), updates.append, max_iterations, tol)
        assert seen == losses[: len(seen)]
        return n, updates

    losses = [2.0, 1.5, 1.2, 1.195, 1.0, 0.5]
    # |1.195 - 1.2| = 0.005 < 0.01 at t = 3: stop before the 4th update.
    assert drive(losses, [False] * 6, 6, 0.01) == (3, [0, 1, 2])
    # tolerance 0: the loss never "stops changing"; the hard maximum ends the cycle.
    assert drive(losses, [False] * 6, 4, 0.0) == (4, [0, 1, 2, 3])
    # the views agree at t = 1: one update only; agreeing at t = 0 means no update at all.
    assert drive(losses, [False, True, False, False, False, False], 6, 0.0) == (1, [0])
    assert drive(losses, [True] * 6, 6, 0.0) == (0, [])
    assert should_stop([1.0], False, 10.0) is False  # a single loss has no change yet
    assert should_stop([1.0, 0.5], False, 0.5) is False  # strict: a change equal to the tolerance continues
    assert should_stop([1.0, 0.6], False, 0.5) is True


def test_views_are_seeded_and_replayable() -> None:
    frames = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    p1 = sample_view_params(g1, 8, 8, (0.5, 1.0), (0.75, 4 / 3))
    assert p1 == sample_view_params(g2, 8, 8, (0.5, 1.0), (0.75, 4 / 3))
    assert 1 <= p1["height"] <= 8 and 0 <= p1["top"] <= 8 - p1["height"]
    assert 1 <= p1["width"] <= 8 and 0 <= p1["left"] <= 8 - p1["width"]
    assert torch.equal(apply_view(frames, p1, ()), frames)
    flipped = apply_view(frames, {**p1, "flip": True}, ("flip",))
    assert torch.equal(flipped, frames.flip(-1))
    full = {"top": 0, "left": 0, "height": 8, "width": 8, "flip": False}
    # a full-frame crop resized to its own size is the identity (bilinear at integer scale 1).
    assert torch.equal(apply_view(frames, full, ("crop", "flip")), frames)


# ---------------------------------------------------------------------- the method
def test_iterations_recorded_and_only_selected_parameters_change() -> None:
    method = _make(consistency="off", loss_tolerance=0.0, max_iterations=3)
    names = {n for n, _ in method.named_params}
    assert names == {n for n, _ in method.model.select_parameters("norms.blocks_v", "norms.blocks_u")}
    before = _trained(method)
    audio, video = _batch(2)
    logits = method.step(audio, video, keys=["k0", "k1", "k2", "k3"])
    assert logits.shape == (B, C) and logits.dtype == torch.float32 and bool(torch.isfinite(logits).all())
    # no stop rule can fire (consistency off, tolerance 0): every sample runs to the maximum.
    assert method.last_iterations == [3] * B
    assert method.last_keys == ["k0", "k1", "k2", "k3"]
    assert all(0 <= y < C for y in method.last_pseudo_labels)
    after = dict(method.model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and changed <= names

    frozen = _make(threshold=1.0)  # a softmax max below 1 never reaches the threshold: nothing adapted
    before = _trained(frozen)
    out = frozen.step(audio, video)
    assert frozen.last_iterations == [0] * B
    assert all(torch.equal(before[n], p) for n, p in frozen.model.named_parameters())
    # the score is the per-sample forward (a batched forward may differ in the last bits: other kernel blocking)
    assert torch.equal(out, torch.cat([frozen.predict(audio[i : i + 1], video[i : i + 1]) for i in range(B)]))


def test_flexible_cycle_gives_different_counts() -> None:
    method = _make(max_iterations=6, loss_tolerance=0.05)
    audio, video = _batch(3, n=8)
    method.step(audio, video, keys=[f"s{i}" for i in range(8)])
    counts = method.last_iterations
    assert all(0 <= n <= 6 for n in counts)
    assert len(set(counts)) > 1, counts  # the point of the cycle: samples differ in how long they adapt


def test_reset_is_exact() -> None:
    model = _model()
    fresh = copy.deepcopy(model)
    method = _make(model, consistency="off", loss_tolerance=0.0, max_iterations=2)  # the views always matter
    init_opt = copy.deepcopy(method.optimizer.state_dict())
    audio, video = _batch(4)
    keys = list("wxyz")
    first = method.step(audio, video, keys=keys)
    first_iters = list(method.last_iterations)
    method.step(*_batch(5), keys=list("pqrs"))
    method.reset()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), fresh.parameters(), strict=True))
    assert method.optimizer.state_dict()["state"] == init_opt["state"] == {}
    assert method.last_iterations == [] and method._stream_index == 0
    again = method.step(audio, video, keys=keys)
    assert torch.equal(first, again) and method.last_iterations == first_iters
    # a reset with a run seed changes the views (keys equal), hence in general the adapted logits
    method.reset(seed=7)
    other = method.step(audio, video, keys=keys)
    assert not torch.equal(first, other)
    method.reset(seed=7)
    assert torch.equal(other, method.step(audio, video, keys=keys))


def test_online_results_do_not_depend_on_batch_composition() -> None:
    audio, video = _batch(6, n=5)
    keys = [f"k{i}" for i in range(5)]
    whole = _make(_model())
    out_whole = whole.step(audio, video, keys=keys)
    iters_whole = list(whole.last_iterations)
    split = _make(_model())
    parts, iters = [], []
    for lo, hi in ((0, 1), (1, 4), (4, 5)):
        split.set_batch_keys(keys[lo:hi])
        parts.append(split.step(audio[lo:hi], video[lo:hi]))
        iters += split.last_iterations
    # samples are processed one at a time with per-sample forwards: bit-identical, not merely close.
    assert torch.equal(out_whole, torch.cat(parts)) and iters == iters_whole


def test_episodic_results_do_not_depend_on_order_or_worker_count() -> None:
    audio, video = _batch(7, n=4)
    keys = ["a", "b", "c", "d"]
    one = _make(_model(), episodic=True)
    ref = one.step(audio, video, keys=keys)
    ref_iters = dict(zip(keys, one.last_iterations, strict=True))
    perm = [2, 0, 3, 1]
    shuffled = _make(_model(), episodic=True)
    out = shuffled.step(audio[perm], video[perm], keys=[keys[i] for i in perm])
    assert torch.equal(out, ref[perm])
    assert dict(zip([keys[i] for i in perm], shuffled.last_iterations, strict=True)) == ref_iters
    # two "workers", each its own copy of the model, each half of the set
    w1, w2 = _make(_model(), episodic=True), _make(_model(), episodic=True)
    halves = torch.cat([w1.step(audio[:2], video[:2], keys=keys[:2]), w2.step(audio[2:], video[2:], keys=keys[2:])])
    assert torch.equal(halves, ref)


def test_keys_seed_the_views() -> None:
    audio, video = _batch(8, n=2)
    a = _make(_model(), episodic=True, consistency="off", loss_tolerance=0.0, max_iterations=2)
    out_a = a.step(audio, video, keys=["x", "y"])
    b = _make(_model(), episodic=True, consistency="off", loss_tolerance=0.0, max_iterations=2)
    b.set_batch_keys(["x", "y"])
    assert torch.equal(out_a, b.step(audio, video))
    c = _make(_model(), episodic=True, consistency="off", loss_tolerance=0.0, max_iterations=2)
    assert not torch.equal(out_a, c.step(audio, video, keys=["x2", "y2"]))
    with pytest.raises(ValueError, match="3 keys for a batch of 2"):
        c.step(audio, video, keys=["p", "q", "r"])


@pytest.mark.parametrize("forward", ["multimodal", "videoonly"])
def test_batch_of_one_no_nan(forward: str) -> None:
    method = _make(forward=forward, max_iterations=2)
    audio, video = _batch(9, n=1)
    out = method.step(audio, video, keys=["only"])
    assert out.shape == (1, C) and bool(torch.isfinite(out).all())
    assert len(method.last_iterations) == 1
    if forward == "videoonly":  # the target ignores audio (the labeler still hears it)
        assert torch.equal(method.predict(audio, video), method.predict(torch.zeros_like(audio), video))


def test_self_labeler_is_the_models_audio_only_forward() -> None:
    method = _make()
    audio, _ = _batch(10, n=2)
    with torch.no_grad():
        expected = method.model(audio, None, mode="missingaudioonly")
    assert torch.equal(method.labeler_logits(audio), expected)
    assert AudioAssistConfig(labeler="x.pth").resolved_labeler_mode == "audioonly"


# ---------------------------------------------------------------------- errors
def test_label_map_validation_errors(tmp_path) -> None:
    path = tmp_path / "map.csv"
    path.write_text(TINY_CSV + "meow,walking the dog,1\n")
    with pytest.raises(ValueError, match=r"map\.csv line 5: unknown audio label 'meow'"):
        load_label_map(path, AUDIO_CLASSES, VIDEO_CLASSES)
    path.write_text(TINY_CSV + "dog,skydiving,1\n")
    with pytest.raises(ValueError, match=r"map\.csv line 5: unknown video label 'skydiving'"):
        load_label_map(path, AUDIO_CLASSES, VIDEO_CLASSES)
    cases = {
        "audio_label,video_label,weight\ndog,walking the dog,-1\n": "must be finite and >= 0",
        "audio_label,video_label,weight\ndog,walking the dog,lots\n": "is not a number",
        "audio_label,video_label,weight\ndog,walking the dog,nan\n": "must be finite",
        TINY_CSV + "dog,walking the dog,2\n": "listed twice",
        "audio,video\ndog,walking the dog\n": "missing column",
        "audio_label,video_label,score\ndog,walking the dog,1\n": "unknown column",
        "audio_label,video_label,weight\n": "no links",
        "audio_label,video_label,weight\ndog,walking the dog,0\n": "every weight is 0",
    }
    for text, message in cases.items():
        path.write_text(text)
        with pytest.raises(ValueError, match=message) as info:
            load_label_map(path, AUDIO_CLASSES, VIDEO_CLASSES)
        assert str(path) in str(info.value)
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        load_label_map(tmp_path / "nope.csv", AUDIO_CLASSES, VIDEO_CLASSES)
    with pytest.raises(ValueError, match="duplicate class"):
        parse_label_map(TINY_CSV, ["dog", "dog", "bark"], VIDEO_CLASSES)
    path.write_text("audio_label,video_label\ndog,walking the dog\n")  # weight column optional
    assert load_label_map(path, AUDIO_CLASSES, VIDEO_CLASSES).matrix[0].tolist() == [1.0, 0.0]
    ident = identity_label_map(["a", "b"])
    assert ident.is_identity and torch.equal(ident.matrix, torch.eye(2))


def test_method_configuration_errors() -> None:
    with pytest.raises(ValueError, match="pass labeler_model="):
        AudioAssist(_model(), AudioAssistConfig(labeler="audioset.pth"))
    with pytest.raises(ValueError, match="takes no labeler_model"):
        AudioAssist(_model(), AudioAssistConfig(), labeler_model=_model())
    with pytest.raises(ValueError, match="load_label_map"):
        AudioAssist(_model(), AudioAssistConfig(label_map="map.csv"))
    with pytest.raises(ValueError, match="6 classes and the model 10"):
        AudioAssist(_model(), AudioAssistConfig(labeler="as.pth"), labeler_model=_model(num_classes=6))
    with pytest.raises(ValueError, match=r"shape \(3, 3\)"):
        AudioAssist(_model(), AudioAssistConfig(labeler="as.pth"), labeler_model=_model(num_classes=6),
                    label_map=torch.ones(3, 3))  # fmt: skip
    model = _model()
    with pytest.raises(ValueError, match="adapted model itself"):
        AudioAssist(model, AudioAssistConfig(labeler="as.pth"), labeler_model=model)
    for bad in (
        {"forward": "audioonly"},
        {"consistency": "sometimes"},
        {"max_iterations": 0},
        {"augment": ("rotate",)},
        {"threshold": 1.5},
        {"crop_scale": (0.0, 1.0)},
        {"loss_tolerance": math.inf},
        {"groups": ()},
        {"consistency": "views", "views": 1},
    ):
        with pytest.raises(ValueError):
            AudioAssistConfig(**bad)


def test_another_labeler_with_its_own_label_space_stays_frozen() -> None:
    labeler = _model(seed=3, num_classes=6)
    frozen = copy.deepcopy(labeler.state_dict())
    matrix = torch.zeros(6, C)
    matrix[torch.arange(6), torch.arange(6) + 2] = 1.0  # audio class i names video class i + 2
    method = AudioAssist(_model(), AudioAssistConfig(labeler="as.pth", threshold=0.0, lr=1e-2),
                         labeler_model=labeler, label_map=matrix)  # fmt: skip
    audio, video = _batch(11)
    out = method.step(audio, video)
    assert bool(torch.isfinite(out).all()) and method.last_keys == ["#0", "#1", "#2", "#3"]
    assert all(torch.equal(frozen[k], v) for k, v in labeler.state_dict().items())
    assert not any(p.requires_grad for p in labeler.parameters())


def test_class_lists(tmp_path) -> None:
    txt = tmp_path / "classes.txt"
    txt.write_text("dog\n\nbark\nwind\n")
    assert load_class_list(txt) == AUDIO_CLASSES
    csv_path = tmp_path / "class_labels_indices.csv"  # AudioSet's layout, rows out of order
    csv_path.write_text('index,mid,display_name\n1,/m/b,bark\n0,/m/a,dog\n2,/m/c,"wind"\n')
    assert load_class_list(csv_path) == AUDIO_CLASSES
    for text, message in {
        "index,mid\n0,/m/a\n": "no name column",
        "index,name\n0,dog\n2,bark\n": "not 0..1",
        "index,name\nx,dog\n": "non-integer",
        "name\ndog\ndog\n": "duplicate class name",
        "name\n": "is empty",
    }.items():
        csv_path.write_text(text)
        with pytest.raises(ValueError, match=message) as info:
            load_class_list(csv_path)
        assert "class_labels_indices.csv" in str(info.value)
    with pytest.raises(FileNotFoundError):
        load_class_list(tmp_path / "none.txt")

    (tmp_path / "map.csv").write_text(TINY_CSV)
    txt.write_text("dog\nbark\nwind\n")
    lm = resolve_label_map(tmp_path / "map.csv", VIDEO_CLASSES, txt)
    assert lm is not None and lm.matrix.tolist() == [[1.0, 0.0], [0.5, 0.5], [0.0, 0.0]]
    assert resolve_label_map(None, VIDEO_CLASSES, txt) is None
    with pytest.raises(ValueError, match="unknown audio label 'dog'"):  # labeler "self": the video classes
        resolve_label_map(tmp_path / "map.csv", VIDEO_CLASSES)
