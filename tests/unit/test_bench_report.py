"""docs/performance.md's table is generated from a results file, never typed: the report
writes every figure with the machine, between the markers, and refuses a page without them."""

from __future__ import annotations

import pytest

from jobs.benchmarks import report
from jobs.benchmarks.harness import Figure, ratio_figure, read, write


def _results(tmp_path):
    figures = [
        ratio_figure("ingest_vs_pyarrow", 900_000.0, 1_000_000.0, ">= 0.8", "rows/s", "a | b"),
        Figure("checkpoint_stall", 0.004, None, 0.004, "<= 0.1", "s/checkpoint", "pairs"),
        Figure("scaling_efficiency", 0.5, 1.0, 0.5, ">= 0.9", "efficiency", "cores"),
    ]
    path = tmp_path / "results.json"
    write(figures, path, "tiny", 12.3)
    return path


def test_the_table_is_the_results_file(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{report.BEGIN}\nold, hand-typed\n{report.END}\n\nafter\n")
    args = ["--results", str(_results(tmp_path)), "--readme", str(readme), "--quotes"]
    assert report.main(args) == 0
    text = readme.read_text()
    assert "hand-typed" not in text and text.endswith(f"{report.END}\n\nafter\n")
    assert "size tiny, 12 s" in text and " cores of " in text
    assert (
        "| ingest_vs_pyarrow | 900,000 | 1,000,000 | 0.900 | >= 0.8 | yes | rows/s | a \\| b |"
        in text
    )
    assert "| checkpoint_stall | 0.004 | – | 0.004 | <= 0.1 | yes |" in text
    assert "| scaling_efficiency | 0.500 | 1.000 | 0.500 | >= 0.9 | **no** |" in text
    args = [*args, "--check"]
    assert report.main(args) == 0
    readme.write_text(text.replace("0.900", "0.950"))
    assert report.main(args) == 1


def test_a_page_quotes_the_figures_it_names(tmp_path):
    page = tmp_path / "README.md"
    page.write_text(
        "text\n<!-- bench-quote: checkpoint_stall gone_figure -->\nhand-typed 0.001\n"
        "<!-- /bench-quote -->\nafter\n"
    )
    table = tmp_path / "performance.md"
    table.write_text(f"{report.BEGIN}\n{report.END}\n")
    args = ["--results", str(_results(tmp_path)), "--page", str(table), "--quotes", str(page)]
    assert report.main(args) == 0
    text = page.read_text()
    assert "hand-typed" not in text and text.endswith("<!-- /bench-quote -->\nafter\n")
    assert (
        "- `checkpoint_stall` **0.004** (0.004 against – s/checkpoint, target <= 0.1: met)" in text
    )
    assert "- `gone_figure`: not in the last `make bench` run" in text
    assert report.main([*args, "--check"]) == 0
    page.write_text(text.replace("**0.004**", "**0.003**"))
    assert report.main([*args, "--check"]) == 1


def test_seed_rebuilds_the_results_file_from_the_page(tmp_path):
    page = tmp_path / "performance.md"
    page.write_text(f"# x\n\n{report.BEGIN}\n{report.END}\n")
    results = _results(tmp_path)
    assert report.main(["--results", str(results), "--page", str(page), "--quotes"]) == 0
    seeded = tmp_path / "seeded.json"
    args = ["--results", str(seeded), "--page", str(page)]
    assert report.main([*args, "--seed"]) == 0
    header, figures = read(seeded)
    assert header["size"] == "tiny" and header["seconds"] == 12
    assert [f.name for f in figures] == [
        "ingest_vs_pyarrow",
        "checkpoint_stall",
        "scaling_efficiency",
    ]
    assert figures[0].note == "a | b" and figures[1].baseline is None and figures[0].ratio == 0.9
    # The page rendered from the seeded file is the page it came from.
    assert report.main([*args, "--quotes", "--check"]) == 0
    assert report.main([*args, "--seed"]) == 2  # never over an existing file


def test_a_readme_without_markers_is_refused(tmp_path):
    with pytest.raises(ValueError, match="has no <!-- bench-table"):
        report.replace_table("# no table here\n", "| a |")


def test_the_shipped_page_has_the_markers():
    from tests.conftest import REPO

    page = (REPO / "docs" / "performance.md").read_text()
    assert report.BEGIN in page and report.END in page


def test_groups_rerun_since_a_seeded_run_are_named_and_survive_a_seed(tmp_path):
    figures = [ratio_figure("table_accuracy_vs_sklearn", 0.97, 0.98, ">= 0.98", "acc", "n")]
    results = tmp_path / "results.json"
    write(figures, results, "default", 100, {"tables": 12}, rerun=["tables"])
    page = tmp_path / "performance.md"
    page.write_text(f"{report.BEGIN}\n{report.END}\n")
    args = ["--results", str(results), "--page", str(page), "--quotes"]
    assert report.main(args) == 0
    assert f"{report.RERUN} (`BENCH_ONLY`" in page.read_text()
    assert "): tables; the other groups" in page.read_text()
    seeded = tmp_path / "seeded.json"
    assert report.main(["--results", str(seeded), "--page", str(page), "--seed"]) == 0
    assert read(seeded)[0]["group_seconds"] == {"tables": 0}
    assert read(seeded)[0]["rerun"] == ["tables"]
    assert report.main(["--results", str(seeded), "--page", str(page), "--quotes", "--check"]) == 0
