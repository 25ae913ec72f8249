"""The search space and the search's refusals, before any trial (the search itself:
tests/integration/test_tune.py)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import config_from_params, load_job_config
from pipeline.errors import ConfigError
from pipeline.tracking.client import param_value
from pipeline.tracking.names import PARAM_STORAGE, TAG_KIND
from pipeline.tune.search import TuneRequest, _concurrency, tune
from pipeline.tune.space import check_space, parse_space, trial_overrides


def test_each_distribution_parses_and_becomes_overrides_of_a_job():
    dims = parse_space(
        [
            "optim.learning_rate = loguniform(0.005, 0.5)",
            "model.dropout=uniform(0, 0.5)",
            "data.batch_size = randint(16, 65)",
            'optim.optimizer = choice("sgd", "adam")',
        ]
    )
    assert [(d.key, d.kind) for d in dims] == [
        ("optim.learning_rate", "loguniform"),
        ("model.dropout", "uniform"),
        ("data.batch_size", "randint"),
        ("optim.optimizer", "choice"),
    ]
    assert dims[2].edges() == [16, 64]  # randint's high is excluded
    check_space(dims, "digits-fcn", [])
    draw = {
        "optim.learning_rate": np.float64(0.0123),
        "model.dropout": 0.25,
        "data.batch_size": np.int64(48),
        "optim.optimizer": "adam",
    }
    sets = trial_overrides(dims, draw)
    cfg = load_job_config("digits-fcn", sets)
    assert (cfg.optim.learning_rate, cfg.model.arch.dropout) == (0.0123, 0.25)
    assert (cfg.data.batch_size, cfg.optim.optimizer) == (48, "adam")
    # Ray Tune's own objects, from the same items.
    from ray import tune

    assert isinstance(dims[0].to_tune(), tune.search.sample.Float)
    assert dims[3].to_tune().categories == ["sgd", "adam"]


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("optim.learning_rate ~ uniform(0, 1)", "expected 'section.key = DIST"),
        ("optim.learning_rate = normal(0, 1)", "unknown distribution 'normal'"),
        ("optim.learning_rate = uniform(0.1, 0.1)", "the range is empty or inverted"),
        ("optim.learning_rate = uniform(0.5, 0.1)", "the range is empty or inverted"),
        ("optim.learning_rate = loguniform(0, 0.1)", "loguniform needs low > 0"),
        ("data.batch_size = randint(16.5, 64)", "randint takes integers"),
        ("model.width = choice()", "choice() needs at least one value"),
        ("optim.optimizer = choice(sgd, adam)", "not a list of numbers or quoted strings"),
        ("tune.trials = choice(1, 2)", "the search's own settings cannot be searched"),
        ("optim.learning_rate = uniform(1, 2, 3)", "takes two numbers"),
    ],
)
def test_a_bad_space_item_is_refused_by_name(item, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_space([item])


def test_keys_and_ranges_are_checked_against_the_configuration():
    with pytest.raises(ConfigError, match=r"did you mean 'optim\.learning_rate'"):
        check_space(parse_space(["optim.learnng_rate = uniform(0.1, 0.2)"]), "digits-fcn", [])
    with pytest.raises(ConfigError, match=r"model.dropout: must be in \[0, 1\), got 1.5"):
        check_space(parse_space(["model.dropout = uniform(0.1, 1.5)"]), "digits-fcn", [])
    with pytest.raises(ConfigError, match=r"model\.width = choice.*got 'wide'"):
        check_space(parse_space(['model.width = choice(64, "wide")']), "digits-fcn", [])
    with pytest.raises(ConfigError, match="has no search space"):
        check_space([], "digits-cnn", [])
    with pytest.raises(ConfigError, match="is given twice"):
        parse_space(["model.width = choice(64)", "model.width = choice(128)"])


def test_trials_fit_the_machine(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    two = load_job_config("digits-fcn", ["scaling.num_workers=2"])
    one = load_job_config("digits-fcn", ["scaling.num_workers=1"])
    assert _concurrency(two) == (1, 3.0)  # one 2-worker trial (+1 CPU for its driver)
    assert _concurrency(one) == (2, 4.0)  # two 1-worker trials
    assert _concurrency(
        load_job_config("digits-fcn", ["scaling.num_workers=1", "tune.max_concurrent=1"])
    ) == (1, 2.0)
    with pytest.raises(ConfigError, match="needs 3 CPUs; this machine has 2: use --workers 2"):
        _concurrency(load_job_config("digits-fcn", ["scaling.num_workers=3"]))


def test_the_metric_follows_the_recipes_target():
    assert load_job_config("digits-fcn").tune.metric_name("test_accuracy") == "val_accuracy"
    assert (
        load_job_config("digits-fcn", ["tune.metric=val_loss"]).tune.metric_name("x") == "val_loss"
    )


def test_a_trials_config_round_trips_through_its_params():
    cfg = load_job_config("fashion-mlp", [])
    assert cfg.tune.space and cfg.tune.trials == 6
    params = {k: param_value(v) for k, v in cfg.to_dict().items()}
    assert config_from_params(params) == cfg


def test_a_bad_search_is_refused_before_ray_starts(capsys):
    from jobs._cli import exit_code
    from jobs.tune import main

    code = exit_code(
        lambda: main(
            ["--recipe", "digits-fcn", "--set", 'tune.space=["optim.lr = uniform(0.1, 0.2)"]']
        )
    )
    err = capsys.readouterr()
    assert code == 2
    lines = err.err.strip().splitlines()
    assert len(lines) == 1 and "unknown config key 'optim.lr'" in lines[0], err
    assert "starting a local Ray" not in err.out
    with pytest.raises(ConfigError, match=r"tracking\.enabled must be true"):
        tune(TuneRequest("digits-fcn", ("tracking.enabled=false",)))


def test_resume_never_restores_from_a_place_the_run_names(digits_uri, tmp_path):
    """Tune unpickles the search state it restores: the place is computed from the user's
    recipe and storage, and a run that names another one is refused before Ray starts."""
    import pickle

    from mlflow import MlflowClient

    from pipeline.tune.record import search_path

    marker = tmp_path / "ran"
    planted = tmp_path / "planted" / "tune-digits-fcn-x"
    planted.mkdir(parents=True)

    class Payload:
        def __reduce__(self):
            return (marker.write_text, ("the planted pickle ran",))

    (planted / "tuner.pkl").write_bytes(pickle.dumps(Payload()))
    client = MlflowClient()
    run_id = client.create_run("0", tags={TAG_KIND: "tune"}).info.run_id
    client.log_param(run_id, PARAM_STORAGE, str(planted))
    sets = (f"data.uri={digits_uri}", f"storage.path={tmp_path / 'runs'}")
    with pytest.raises(
        ConfigError, match=r"kept its state at .*planted.* give .*/runs/tune-digits-fcn-"
    ):
        tune(TuneRequest("digits-fcn", sets, resume=run_id))
    assert not marker.exists()
    cfg = load_job_config("digits-fcn", list(sets))
    assert search_path(cfg, run_id) == f"{tmp_path / 'runs'}/tune-digits-fcn-{run_id[:8]}"


def test_a_search_records_its_overrides_without_their_secrets():
    import json

    from mlflow import MlflowClient

    from pipeline.tune.record import open_search_run

    secret = "s3.endpoint_url=http://me:hunter2@127.0.0.1:9"
    request = TuneRequest("digits-fcn", (secret,))
    cfg = load_job_config("digits-fcn", [secret])
    dims = parse_space(cfg.tune.space or ["optim.learning_rate = loguniform(0.01, 0.1)"])
    shown: list[str] = []
    run_id, _, _ = open_search_run(
        cfg, request.overrides, "", dims, "val_accuracy", 1, {}, shown.append
    )
    recorded = MlflowClient().get_run(run_id).data.params["tune.overrides"]
    assert json.loads(recorded) == ["s3.endpoint_url=http://me:***@127.0.0.1:9"]
    assert "hunter2" not in " ".join(shown)
