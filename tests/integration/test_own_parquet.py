"""The user's own Parquet trained as it comes, by real Ray + 2 Horovod workers: pandas part
files with string labels (digits-fcn) and a Hugging Face image set of PNG bytes (digits-cnn),
each from a local folder (cached) and from the local S3 server (data.cache=stream); and a
clinic's mixed table (float32, float64, int and string columns, gaps) trained by a plain MLP
recipe with no preprocessing by the user, its registered model fed the raw test file.

One Ray serves the module (started once the AWS variables reach the S3 server, so its workers
inherit them); each job runs a few epochs."""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from pipeline.config import load_job_config
from pipeline.distributed.threads import thread_env
from pipeline.errors import ModelMisfitError
from pipeline.launch import run_job
from tests.datasets import DIGIT_NAMES, clinic_as_pandas, digits_as_hf_images, digits_as_pandas

pytestmark = pytest.mark.integration

SETS = {
    # recipe, column keys, epochs, the bar (chance is 0.1)
    "pandas": (
        "digits-fcn",
        ["data.label_column=digit", "data.feature_columns=pixel_*"],
        6,
        0.9,
    ),
    "hf-images": (
        "digits-cnn",
        ["data.label_column=label", "data.image_column=image"],
        6,
        0.9,
    ),
}


@pytest.fixture(scope="module")
def own_sets(tmp_path_factory, seaweedfs):
    """Both sets on the local disk and in a bucket; one Ray that reaches the bucket."""
    import boto3
    import ray

    from infra.local.seaweedfs import local_credentials

    root = tmp_path_factory.mktemp("own")
    local = {
        "pandas": digits_as_pandas(root / "pandas"),
        "hf-images": digits_as_hf_images(root / "hf-images"),
        "clinic": clinic_as_pandas(root / "clinic"),
    }
    access, secret = local_credentials()
    with pytest.MonkeyPatch.context() as env:
        for key, value in {
            "AWS_ACCESS_KEY_ID": access,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_ENDPOINT_URL": seaweedfs.endpoint,
            "AWS_REGION": "us-east-1",
        }.items():
            env.setenv(key, value)
        for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
            env.delenv(key, raising=False)
        client = boto3.client("s3")
        client.create_bucket(Bucket="own-parquet")
        for name, folder in local.items():
            for path in folder.rglob("*"):
                if path.is_file():
                    key = f"{name}/{path.relative_to(folder).as_posix()}"
                    client.upload_file(str(path), "own-parquet", key)
        ray.init(num_cpus=2, include_dashboard=True, runtime_env={"env_vars": thread_env(1)})
        try:
            yield {
                "local": {name: str(path) for name, path in local.items()},
                "s3": {name: f"s3://own-parquet/{name}" for name in local},
            }
        finally:
            ray.shutdown()


