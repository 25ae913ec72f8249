"""A ``jobs.predict`` job as an MLflow run: in the experiment ``mxtrain-predict``, opened
before the work (a crash leaves it FAILED, not missing), with the model version scored, the
data's URI and digest (as params and as an MLflow dataset input), the output location, and at
the end the row counts, throughput and, for labelled data, accuracy; the output's manifest as
an artifact."""

from __future__ import annotations

import contextlib
import time

from pipeline.errors import TrackingError
from pipeline.redact import redact
from pipeline.tracking import code_version
from pipeline.tracking.client import client_for, quiet_mlflow, tracking_problem
from pipeline.tracking.model_source import SourceModel
from pipeline.tracking.names import TAG_DATA_DIGEST, TAG_KIND, TAG_MODEL, TAG_NOTE
from pipeline.tracking.outage import is_unreachable


class PredictRun:
    def __init__(self, uri: str, run_id: str) -> None:
        self.uri = uri
        self.run_id = run_id

    @classmethod
    def open(
        cls, uri: str, experiment: str, source: SourceModel, params: dict[str, str], digest: str
    ) -> PredictRun:
        from mlflow.entities import Param

        try:
            client = client_for(uri)
            exp = client.get_experiment_by_name(experiment)
            exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
            run = client.create_run(
                exp_id,
                run_name=f"predict-{source.name}-v{source.version}-{time.strftime('%Y%m%d-%H%M%S')}",
                tags={
                    **code_version.source_tags(code_version.entry_point()),
                    TAG_KIND: "predict",
                    TAG_MODEL: source.uri,
                    TAG_DATA_DIGEST: digest,
                    TAG_NOTE: (
                        f"Batch scoring of {params.get('data_uri', '')} with {source.uri} "
                        f"(run {source.run_id}); output {params.get('out_uri', '')}."
                    ),
                },
            )
            client.log_batch(
                run.info.run_id, params=[Param(k, redact(str(v))) for k, v in params.items()]
            )
        except Exception as exc:
            if is_unreachable(exc):
                raise TrackingError(
                    f"MLflow tracking at {redact(uri)} does not answer: {exc}"
                ) from None
            raise TrackingError(tracking_problem(uri, exc)) from None
        return cls(uri, run.info.run_id)

    def finish(self, metrics: dict[str, float], manifest: dict) -> None:
        from mlflow.entities import Metric

        client = client_for(self.uri)
        now = int(time.time() * 1000)
        client.log_batch(
            self.run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()]
        )
        with quiet_mlflow():
            client.log_dict(self.run_id, manifest, "predictions/_manifest.json")
        client.set_terminated(self.run_id, "FINISHED")

    def fail(self) -> None:
        with contextlib.suppress(Exception):
            client_for(self.uri).set_terminated(self.run_id, "FAILED")
