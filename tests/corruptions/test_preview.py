"""``avtta preview`` and ``avtta corruptions``: playable mp4 with both streams, a 15 x 5 contact sheet, the list."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from avtta.corruptions import list_corruptions
from PIL import Image

from avtta.cli import main


@pytest.fixture(scope="module")
def video(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture clip (540 x 360 H.264 + 44.1 kHz AAC), or a synthetic clip when ../shared is absent."""
    try:
        return request.getfixturevalue("fixtures_dir") / "audioset_clip" / "BkjpjAohg-0.mp4"
    except pytest.skip.Exception:
        from avtta.pipelines.synth import write_test_video

        return write_test_video(tmp_path_factory.mktemp("vid") / "clip.mp4", seconds=3.0, size=(320, 240)).path


def test_preview_mp4_has_both_streams(video: Path, tmp_path: Path) -> None:
    import av

    out = tmp_path / "prev.mp4"
    assert main(["preview", str(video), "--corrupt", "av:rain@3", "--out", str(out), "--seconds", "2"]) == 0
    with av.open(str(out)) as container:
        kinds = sorted(s.type for s in container.streams)
        assert kinds == ["audio", "video"]
        assert container.streams.video[0].codec_context.name == "h264"
        assert container.streams.audio[0].codec_context.name == "aac"
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    with av.open(str(out)) as container:
        audio = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
    assert len(frames) >= 40 and frames[0].shape == (224, 224, 3)
    # a 1.5 s clip; 0.01 only tells audible audio from the silence a dropped stream would decode to
    assert audio.size >= 16000 * 1.5 and np.abs(audio).max() > 0.01


def test_preview_rejects_bad_spec(video: Path, tmp_path: Path) -> None:
    assert main(["preview", str(video), "--corrupt", "video:nope@1", "--out", str(tmp_path / "x.mp4")]) == 2
    assert main(["preview", str(video), "--corrupt", "video:all@1", "--out", str(tmp_path / "x.mp4")]) == 2


def test_contact_sheet_is_15_by_5(video: Path, tmp_path: Path) -> None:
    from avtta.pipelines.preview import contact_sheet

    out = tmp_path / "sheet.png"
    assert contact_sheet(video, out, cell=64) == (15, 5)
    width, height = Image.open(out).size
    # label column + 5 cells of 64 (+4 px gaps); header + 15 rows
    assert width == 150 + 5 * (64 + 4) and height == 24 + 15 * (64 + 4)


def test_cli_lists_corruptions(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["corruptions"]) == 0
    lines = capsys.readouterr().out.split()
    assert lines == list_corruptions() and len(lines) == 36
    assert main(["corruptions", "--modality", "audio"]) == 0
    assert capsys.readouterr().out.split() == [line for line in lines if line.startswith("audio:")]


def test_draw_contact_sheet_takes_a_frame_array(tmp_path: Path) -> None:
    """The corruption-only part draws from an array (no decoding) and names a bad frame."""
    from avtta.corruptions.preview import draw_contact_sheet

    frame = np.random.default_rng(0).integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
    assert draw_contact_sheet(frame, tmp_path / "s.png", key="k", cell=32) == (15, 5)
    assert Image.open(tmp_path / "s.png").size == (150 + 5 * (32 + 4), 24 + 15 * (32 + 4))
    with pytest.raises(ValueError, match="uint8 RGB frame"):
        draw_contact_sheet(frame[..., 0], tmp_path / "t.png", key="k")
