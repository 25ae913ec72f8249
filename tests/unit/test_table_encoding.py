"""Tables as users have them: number and string columns with gaps, encoded with statistics of
the training split only, the same way by the workers' reader and by the logged model, which
takes the DataFrame pandas reads."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import load_job_config
from pipeline.data.contract import FEATURES
from pipeline.data.datasets import clinic_table
from pipeline.data.ingest import epoch_pieces, open_source
from pipeline.data.own_parquet import inspect_own_parquet
from pipeline.data.table_encoding import (
    CATEGORY,
    NUMBER,
    EncodingError,
    Fitter,
)
from pipeline.errors import DataError
from tests.datasets import clinic_as_pandas

CLINIC = ["data.label_column=diagnosis", "data.feature_columns=*"]
NUMBERS = [c for c in clinic_table().columns if c not in ("site", "diagnosis", "split")]


def inspect(uri, *keys: str):
    cfg = load_job_config(None, [f"data.uri={uri}", *CLINIC, *keys])
    return inspect_own_parquet(cfg.data, cfg.seed)


def features_of(info, split: str) -> np.ndarray:
    source = open_source(info, split, memory=False)
    try:
        pieces = epoch_pieces(info.splits[split], 0, 0, shuffle=False)
        table = pa.concat_tables(source.read_in_order(pieces))
    finally:
        source.close()
    return np.stack(table.column(FEATURES).to_numpy(zero_copy_only=False))


@pytest.fixture(scope="module")
def clinic(tmp_path_factory):
    return clinic_as_pandas(tmp_path_factory.mktemp("clinic") / "set")


def _columns(frame: pd.DataFrame, names) -> dict:
    return {
        n: (
            frame[n].to_numpy(dtype=object if frame[n].dtype == object else "float64"),
            frame[n].isna().to_numpy(),
        )
        for n in names
    }


def _table_model(info, tmp_path):
    """(network, its bundle) of a small MLP for ``info``'s encoded rows, untrained."""
    import mxnet as mx

    from models import build_model
    from models.config import MLPConfig
    from pipeline.model import bundle

    net = build_model("mlp", MLPConfig(width=16, depth=1), info.feature_shape, info.num_classes)
    net.initialize(mx.init.Xavier())
    net.hybridize()
    net(mx.nd.zeros((1, info.num_features)))
    return net, bundle.write(tmp_path / "b", net, bundle.BundleMeta.for_data("classifier", 0, info))


def test_statistics_come_from_the_training_rows_only(clinic):
    info = inspect(clinic, "data.missing=mean", "data.normalize=true")
    encoding = info.mapping.encoding
    kinds = {c.name: c.kind for c in encoding.columns}
    assert (
        kinds["site"] == CATEGORY and kinds["visits"] == NUMBER and kinds["mean_radius"] == NUMBER
    )
    assert "diagnosis" not in kinds and len(kinds) == 32
    # 31 numbers, and site's 3 values plus the <other> slot.
    assert encoding.width == info.num_features == 31 + 4
    train = pd.read_parquet(clinic / "train")
    site = next(c for c in encoding.columns if c.name == "site")
    assert site.categories == ("gp", "oncology", "screening")
    texture = next(c for c in encoding.columns if c.name == "mean_texture")
    assert texture.fill == pytest.approx(train["mean_texture"].mean(), rel=1e-6)
    assert texture.shift == pytest.approx(train["mean_texture"].mean(), rel=1e-6)
    assert texture.scale == pytest.approx(1 / train["mean_texture"].std(ddof=0), rel=1e-5)

    # The training rows as the workers read them: standardized numbers, one-hot sites.
    rows = features_of(info, "train")
    assert rows.shape == (len(train), 35)
    numbers = rows[:, : len(NUMBERS)]
    np.testing.assert_allclose(numbers.mean(axis=0), 0, atol=1e-4)
    complete = [i for i, n in enumerate(NUMBERS) if not train[n].isna().any()]
    np.testing.assert_allclose(numbers[:, complete].std(axis=0), 1, rtol=1e-4)
    one_hot = rows[:, len(NUMBERS) :]
    assert (one_hot.sum(axis=1) == 1).all()
    assert (one_hot[:, 3] == 1).sum() == train["site"].isna().sum()  # missing -> <other>
    assert (one_hot[:, 1] == 1).sum() == (train["site"] == "oncology").sum()

    # A test split far from the training data does not move a statistic.
    shifted = clinic.parent / "shifted"
    clinic_as_pandas(shifted)
    test = pd.read_parquet(shifted / "test")
    test[NUMBERS] = test[NUMBERS] * 100 + 7
    test["site"] = "a new clinic"
    test.to_parquet(shifted / "test" / "part-0.parquet")
    again = inspect(shifted, "data.missing=mean", "data.normalize=true").mapping.encoding
    assert again == encoding
    # ... and a site first seen there takes the <other> slot.
    assert (features_of(inspect(shifted, "data.missing=mean"), "test")[:, -1] == 1).all()


