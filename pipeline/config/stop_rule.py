"""``optim.stop_at``: end training at the first epoch whose metric reaches a value.

``val_accuracy>=0.92`` stops a 15-epoch job at the epoch whose validation accuracy first
reaches 0.92: that epoch becomes the last one (the test split is evaluated, the model logged
and registered as at a last epoch), and the remaining epochs' compute is saved. It is how
time to accuracy is measured (MLPerf's rule: evaluate after every epoch, stop the clock at the
first that reaches the target) and how a user stops paying once a model is good enough.

The rule reads the epoch's metrics after validation; every rank holds the same values (they
are averaged across ranks), so every rank stops at the same epoch.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pipeline.errors import ConfigError

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
}
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_RULE = re.compile(rf"^\s*([A-Za-z_]\w*)\s*(>=|<=|>|<)\s*({_NUMBER})\s*$")
EXAMPLE = "val_accuracy>=0.92 or val_loss<=0.3"


@dataclass(frozen=True)
class StopRule:
    metric: str
    op: str
    value: float

    @classmethod
    def parse(cls, text: str) -> StopRule | None:
        """The rule in ``text`` (``metric>=value``, ``<=``, ``>`` or ``<``); None for ""."""
        if not text.strip():
            return None
        match = _RULE.match(text)
        if match is None:
            raise ConfigError(
                f"optim.stop_at: {text!r} is not <metric><op><number>; write e.g. {EXAMPLE}"
            )
        metric, op, number = match.groups()
        return cls(metric, op, float(number))

    def met(self, metrics: Mapping[str, float]) -> bool:
        """Whether an epoch's ``metrics`` reach the rule; ConfigError when the job does not
        log the rule's metric (the names it does log are listed)."""
        if self.metric not in metrics:
            names = ", ".join(sorted(k for k in metrics if not k.startswith("_")))
            raise ConfigError(
                f"optim.stop_at: this job logs no metric {self.metric!r} after an epoch; "
                f"choose one of {names}"
            )
        return _OPS[self.op](float(metrics[self.metric]), self.value)

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}"
