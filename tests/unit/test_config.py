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
        ("model.heads=3", "model.heads: must divide d_model=64, got 3"),
        ("optim.learning_rate=inf", "optim.learning_rate: must be a finite number, got inf"),
        ("optim.momentum=nan", "optim.momentum: must be a finite number, got nan"),
        ("optim.momentum=1", "optim.momentum: must be in [0, 1), got 1.0"),
        ("optim.warmup_epochs=15", "optim.warmup_epochs: must be in [0, optim.epochs), got 15"),
        ("seed=-1", "seed: must be in [0, 4294967295], got -1"),
        ("scaling.gloo_timeout_s=0", "scaling.gloo_timeout_s: must be >= 1, got 0"),
        ("scaling.horovod_cycle_ms=0", "scaling.horovod_cycle_ms: must be > 0, got 0"),
        ("scaling.network_interface=eth0 lo", "scaling.network_interface: must be one"),
        # The recipe's name is part of the checkpoint folder's path.
        ("recipe=../../x", "recipe: must be a plain name (letters, digits, '.', '_', '-')"),
        ("recipe=a/b", "recipe: must be a plain name"),
        ("tracking.gate_metric=loss", "tracking.gate_metric: must be one of"),
        ("tracking.outage_wait_s=-1", "tracking.outage_wait_s: must be >= 0"),
    ],
)
def test_bad_values_name_the_key(override, message):
    recipe = "digits-attention" if override.startswith("model.heads") else "digits-cnn"
    with pytest.raises(ConfigError) as err:
        load_job_config(recipe, [override])
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
    # Each key on its line with its default and, where it has them, its bounds.
    lines = {ln.split()[0]: ln for ln in proc.stdout.splitlines() if ln.startswith("  ")}
    for key, bounds in (
        ("data.batch_size", "(default 64; >= 1)"),
        ("optim.learning_rate", "(default 0.05; > 0)"),
        ("optim.momentum", "(default 0.9; in [0, 1))"),
        ("scaling.num_workers", "(default 2; >= 1)"),
        ("scaling.gloo_timeout_s", "(default 300; >= 1)"),
        ("scaling.network_interface", "(default '')"),
        ("model.blocks_per_stage", "(default 2; >= 1)"),
        ("seed", "(default 0; in [0, 4294967295])"),
    ):
        assert key in lines, key
        assert lines[key].rstrip().endswith(bounds), lines[key]
    assert "RAY_ADDRESS" in proc.stdout


def test_every_bound_is_declared_once_and_checked():
    """Every numeric key has bounds in its metadata; a value just outside them is refused."""
    import dataclasses

    from models.config import MODEL_CONFIGS
    from pipeline.config.loader import SECTIONS

    for prefix, cls in [*SECTIONS.items(), *(("model", c) for c in MODEL_CONFIGS.values())]:
        for f in dataclasses.fields(cls):
            if f.type in ("int", "float"):
                assert {"ge", "gt"} & set(f.metadata), f"{prefix}.{f.name} has no lower bound"


def test_print_config_shows_the_gloo_settings():
    proc = run_cli(
        "jobs.train", "--print-config", "--set", "scaling.network_interface=eth1", timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "scaling.gloo_timeout_s = 300" in proc.stdout
    assert "scaling.network_interface = 'eth1'" in proc.stdout


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("scaling.network_interface=nosuch0", "scaling.network_interface=nosuch0: this machine"),
        (
            "scaling.use_gpu=true",
            "scaling.use_gpu=true needs a GPU per worker (2) but MXNet sees 0",
        ),
    ],
)
def test_what_the_local_machine_lacks_is_one_line_before_any_run(override, needle, tmp_path):
    proc = run_cli("jobs.train", "--set", override, "--data", str(tmp_path), timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], proc.stderr
