"""optim.stop_at: the rule is parsed when the config is built and read after each epoch."""

from __future__ import annotations

import pytest

from pipeline.config import load_job_config
from pipeline.config.stop_rule import StopRule
from pipeline.errors import ConfigError


def test_a_rule_is_met_at_its_bound_and_not_below():
    rule = StopRule.parse("val_accuracy>=0.92")
    assert rule == StopRule("val_accuracy", ">=", 0.92) and str(rule) == "val_accuracy>=0.92"
    assert rule.met({"val_accuracy": 0.92}) and not rule.met({"val_accuracy": 0.9199})
    loss = StopRule.parse(" val_loss < 0.3 ")
    assert loss.met({"val_loss": 0.29}) and not loss.met({"val_loss": 0.3})
    assert StopRule.parse("") is None


@pytest.mark.parametrize("text", ["val_accuracy=0.9", "val_accuracy>=", ">=0.9", "acc>=0.9.1"])
def test_a_malformed_rule_is_one_line_with_an_example(text):
    with pytest.raises(ConfigError, match=r"optim.stop_at: .* write e\.g\. val_accuracy>=0\.92"):
        StopRule.parse(text)


def test_the_config_refuses_a_malformed_rule_before_anything_starts():
    with pytest.raises(ConfigError, match=r"optim\.stop_at"):
        load_job_config("digits-fcn", ["optim.stop_at=accuracy"])
    assert load_job_config("digits-fcn", ["optim.stop_at=val_accuracy>=0.9"]).optim.stop_at


def test_a_metric_the_job_does_not_log_names_the_ones_it_does():
    with pytest.raises(ConfigError, match=r"no metric 'val_acc' .* val_accuracy, val_loss$"):
        StopRule.parse("val_acc>=0.9").met({"val_loss": 1.0, "val_accuracy": 0.5, "_samples": 3})


def test_the_runs_note_says_it_stopped_early():
    from pipeline.tracking.summary import _epochs

    cfg = load_job_config("digits-fcn", ["optim.epochs=15", "optim.stop_at=val_accuracy>=0.9"])
    assert _epochs(cfg, {"epochs_trained": 3.0}) == (
        "3 of 15 epochs (stopped: optim.stop_at val_accuracy>=0.9)"
    )
    assert _epochs(cfg, {"epochs_trained": 15.0}) == "15 epochs"
    assert _epochs(cfg, {}) == "15 epochs"
