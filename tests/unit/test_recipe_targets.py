"""One number per recipe target: the tests' RECIPE_TARGETS, each recipe file's "Target:" line
and the README's recipe table must agree."""

from __future__ import annotations

import re

import pytest

from pipeline.config import RECIPES_DIR, load_job_config
from tests.conftest import RECIPE_TARGETS, REPO


def test_every_recipe_has_a_target():
    assert {p.stem for p in RECIPES_DIR.glob("*.toml")} == set(RECIPE_TARGETS)


@pytest.mark.parametrize("recipe", sorted(RECIPE_TARGETS))
def test_recipe_file_and_readme_state_the_tests_target(recipe):
    metric, value = RECIPE_TARGETS[recipe]
    text = (RECIPES_DIR / f"{recipe}.toml").read_text()
    stated = re.findall(r"Target: (\w+) >= ([\d.]+)", text)
    assert stated == [(metric, f"{value:.2f}")], (recipe, stated)

    row = next(
        line
        for line in (REPO / "README.md").read_text().splitlines()
        if line.startswith(f"| `{recipe}` |")
    )
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2:4] == [metric, f"≥ {value:.2f}"], (recipe, cells)


@pytest.mark.parametrize("recipe", sorted(RECIPE_TARGETS))
def test_the_recipes_gate_is_its_target(recipe):
    """The alias moves only to a model that meets the recipe's stated target."""
    metric, value = RECIPE_TARGETS[recipe]
    tracking = load_job_config(recipe).tracking
    assert (tracking.gate_metric, tracking.gate_min) == (metric, value)
