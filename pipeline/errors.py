"""One exception type per failure class a user can cause.

Every message names the thing at fault and how to fix it, in one line: the entry points print
``error: <message>`` and exit with :attr:`PipelineError.exit_code`, without a traceback.
Anything that is not a ``PipelineError`` is a bug and keeps its traceback.
"""

from __future__ import annotations

from pipeline.redact import redact


class PipelineError(Exception):
    """Base class for failures caused by input or environment, not by our code."""

    exit_code = 2
    #: Whether Ray Train should start the worker group again when a worker raises it. A bad
    #: file or setting fails the same way on every attempt, so by default it ends the job at
    #: once instead of burning ``scaling.max_failures`` restarts.
    retryable = False

    def __init__(self, message: str = "") -> None:
        # One line whatever a library's message held (pyarrow's hold newlines): the user's
        # last line is the whole message, and a worker's log can recognise it. A URI's
        # password never reaches it, wherever the text came from.
        super().__init__(redact(" ".join(str(message).split())))


class ConfigError(PipelineError):
    """A recipe or override names an unknown key, has the wrong type or a bad value."""


class ModelMisfitError(ConfigError):
    """The model family cannot be built for the data's features or classes."""

    @classmethod
    def of(cls, model: str, data_uri: str, why: object) -> ModelMisfitError:
        # A classmethod, not __init__: a worker's error is pickled with its message only.
        return cls(f"model.name={model} does not fit {data_uri}: {why}")


class DataError(PipelineError):
    """Training data is missing, unreadable or does not meet the Parquet data contract."""


class StorageError(PipelineError):
    """Object storage is unreachable, denies access, or a bucket/prefix does not exist."""


class StorageUnavailableError(StorageError):
    """Reading or writing storage failed after the client's own retries (network, throttling,
    a server down): not the data's fault, and possibly gone on the next attempt."""

    retryable = True


class TrackingError(PipelineError):
    """The MLflow tracking server or model registry cannot be used."""


class TrainingError(PipelineError):
    """The distributed training run failed (worker errors, exhausted restarts)."""

    exit_code = 1


class DivergedError(TrainingError):
    """The loss became NaN or infinite: the run cannot recover by itself, and a restart from
    the last checkpoint would diverge again the same way."""


class JobStopped(PipelineError):
    """The driver was told to stop (SIGTERM from ``ray job stop`` or an eviction, Ctrl-C):
    the run is KILLED and can be resumed."""

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.exit_code = 128 + signal_number