def test_missing_values_are_refused_by_default_naming_the_column_and_the_fix(clinic):
    info = inspect(clinic)
    with pytest.raises(DataError) as err:
        features_of(info, "train")
    text = str(err.value)
    assert "column 'mean_texture' has" in text and "missing values" in text, text
    assert "data.missing=mean or zero" in text and "\n" not in text


def test_zero_fills_and_the_fit_needs_no_number_column_without_mean_or_normalize():
    fitter = Fitter([("x", NUMBER, "float64"), ("c", CATEGORY, "string")], "zero", False, 10)
    assert fitter.needs() == ["c"]
    fitter.add({"c": (np.array(["b", "a", None], object), np.array([0, 0, 1], bool))}, "f")
    encoding = fitter.encoding()
    rows = encoding.encode(
        {
            "x": (np.array([1.5, np.nan]), np.array([False, True])),
            "c": (np.array(["a", "zzz"], object), np.array([False, False])),
        },
        "here",
    )
    np.testing.assert_array_equal(rows, [[1.5, 1, 0, 0], [0, 0, 0, 1]])
    assert encoding.slot_names() == ["x", "c=a", "c=b", "c=<other>"]


def test_a_column_with_too_many_values_for_a_category_is_refused():
    fitter = Fitter([("patient", CATEGORY, "string")], "refuse", False, max_categories=50)
    values = np.array([f"p{i}" for i in range(51)], object)
    with pytest.raises(EncodingError, match="more than 50 distinct values") as err:
        fitter.add({"patient": (values, np.zeros(51, bool))}, "train/part-0.parquet")
    assert "raise data.max_categories" in str(err.value)


def test_a_shifted_number_is_standardized_with_welfords_care():
    """Values near 1e9 with a spread of 1: a sum of squares would lose the variance."""
    fitter = Fitter([("t", NUMBER, "float64")], "refuse", True, 10)
    rng = np.random.default_rng(0)
    x = 1e9 + rng.standard_normal(10_000)
    for part in np.array_split(x, 7):
        fitter.add({"t": (part, np.zeros(len(part), bool))}, "f")
    (column,) = fitter.encoding().columns
    assert column.shift == pytest.approx(x.mean(), abs=1e-6)
    assert column.scale == pytest.approx(1 / x.std(), rel=1e-6)


def test_the_logged_model_takes_the_raw_table_as_pandas_reads_it(clinic, tmp_path):
    """mlflow.pyfunc.load_model on the saved model, fed pd.read_parquet of the raw test file:
    class names out, the same probabilities as the reader's encoded rows give the network;
    extra columns ignored, a missing one named."""
    import mlflow.pyfunc
    import mxnet as mx

    from pipeline.model import bundle
    from pipeline.model.installed import pyfunc_arguments

    info = inspect(clinic, "data.missing=mean")
    net, model = _table_model(info, tmp_path)
    assert bundle.read(tmp_path / "b").meta.table == info.mapping.encoding
    raw = pd.read_parquet(clinic / "test")
    with pyfunc_arguments(model, raw.head(3)) as arguments:
        mlflow.pyfunc.save_model(str(tmp_path / "pyfunc"), **arguments)
    loaded = mlflow.pyfunc.load_model(str(tmp_path / "pyfunc"))
    inputs = {c["name"]: c["type"] for c in loaded.metadata.get_input_schema().to_dict()}
    # float32 and float64 alike take float64 (pandas' arithmetic); an int column with gaps
    # filled comes as float64 (NaN) from a file with gaps, int64 from one without.
    assert inputs["mean_radius"] == "double" and inputs["worst_area"] == "double"
    assert inputs["site"] == "string" and inputs["visits"] == "any"

    predicted = loaded.predict(raw)  # the label and pandas' extra columns are ignored
    assert list(predicted.columns) == ["prediction", "probability_benign", "probability_malignant"]
    expected = mx.nd.softmax(net(mx.nd.array(features_of(info, "test")))).asnumpy()
    np.testing.assert_allclose(predicted.iloc[:, 1:].to_numpy(), expected, rtol=1e-5, atol=1e-6)
    assert set(predicted["prediction"]) <= {"benign", "malignant"}

    # The refusal: float64 where float32 was stored; and an int column with a gap.
    widened = raw.astype({n: "float64" for n in NUMBERS})
    widened.loc[widened.index[0], "visits"] = np.nan
    again = loaded.predict(widened)
    np.testing.assert_allclose(again.iloc[1:, 1:], predicted.iloc[1:, 1:], rtol=1e-5)
    with pytest.raises(Exception, match="site"):
        loaded.predict(raw.drop(columns="site"))


