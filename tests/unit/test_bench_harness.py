"""The benchmark harness itself: pairs alternate (and so does the side that goes first), a
paired figure's ratio is the median of its pairs' ratios with their spread in the note, a
handicap lands on our side only, and a partial run replaces its own figures in place."""

from __future__ import annotations

import pytest

from jobs.benchmarks import harness, run
from jobs.benchmarks.harness import (
    Figure,
    alternate,
    paired_figure,
    paired_samples,
    throughput_figure,
)


def test_pairs_alternate_and_so_does_the_side_that_goes_first():
    calls: list[str] = []
    counter = iter(range(100))

    def side(name: str):
        def measure() -> float:
            calls.append(name)
            return float(next(counter))

        return measure

    ours, base = alternate(side("ours"), side("base"), reps=3)
    # one warm-up each, then (ours, base), (base, ours), (ours, base)
    assert calls == ["ours", "base", "ours", "base", "base", "ours", "ours", "base"]
    assert ours == [2.0, 5.0, 6.0] and base == [3.0, 4.0, 7.0]


def test_the_ratio_is_the_median_of_the_pairs_ratios_with_their_spread():
    # seconds per run of each side: ours is twice as fast in two pairs, equal in one
    fig = throughput_figure("x", 100.0, ([1.0, 1.0, 2.0], [2.0, 2.0, 2.0]), ">= 1.5", "rows/s", "n")
    assert fig.value == 100.0 and fig.baseline == 50.0
    assert fig.ratio == 2.0 and fig.met is True
    assert fig.note == "n; median of 3 alternated pairs, pair ratios 1.000..2.000"


def test_a_paired_figure_of_quantities_is_ours_over_the_baseline_per_pair():
    # seconds to a first step: ours twice the baseline in two pairs, equal in one
    fig = paired_figure("s", ([4.0, 2.0, 6.0], [2.0, 2.0, 3.0]), "<= 2.0", "s", "n")
    assert (fig.value, fig.baseline, fig.ratio) == (4.0, 2.0, 2.0) and fig.met is True
    assert fig.note == "n; median of 3 alternated pairs, pair ratios 1.000..2.000"


def test_a_handicap_slows_our_side_only(monkeypatch):
    monkeypatch.setattr(harness, "HANDICAP", 0.05)
    ours, base = paired_samples(lambda: None, lambda: None, reps=2)
    assert min(ours) >= 0.05 and max(base) < 0.05


def _fig(name: str, value: float) -> Figure:
    return Figure(name, value, 1.0, value, ">= 1", "x")


def test_a_partial_run_replaces_its_figures_in_place_and_keeps_the_rest():
    previous = (  # a run of every group
        {"seconds": 110, "group_seconds": {"ingest": 10, "tta": 100}, "rerun": []},
        [_fig("a", 1), _fig("b", 2)],
    )
    header, merged = run._merge(previous, [_fig("b", 3), _fig("c", 4)], {"ingest": 12.4})
    assert [(f.name, f.value) for f in merged] == [("a", 1), ("b", 3), ("c", 4)]
    assert header == {
        "seconds": 112,
        "group_seconds": {"ingest": 12, "tta": 100},
        "rerun": ["ingest"],  # the page says which figures came later
    }
    again, _ = run._merge((header, merged), [_fig("a", 5)], {"tta": 90})
    assert again["rerun"] == ["ingest", "tta"] and again["seconds"] == 102
    fresh, _ = run._merge(None, [_fig("a", 1)], {"ingest": 10, "tta": 90})
    assert fresh["rerun"] == []


def test_a_partial_run_into_another_sizes_results_is_refused(tmp_path):
    out = tmp_path / "results.json"
    harness.write([_fig("a", 1)], out, "tiny", 5)
    with pytest.raises(SystemExit, match="holds size tiny figures"):
        run._previous(out, "default", ["tta"])
    assert run._previous(out, "tiny", ["tta"])[1][0].name == "a"
    assert run._previous(out, "tiny", list(run.GROUPS)) is None  # a full run starts afresh


def test_a_file_seeded_from_the_page_takes_a_partial_run_on_another_vm_of_its_kind(tmp_path):
    out = tmp_path / "results.json"
    elsewhere = {**harness.machine(), "system": "Linux another-build"}
    harness.write([_fig("a", 1)], out, "tiny", 500, {}, elsewhere)
    header, figures = run._previous(out, "tiny", ["tta"])
    merged_header, _ = run._merge((header, figures), [_fig("b", 2)], {"tta": 20})
    assert merged_header["seconds"] == 520  # the seeded total stands, the new group adds
    harness.write([_fig("a", 1)], out, "tiny", 500, {}, {**elsewhere, "cores": 96})
    with pytest.raises(SystemExit, match="another run or machine"):
        run._previous(out, "tiny", ["tta"])
