"""`make bench` at a tiny size: every figure is produced and is a finite positive number
(or marked n/a with its reason). No timing is asserted: the figures are measurements.

Marked slow (make test-all): about 280 s on 2 cores, which make test's 30-minute budget no
longer holds beside the real-data tests."""

from __future__ import annotations

import json
import math

import pytest

from tests.conftest import run_cli

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXPECTED = {
    "ingest_vs_pyarrow",
    "ingest_vs_raydata",
    "ingest_vs_petastorm",
    "ingest_s3_vs_local",
    "step_overhead_cnn",
    "step_overhead_mlp",
    "tracking_overhead",
    "allreduce_bus_bw_1KB",
    "allreduce_bus_bw_64KB",
    "allreduce_bus_bw_1MB",
    "scaling_efficiency",
    "startup_vs_horovodrun",
    "rss_growth",
    "ingest_augmented_vs_plain",
    "checkpoint_stall",
}


def test_every_benchmark_figure_is_produced(tmp_path):
    out = tmp_path / "results.json"
    proc = run_cli("jobs.benchmarks.run", "--size", "tiny", "--out", str(out), timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["machine"]["cores"] >= 1 and results["size"] == "tiny"
    figures = {f["name"]: f for f in results["figures"]}
    assert set(figures) == EXPECTED
    for name, f in figures.items():
        assert set(f) == {"name", "value", "baseline", "ratio", "target", "unit", "note"}
        if f["note"].startswith("n/a:"):
            assert f["value"] is None and len(f["note"]) > 20, name
            continue
        if f["baseline"] is None:  # an absolute figure (a difference: noise can make it < 0)
            assert f["ratio"] == f["value"] and math.isfinite(f["value"]), (name, f)
            continue
        for key in ("value", "baseline", "ratio"):
            assert isinstance(f[key], float) and math.isfinite(f[key]) and f[key] > 0, (name, f)
    assert "ingest_vs_pyarrow" in proc.stdout  # the table is printed