# Each format once and each way of reading once: pandas' columns cached from the local disk
# (and the registered model answering in class names), the images streamed from the bucket.
# The mapping from the user's columns is the same code behind either reader.
@pytest.mark.parametrize(("kind", "where"), [("pandas", "local"), ("hf-images", "s3")])
def test_own_parquet_trains_as_it_comes(own_sets, kind, where, tmp_path):
    recipe, keys, epochs, bar = SETS[kind]
    uri = own_sets[where][kind]
    lines: list[str] = []
    cfg = load_job_config(
        recipe,
        [
            f"data.uri={uri}",
            f"storage.path={tmp_path / 'runs'}",
            f"optim.epochs={epochs}",
            *keys,
            *(["data.cache=stream"] if where == "s3" else []),
        ],
    )
    result = run_job(cfg, progress=lines.append)

    run = MlflowClient().get_run(result.run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert sum(int(params[f"data.rows.{s}"]) for s in ("train", "val", "test")) == 1797
    assert params["data.derived.ids"] == "derived from (file, row)"
    assert any(line.startswith("  layout: ") for line in lines), lines
    print(f"{kind} from {where}: test_accuracy {result.metrics['test_accuracy']:.4f}")
    assert result.metrics["test_accuracy"] >= bar, result.metrics
    if kind == "pandas":
        assert params["data.derived.class_names"] == str(sorted(DIGIT_NAMES)).replace("'", '"')
    else:
        assert params["data.feature_shape"] == "[1, 8, 8]"
    if kind == "pandas" and where == "local":
        _registered_model_answers_in_names(result, uri, bar)


def _registered_model_answers_in_names(result, uri: str, bar: float) -> None:
    """The pyfunc, loaded without this project's code, names the class of the user's rows."""
    reg = result.registration
    model = mlflow.pyfunc.load_model(f"models:/{reg.name}/{reg.version}")
    frame = pd.read_parquet(uri)
    predicted = model.predict(frame)  # the table as pandas reads it, label column and all
    assert list(predicted.columns[:2]) == ["prediction", "probability_eight"]
    assert (predicted["prediction"].to_numpy() == frame["digit"].to_numpy()).mean() >= bar


def test_a_mixed_table_trains_with_no_preprocessing_and_its_model_takes_the_raw_file(
    own_sets, tmp_path
):
    """float32/float64/int columns, a string column and gaps (data.missing=mean): the workers
    encode with the training split's statistics, the run records them, and the registered
    model answers pd.read_parquet of the raw test file with class names, as `make predict`
    does."""
    import pyarrow.parquet as pq

    from pipeline.predict.batch import PredictRequest
    from pipeline.predict.batch import predict as score

    uri = own_sets["local"]["clinic"]
    cfg = load_job_config(
        "digits-fcn",
        [
            f"data.uri={uri}",
            f"storage.path={tmp_path / 'runs'}",
            "data.label_column=diagnosis",
            "data.feature_columns=*",
            "data.missing=mean",
            "optim.epochs=12",
            "tracking.gate_min=0.85",
        ],
    )
    result = run_job(cfg)
    params = MlflowClient().get_run(result.run_id).data.params
    assert "1 category columns one-hot ('site': 3+1)" in params["data.derived.features"]
    assert "missing values filled with the training mean" in params["data.derived.features"]
    print(f"clinic: test_accuracy {result.metrics['test_accuracy']:.4f}")
    assert result.metrics["test_accuracy"] >= 0.85, result.metrics

    reg = result.registration
    model = mlflow.pyfunc.load_model(f"models:/{reg.name}/{reg.version}")
    raw = pd.read_parquet(f"{uri}/test")
    assert raw["mean_texture"].isna().any() and raw["site"].isna().any()
    predicted = model.predict(raw)
    assert (predicted["prediction"].to_numpy() == raw["diagnosis"].to_numpy()).mean() >= 0.85

    # Batch scoring (`make predict`) of the same file gives each row the same answer.
    out = tmp_path / "scored"
    # One actor: the module's Ray has 2 CPUs, and reads need half of one beside the actors.
    request = PredictRequest(f"models:/{reg.name}/{reg.version}", f"{uri}/test", str(out), actors=1)
    score(request, print)
    scored = pq.read_table(out).to_pandas().sort_values("id")
    assert len(scored) == len(raw)
    assert list(scored["prediction_name"]) == list(predicted["prediction"])


@pytest.mark.parametrize("tracked", [True, False])
def test_a_model_that_does_not_fit_the_table_is_one_error_and_no_run(own_sets, tracked, tmp_path):
    """A CNN for a table of flat pixel columns. A tracked job checks the fit while Ray starts
    the workers, and opens no run for it; an untracked one leaves it to the workers, which
    refuse it at once (not as a failure to retry: max_failures is 2)."""
    cfg = load_job_config(
        "digits-cnn",
        [
            f"data.uri={own_sets['local']['pandas']}",
            f"storage.path={tmp_path / 'runs'}",
            *SETS["pandas"][1],
            "scaling.max_failures=2",
            f"tracking.enabled={str(tracked).lower()}",
        ],
    )
    with pytest.raises(ModelMisfitError, match=r"model.name=cnn does not fit .*image-shaped"):
        run_job(cfg, progress=lambda _line: None)
    experiment = MlflowClient().get_experiment_by_name(cfg.tracking.experiment)
    assert experiment is None or not MlflowClient().search_runs([experiment.experiment_id])
