from __future__ import annotations

import pytest

from pipeline.config import JobConfig, all_keys, load_job_config, parse_override
from pipeline.errors import ConfigError
from tests.conftest import run_cli


def test_recipe_loads_with_overrides_and_shortcuts():
    cfg = load_job_config(
        "digits-cnn",
        ["optim.epochs=3", "model.channels=8", "data.uri=s3://bucket/digits"],
        {"scaling.num_workers": 4},
    )
    assert cfg.recipe == "digits-cnn"
    assert cfg.optim.epochs == 3
    assert cfg.model.arch.channels == 8
    assert cfg.data.uri == "s3://bucket/digits"
    assert cfg.scaling.num_workers == 4


def test_to_dict_flattens_every_field():
    flat = load_job_config("digits-cnn").to_dict()
    assert flat["scaling.num_workers"] == 2
    assert flat["model.name"] == "cnn"
    assert "model.blocks_per_stage" in flat
    assert set(all_keys("cnn")) == set(flat)


def test_int_accepted_for_float_but_not_string():
    assert load_job_config(None, ["optim.learning_rate=1"]).optim.learning_rate == 1.0
    with pytest.raises(ConfigError, match=r"optim\.learning_rate: expected a number"):
        load_job_config(None, ["optim.learning_rate=fast"])


def test_bool_is_not_an_int():
    with pytest.raises(ConfigError, match=r"scaling\.num_workers: expected an integer"):
        load_job_config(None, ["scaling.num_workers=true"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lr=0.1", "unknown config key 'optim.lr'"),
        ("nosuch.key=1", "unknown config key 'nosuch'"),
        ("optim.epochs=0", "optim.epochs: must be >= 1, got 0"),
        ("optim.optimizer=rmsprop", "optim.optimizer: must be one of sgd, nag, adam"),
        ("model.name=vgg", "model.name: must be one of"),
        ("model.channels=0", "model.channels: must be >= 1"),
        ("model.dropout=1.5", "model.dropout: must be in [0, 1)"),
        ("data.cache=disk", "data.cache: must be one of auto, memory, stream"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_job_config("digits-cnn", [override])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_override_values_are_toml_or_plain_strings():
    assert parse_override("data.uri=s3://b/p") == (["data", "uri"], "s3://b/p")
    assert parse_override("optim.epochs=3") == (["optim", "epochs"], 3)
    assert parse_override('tracking.alias="prod"') == (["tracking", "alias"], "prod")
    with pytest.raises(ConfigError):
        parse_override("no-equals-sign")


def test_unknown_recipe_lists_known_ones():
    with pytest.raises(ConfigError, match=r"known recipes: .*digits-cnn"):
        load_job_config("no-such-recipe")


def test_defaults_are_valid():
    assert JobConfig().to_dict()["optim.epochs"] >= 1


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--set", "optim.lr=0.1"], "unknown config key 'optim.lr'"),
        (["--set", "optim.epochs=many"], "optim.epochs: expected an integer"),
        (["--set", "optim.epochs=-1"], "optim.epochs: must be >= 1"),
        (["--workers", "0"], "scaling.num_workers: must be >= 1"),
        (["--recipe", "nope"], "recipe 'nope' not found"),
    ],
)
def test_cli_config_errors_exit_2_with_one_line(args, needle):
    proc = run_cli("jobs.train", *args, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines == [lines[0]] and lines[0].startswith("error: "), proc.stderr
    assert needle in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout


def test_cli_help_explains_every_key():
    proc = run_cli("jobs.train", "--help", timeout=120)
    assert proc.returncode == 0
    for key in (
        "data.batch_size",
        "optim.learning_rate",
        "scaling.num_workers",
        "blocks_per_stage",
    ):
        assert key.split(".")[-1] in proc.stdout
    assert "RAY_ADDRESS" in proc.stdout