def test_a_scoring_table_without_a_trained_column_is_one_line(clinic, tmp_path):
    from pipeline.model.bundle import BundleMeta
    from pipeline.predict.inputs import inspect_scoring_input

    info = inspect(clinic, "data.missing=zero")
    meta = BundleMeta.for_data("classifier", 0, info)
    table = pq.read_table(clinic / "test").drop(["site"])
    (tmp_path / "score").mkdir()
    pq.write_table(table, tmp_path / "score" / "rows.parquet")
    cfg = load_job_config(None, [f"data.uri={clinic}", *CLINIC, "data.missing=zero"])
    with pytest.raises(DataError) as err:
        inspect_scoring_input(str(tmp_path / "score"), meta, cfg.data, cfg.s3)
    assert "no column 'site'" in str(err.value) and "\n" not in str(err.value)


def test_a_table_model_is_served_with_an_example_of_its_columns(clinic, tmp_path):
    """`make serve`: the served folder (installed loader, encoding beside it) takes the
    version's logged example, or, when that is unusable, rows made from the encoding."""
    import json

    import mlflow.pyfunc

    from jobs.serve import curl_example, example_rows
    from pipeline.model.installed import pyfunc_arguments, save_for_serving

    info = inspect(clinic, "data.missing=zero")
    _, model = _table_model(info, tmp_path)
    version = tmp_path / "version"
    with pyfunc_arguments(model, pd.read_parquet(clinic / "test").head(3)) as arguments:
        mlflow.pyfunc.save_model(str(version), **arguments)

    logged = example_rows(version, model.meta)
    assert list(logged.columns) == list(info.mapping.encoding.names) and len(logged) == 2
    (version / "serving_input_example.json").write_text('{"dataframe_split": {"nope": 1}}')
    made = example_rows(version, model.meta)
    assert made["site"].tolist() == ["gp", "gp"] and made["visits"].dtype == np.int64
    for rows in (logged, made):
        served = save_for_serving(model.plain_copy(tmp_path / "plain"), tmp_path / "s", rows)
        answer = mlflow.pyfunc.load_model(str(served)).predict(rows)
        assert answer["prediction"].isin(["benign", "malignant"]).all()
        body = json.loads(curl_example(served, "127.0.0.1", 5001).split(" -d ")[1].strip("'"))
        assert body["dataframe_split"]["columns"][:2] == ["mean_radius", "mean_texture"]
        shutil.rmtree(tmp_path / "s")
        shutil.rmtree(tmp_path / "plain")


def test_a_pandas_category_column_is_a_category_too(tmp_path):
    """pandas writes a Categorical as a dictionary column; the model's pyfunc gets it back
    as a Categorical: both encode as the string column would."""
    import mlflow.pyfunc

    from pipeline.model.installed import pyfunc_arguments

    frame = clinic_table(0)
    frame["site"] = frame["site"].astype("category")
    root = tmp_path / "set"
    for split in ("train", "val", "test"):
        (root / split).mkdir(parents=True)
        frame[frame["split"] == split].drop(columns="split").to_parquet(root / split / "p.parquet")
    assert pa.types.is_dictionary(pq.read_schema(root / "train" / "p.parquet").field("site").type)
    info = inspect(root, "data.missing=zero")
    site = next(c for c in info.mapping.encoding.columns if c.name == "site")
    assert site.kind == CATEGORY and site.dtype == "category"
    assert site.categories == ("gp", "oncology", "screening")
    rows = features_of(info, "test")
    test = frame[frame["split"] == "test"]
    np.testing.assert_array_equal(rows[:, -3], (test["site"] == "oncology").to_numpy())

    _, model = _table_model(info, tmp_path)
    with pyfunc_arguments(model, pd.read_parquet(root / "test").head(2)) as arguments:
        mlflow.pyfunc.save_model(str(tmp_path / "pyfunc"), **arguments)
    answer = mlflow.pyfunc.load_model(str(tmp_path / "pyfunc")).predict(
        pd.read_parquet(root / "test")
    )
    assert len(answer) == len(test)
