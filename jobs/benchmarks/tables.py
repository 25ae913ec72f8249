"""A user's mixed table trained as it comes, against scikit-learn on the same split.

* table_accuracy_vs_sklearn: test accuracy of ``jobs.train`` (``digits-fcn``, 2 workers, the
  recipe's epochs, ``data.missing=mean``, no preprocessing by the user) on the clinic's table
  (:func:`pipeline.data.datasets.clinic_table`: float32/float64/int/string columns, gaps),
  against scikit-learn given every advantage a competent user would give it: mean imputation,
  standardization and one-hot encoding fitted on the training rows, then logistic regression
  and an MLP, the one with the better validation accuracy scored on the test rows.
* table_normalize_on_vs_off: test accuracy with ``data.normalize`` on (the default, chosen by
  this figure: 1.044 when it was off by default) against ``data.normalize=false``: whether
  standardizing the columns helps beyond the recipe's batch norm.

Each is the median over seeds of the table's split (every seed a new draw of train/val/test),
with every seed's pair in the note.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from jobs.benchmarks.harness import Figure, ratio_figure
from jobs.benchmarks.whole_jobs import run_job_for_bench
from pipeline.data.datasets import clinic_table
from pipeline.data.prepare import write_table_splits

RECIPE = "digits-fcn"
KEYS = ["data.label_column=diagnosis", "data.feature_columns=*", "data.missing=mean"]


def sklearn_accuracy(frame) -> tuple[float, str]:
    """(test accuracy, which model) of the better of two scikit-learn pipelines on val."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    features = [c for c in frame.columns if c not in ("diagnosis", "split")]
    categories = [c for c in features if frame[c].dtype == object]
    numbers = [c for c in features if c not in categories]
    parts = {s: frame[frame["split"] == s] for s in ("train", "val", "test")}

    def prepare():
        return ColumnTransformer(
            [
                ("numbers", make_pipeline(SimpleImputer(), StandardScaler()), numbers),
                (
                    "categories",
                    make_pipeline(
                        SimpleImputer(strategy="constant", fill_value="<missing>"),
                        OneHotEncoder(handle_unknown="ignore"),
                    ),
                    categories,
                ),
            ]
        )

    candidates = {
        "logistic regression": LogisticRegression(max_iter=2000),
        "MLP": MLPClassifier((64,), max_iter=2000, random_state=0),
    }
    scored = []
    for name, estimator in candidates.items():
        model = make_pipeline(prepare(), estimator)
        model.fit(parts["train"][features], parts["train"]["diagnosis"])
        val = model.score(parts["val"][features], parts["val"]["diagnosis"])
        test = model.score(parts["test"][features], parts["test"]["diagnosis"])
        scored.append((val, test, name))
    _, test, name = max(scored)
    return test, name


def table_figures(seeds: int, epochs: int | None, tmp: Path) -> list[Figure]:
    ours: list[float] = []
    unscaled: list[float] = []
    theirs: list[float] = []
    chosen: list[str] = []
    for seed in range(seeds):
        frame = clinic_table(seed)
        uri = str(tmp / f"clinic-{seed}")
        write_table_splits(uri, frame, overwrite=True)
        # A shortened schedule (tiny size) has no room for the recipe's warm-up epoch.
        short = [f"optim.epochs={epochs}", "optim.warmup_epochs=0"] if epochs else []
        common = [*KEYS, *short]
        _, default = run_job_for_bench(uri, RECIPE, tmp, common)
        _, raw = run_job_for_bench(uri, RECIPE, tmp, [*common, "data.normalize=false"])
        ours.append(default["test_accuracy"])
        unscaled.append(raw["test_accuracy"])
        accuracy, name = sklearn_accuracy(frame)
        theirs.append(accuracy)
        chosen.append(name)
    pairs = ", ".join(f"{a:.3f}/{b:.3f}" for a, b in zip(ours, theirs, strict=True))
    on_off = ", ".join(f"{a:.3f}/{b:.3f}" for a, b in zip(ours, unscaled, strict=True))
    rows = len(clinic_table(0))
    return [
        ratio_figure(
            "table_accuracy_vs_sklearn",
            statistics.median(ours),
            statistics.median(theirs),
            ">= 0.98",
            "test accuracy",
            f"clinic table ({rows} rows: float32/float64/int/string columns, gaps), {RECIPE}"
            f" with data.missing=mean (and the default data.normalize) vs scikit-learn"
            f" (imputed, standardized, one-hot; {', '.join(sorted(set(chosen)))} chosen on"
            f" val); median of {seeds} split seeds, ours/sklearn per seed: {pairs}",
        ),
        ratio_figure(
            "table_normalize_on_vs_off",
            statistics.median(ours),
            statistics.median(unscaled),
            "",
            "test accuracy",
            f"the same jobs with data.normalize on (the default) vs false; per seed: {on_off}",
        ),
    ]
