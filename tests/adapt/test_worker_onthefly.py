"""`avtta adapt --on-the-fly`: a sweep from the clean set alone gives the results table of the written sets."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from avtta.adapt.worker import AdaptConfig, resolve_conditions, run_adaptation
from avtta.manifests import Catalog

SPECS = ("none", "video:gaussian_noise@5", "video:fog@5", "audio:gaussian_noise@5", "audio:rain@5", "av:gaussian@5")
TIMING = ("seconds", "samples_per_s")  # wall-clock columns: the only ones allowed to differ


@pytest.fixture(scope="module")
def catalog(toy_catalog):
    return toy_catalog(SPECS, waveform=True)


def cfg(catalog, checkpoint, out, **kw) -> AdaptConfig:
    base = dict(
        catalog=str(catalog),
        dataset="toy",
        checkpoint=str(checkpoint),
        seeds=(111,),
        batch_size=4,
        num_workers=0,
        out=str(out),
        progress=False,
        quiet=True,
        methods=("tent", "read", "brimpr"),
        method_config={"brimpr": {"num_samples_source": 6}},
    )
    base.update(kw)
    return AdaptConfig(**base)


def _table(rows: list[dict]) -> list[dict]:
    # NaN (iterations_mean of one-step methods) compared as text: NaN != NaN
    return [{k: ("nan" if v != v else v) for k, v in r.items() if k not in TIMING} for r in rows]


@pytest.mark.parametrize(
    "protocol, corruptions",
    [
        ("video", ("gaussian_noise", "fog")),
        ("audio", ("gaussian_noise", "rain")),
        ("both", ("fog+rain",)),
        ("av", ("gaussian",)),
    ],
)
def test_on_the_fly_table_equals_written_sets(catalog, checkpoint, tmp_path, protocol, corruptions):
    kw = dict(protocol=protocol, corruptions=corruptions)
    written = run_adaptation(cfg(catalog, checkpoint, tmp_path / "w", **kw))
    otf = run_adaptation(cfg(catalog, checkpoint, tmp_path / "o", on_the_fly=True, **kw))
    assert written and _table(otf) == _table(written)
    assert all(r["samples"] == 6 for r in otf)
    # and per sample: the same predictions of the same clips in the same order
    per_sample = [pq.read_table(tmp_path / run / "samples.parquet").to_pandas() for run in ("w", "o")]
    assert per_sample[0].equals(per_sample[1])


def test_on_the_fly_conditions_come_from_the_registry(catalog, checkpoint, tmp_path):
    # no written set of video:snow@5 exists: the on-the-fly run resolves it all the same; the written one refuses
    cat = Catalog(catalog)
    one = cfg(catalog, checkpoint, tmp_path, protocol="video", corruptions=("snow",), on_the_fly=True)
    assert [c.selection for c in resolve_conditions(one, cat)] == [("video:snow@5",)]
    every = cfg(catalog, checkpoint, tmp_path, protocol="audio", severity=(1, 5), on_the_fly=True)
    assert len(resolve_conditions(every, cat)) == 2 * 6  # every registered audio corruption at both severities
    with pytest.raises(ValueError, match="snow"):
        resolve_conditions(cfg(catalog, checkpoint, tmp_path, protocol="video", corruptions=("snow",)), cat)
    with pytest.raises(ValueError, match="--access stream"):
        cfg(catalog, checkpoint, tmp_path, on_the_fly=True, access="stream").validate()
