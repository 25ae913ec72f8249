"""How a classifier errs on the test split, for a reviewer: the confusion matrix (PNG),
per-class precision, recall and F1 (JSON and metrics), and a grid of misclassified test
images with their true and predicted labels.

The counts come from every rank (the matrix is summed over them); the misclassified images
are rank 0's first ones (its shard of the test split). Pictures are drawn with matplotlib's
object API (no global pyplot state: rank 0 draws while other threads run).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

#: Misclassified test images a run shows.
MAX_EXAMPLES = 32


@dataclass
class ErrorReport:
    """``matrix[true, predicted]`` counts over the whole split, and rank 0's first
    misclassified rows (features as the model saw them)."""

    matrix: np.ndarray
    features: list[np.ndarray] = field(default_factory=list)
    true: list[int] = field(default_factory=list)
    predicted: list[int] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)

    def add_misclassified(self, rows, true, predicted, ids) -> None:
        room = MAX_EXAMPLES - len(self.true)
        for row, t, p, i in list(zip(rows, true, predicted, ids, strict=True))[:room]:
            self.features.append(np.asarray(row, dtype=np.float32))
            self.true.append(int(t))
            self.predicted.append(int(p))
            self.ids.append(int(i))

    @property
    def full(self) -> bool:
        return len(self.true) >= MAX_EXAMPLES

    @property
    def accuracy(self) -> float:
        return accuracy(self.matrix)


def accuracy(matrix: np.ndarray) -> float:
    """The share of the counted rows on the diagonal (0 for no rows)."""
    return float(np.trace(matrix) / max(np.sum(matrix), 1))


def class_labels(num_classes: int, names: Sequence[str]) -> list[str]:
    """The name of each class: its own, else its index."""
    return [str(names[i]) if i < len(names) else str(i) for i in range(num_classes)]


def per_class(matrix: np.ndarray, names: Sequence[str] = ()) -> dict:
    """Precision, recall, F1 and support of each class, their macro averages and accuracy
    (a class never predicted has precision 0, as scikit-learn's zero_division=0)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    hits = np.diag(matrix)
    predicted = matrix.sum(axis=0)
    actual = matrix.sum(axis=1)
    precision = np.divide(hits, predicted, out=np.zeros_like(hits), where=predicted > 0)
    recall = np.divide(hits, actual, out=np.zeros_like(hits), where=actual > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros_like(hits), where=both > 0)
    labels = class_labels(len(hits), names)
    classes = [
        {
            "class": i,
            "name": labels[i],
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(actual[i]),
        }
        for i in range(len(hits))
    ]
    present = actual > 0
    return {
        "classes": classes,
        "macro_precision": float(precision[present].mean()) if present.any() else 0.0,
        "macro_recall": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "accuracy": accuracy(matrix),
        "confusion_matrix": matrix.astype(np.int64).tolist(),
    }


def _metric_name(name: str) -> str:
    """A class name as MLflow accepts in a metric key (letters, digits, _ - . space /)."""
    return re.sub(r"[^A-Za-z0-9_.\- ]", "_", name)[:60] or "_"


def per_class_metrics(report: dict, split: str = "test") -> dict[str, float]:
    """``test_precision/<class>``, ``test_recall/<class>``, ``test_f1/<class>`` (the UI groups
    them by the part before the slash) and ``test_macro_f1``."""
    out = {f"{split}_macro_f1": report["macro_f1"]}
    for entry in report["classes"]:
        named = entry["name"] != str(entry["class"])  # "3_Dress" when classes have names
        key = _metric_name(f"{entry['class']}_{entry['name']}" if named else entry["name"])
        for what in ("precision", "recall", "f1"):
            out[f"{split}_{what}/{key}"] = entry[what]
    return out


def write_json(report: dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump(report, f, indent=2)


def confusion_png(matrix: np.ndarray, names: Sequence[str], path: str) -> None:
    """The matrix as a heat map with its counts, rows = true class, columns = predicted."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    matrix = np.asarray(matrix, dtype=np.int64)
    k = len(matrix)
    labels = class_labels(k, names)
    size = min(4 + 0.55 * k, 24)
    fig = Figure(figsize=(size, size * 0.9))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    # Each row as shares of its class: a rare class's errors are as visible as a common one's.
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    if k <= 30:
        for t in range(k):
            for p in range(k):
                if matrix[t, p]:
                    dark = shares[t, p] > 0.5
                    ax.text(
                        p,
                        t,
                        str(matrix[t, p]),
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="white" if dark else "black",
                    )
        ax.set_xticks(range(k), labels, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(k), labels, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"test split: {matrix.sum():,} rows, accuracy {accuracy(matrix):.4f}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def image_of(row: np.ndarray, feature_shape: Sequence[int]) -> np.ndarray | None:
    """A feature row as a picture (H, W) or (H, W, 3) in [0, 1]; None if it is not an image."""
    shape = tuple(feature_shape)
    if len(shape) == 3 and shape[0] in (1, 3):
        picture = row.reshape(shape)
        picture = picture[0] if shape[0] == 1 else picture.transpose(1, 2, 0)
    elif len(shape) == 2:
        picture = row.reshape(shape)
    else:
        return None
    low, high = float(picture.min()), float(picture.max())
    return (picture - low) / (high - low) if high > low else np.zeros_like(picture)


def misclassified_png(
    report: ErrorReport, names: Sequence[str], feature_shape: Sequence[int], path: str
) -> bool:
    """The misclassified images with "true -> predicted" over each; False (nothing written)
    when the features are not images or nothing was misclassified.

    One mosaic drawn as a single image, its captions placed by hand: a subplot per picture
    and matplotlib's tight layout took 0.9 s for 32 pictures on rank 0 at the end of every
    run, while the other ranks and the driver waited."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    drawn = [image_of(row, feature_shape) for row in report.features]
    pictures = [p for p in drawn if p is not None]
    if not pictures:
        return False
    labels = class_labels(len(report.matrix), names)
    cols = min(8, len(pictures))
    rows = math.ceil(len(pictures) / cols)
    height, width = pictures[0].shape[:2]
    gap_x, gap_y = max(2, width // 4), max(2, height // 2)  # room between pictures, captions
    cell_w, cell_h = width + gap_x, height + gap_y
    colour = pictures[0].ndim == 3
    mosaic = np.ones((rows * cell_h, cols * cell_w) + ((3,) if colour else ()))
    for n, picture in enumerate(pictures):
        top, left = (n // cols) * cell_h + gap_y, (n % cols) * cell_w + gap_x // 2
        mosaic[top : top + height, left : left + width] = picture
    fig = Figure(figsize=(cols * 1.6, rows * 1.9 + 0.4))
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0 - 0.4 / (rows * 1.9 + 0.4)))
    ax.imshow(mosaic, cmap=None if colour else "gray", vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    for n in range(len(pictures)):
        true, predicted = labels[report.true[n]][:12], labels[report.predicted[n]][:12]
        ax.text(
            (n % cols) * cell_w + cell_w / 2,
            (n // cols) * cell_h + gap_y - 1,
            f"{true} -> {predicted}\nid {report.ids[n]}",
            ha="center",
            va="bottom",
            fontsize=7,
        )
    fig.suptitle("misclassified test images: true -> predicted", fontsize=9)
    fig.savefig(path, dpi=100)
    return True
