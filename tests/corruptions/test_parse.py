"""Spec strings: expansion, order, de-duplication and error messages."""

from __future__ import annotations

import pytest
from avtta.corruptions import CorruptionSpec, list_corruptions, parse_specs


def test_expansion_order_and_dedup() -> None:
    specs = parse_specs(["video:gaussian_noise@5", "audio:all@5", "none", "video:gaussian_noise@5", "clean"])
    assert [str(s) for s in specs] == [
        "video:gaussian_noise@5",
        "audio:gaussian_noise@5",
        "audio:traffic@5",
        "audio:crowd@5",
        "audio:rain@5",
        "audio:thunder@5",
        "audio:wind@5",
        "clean",
    ]
    assert specs[-1] == CorruptionSpec("clean", "clean", 0)


def test_ranges_and_all() -> None:
    specs = parse_specs(["video:all@1-5"])
    assert len(specs) == 75 and str(specs[0]) == "video:gaussian_noise@1" and str(specs[4]) == "video:gaussian_noise@5"
    assert len(parse_specs(["av:all@3"])) == 15
    assert [s.severity for s in parse_specs(["av:snow@2-4"])] == [2, 3, 4]
    names = {f"{s.modality}:{s.name}" for s in parse_specs(["video:all@1", "audio:all@1", "av:all@1"])}
    assert names == set(list_corruptions())


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("image:gaussian_noise@1", "image"),
        ("video:gausian_noise@1", "gausian_noise"),
        ("video:gaussian_noise@6", "6"),
        ("video:gaussian_noise@0-2", "0-2"),
        ("video:gaussian_noise", "MODALITY:NAME@SEVERITY"),
        ("av:fog@1", "fog"),
    ],
)
def test_errors_name_the_value(text: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle) as info:
        parse_specs([text])
    assert text in str(info.value) or needle in str(info.value)


def test_error_lists_valid_choices() -> None:
    with pytest.raises(ValueError, match="gaussian_noise, traffic, crowd"):
        parse_specs(["audio:snow@1"])
    with pytest.raises(TypeError):
        parse_specs("video:fog@1")  # a bare string is a mistake, not a list of characters


def test_spec_str_and_hashable() -> None:
    spec = CorruptionSpec("video", "gaussian_noise", 5)
    assert str(spec) == "video:gaussian_noise@5"
    assert parse_specs([str(spec)]) == [spec]
    assert len({spec, CorruptionSpec("video", "gaussian_noise", 5)}) == 1
    with pytest.raises(ValueError, match="valid"):
        CorruptionSpec("video", "nope", 1)
