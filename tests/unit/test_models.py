"""Model rules that hold across families; shapes, sizes and round trips are in
test_model_families.py."""

from __future__ import annotations

import pytest

from models import build_model
from models.config import CNNConfig


def test_cnn_refuses_flat_features():
    with pytest.raises(ValueError, match="image-shaped features"):
        build_model("cnn", CNNConfig(), (64,), 10)


def test_models_import_nothing_from_the_infrastructure():
    import ast
    from pathlib import Path

    forbidden = {"ray", "horovod", "mlflow", "boto3", "pipeline"}
    for path in Path(__file__).resolve().parents[2].joinpath("models").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in forbidden, f"{path.name} imports {name}"
