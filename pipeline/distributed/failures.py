"""Which worker failures Ray Train may retry.

Ray Train restarts the worker group after any worker failure, up to ``max_failures`` times.
That is right for a lost node or a crashed process, and wrong for a bad data file, a bad
setting or a diverged loss: each restart fails the same way, and the user waits for all of
them before seeing the one line that says what to fix. A worker that raises a
:class:`~pipeline.errors.PipelineError` whose ``retryable`` is false ends the job at once.

Ray 2.60 has no public hook for this: the policy replaces Train v2's default policy factory
while :func:`stop_on_user_errors` is active (around ``trainer.fit()`` in ``launch.fit``);
``tests/unit/test_distributed_units.py`` checks the hook is still where we expect it, and
``tests/integration/test_distributed_training.py::test_a_workers_data_error_ends_the_job_at_once``
that a real ``fit()`` with ``max_failures=2`` runs one attempt when a worker's data is bad
(if Ray moves the call, that test sees the restarts).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from pipeline.errors import PipelineError


def user_error(exc: BaseException) -> PipelineError | None:
    """The first worker's PipelineError inside a Train failure, if there is one."""
    for failure in getattr(exc, "worker_failures", {}).values():
        for candidate in (failure, getattr(failure, "cause", None), failure.__cause__):
            if isinstance(candidate, PipelineError):
                return candidate
    return None


def _make_policy(failure_config):
    from ray.train.v2._internal.execution.failure_handling import (
        DefaultFailurePolicy,
        FailureDecision,
    )

    class StopOnUserError(DefaultFailurePolicy):
        """Ray's default policy, except that a non-retryable PipelineError raises at once."""

        def make_decision(self, training_failed_error):
            error = user_error(training_failed_error)
            if error is not None and not error.retryable:
                return FailureDecision.RAISE
            return super().make_decision(training_failed_error)

    return StopOnUserError(failure_config)


@contextlib.contextmanager
def stop_on_user_errors() -> Iterator[None]:
    """While active, Ray Train controllers created in this process use our policy."""
    from ray.train.v2.api import data_parallel_trainer

    original = data_parallel_trainer.create_failure_policy
    data_parallel_trainer.create_failure_policy = _make_policy
    try:
        yield
    finally:
        data_parallel_trainer.create_failure_policy = original
