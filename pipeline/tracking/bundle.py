"""The exported model bundle: the one format in which a trained network leaves training.

A checkpoint carries it, the driver logs it to MLflow as a pyfunc model, and whatever serves,
scores or compresses a registered model reads it back. A bundle is three files in a folder::

    model-symbol.json   the network's graph (``HybridBlock.export``)
    model-0000.params   its weights, MXNet's NDArray format (no pickle)
    model.json          :class:`BundleMeta` as JSON: kind, input names, data shape, classes

This module is the only one that knows those names. The pyfunc loaders
(``gluon_pyfunc.py``, ``gluon_generator_pyfunc.py``) are logged as source files and may import
nothing from this project, so they read ``model.json`` by the keys written here; a test loads a
bundle through each of them.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline.data.contract import DatasetInfo

PREFIX = "model"
#: ``HybridBlock.export(prefix, epoch=0)`` writes these two files.
SYMBOL_FILE = f"{PREFIX}-symbol.json"
PARAMS_FILE = f"{PREFIX}-0000.params"
META_FILE = "model.json"
FILES = (SYMBOL_FILE, PARAMS_FILE, META_FILE)

#: A bundle's kind -> the pyfunc loader logged with it (what ``predict`` takes and returns).
PYFUNC_CODE: dict[str, Path] = {
    # feature rows (N, D) -> class probabilities (N, C)
    "classifier": Path(__file__).with_name("gluon_pyfunc.py"),
    # labels (N,) -> generated feature rows (N, D)
    "generator": Path(__file__).with_name("gluon_generator_pyfunc.py"),
}


#: A bundle's kind -> its graph's input names, as ``HybridBlock.export`` names them (one input
#: is ``data``; several are ``data0``, ``data1``...): features; noise and one-hot label.
INPUTS: dict[str, tuple[str, ...]] = {
    "classifier": ("data",),
    "generator": ("data0", "data1"),
}


class BundleError(Exception):
    """A folder that is not a readable bundle (a file missing, ``model.json`` malformed)."""


@dataclass(frozen=True)
class BundleMeta:
    """What a reader needs besides the graph and weights.

    Attributes:
        kind: a key of :data:`PYFUNC_CODE`.
        inputs: the graph's input names, in call order.
        epoch: the training epoch (0-based) the weights are from.
        num_features: width of a feature row (the product of ``feature_shape``).
        feature_shape: the shape a row is viewed as (``[C, H, W]`` for images).
        num_classes: classes of the data set the network was trained on.
        latent_dim: length of the noise vector (generators only, else 0).
        class_names: the classes' names, index = class, when the data's labels were strings
            (the classifier's pyfunc then returns them with the probabilities); else empty.
    """

    kind: str
    inputs: tuple[str, ...]
    epoch: int
    num_features: int
    feature_shape: tuple[int, ...]
    num_classes: int
    latent_dim: int = 0
    class_names: tuple[str, ...] = ()

    @classmethod
    def for_data(cls, kind: str, epoch: int, info: DatasetInfo, latent_dim: int = 0) -> BundleMeta:
        return cls(
            kind=kind,
            inputs=INPUTS[kind],
            epoch=epoch,
            num_features=info.num_features,
            feature_shape=tuple(info.feature_shape),
            num_classes=info.num_classes,
            latent_dim=latent_dim,
            class_names=info.class_names,
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> BundleMeta:
        try:
            raw = json.loads(text)
            meta = cls(
                kind=str(raw["kind"]),
                # Bundles written before "inputs" was recorded: the kind implies them.
                inputs=tuple(raw.get("inputs") or INPUTS.get(raw["kind"], ())),
                epoch=int(raw["epoch"]),
                num_features=int(raw["num_features"]),
                feature_shape=tuple(int(d) for d in raw["feature_shape"]),
                num_classes=int(raw["num_classes"]),
                latent_dim=int(raw.get("latent_dim", 0)),
                class_names=tuple(str(n) for n in raw.get("class_names", ())),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise BundleError(f"{META_FILE} is not a bundle description: {exc!r}") from None
        if meta.kind not in PYFUNC_CODE:
            raise BundleError(f"{META_FILE}: unknown kind {meta.kind!r}")
        if meta.class_names and len(meta.class_names) != meta.num_classes:
            raise BundleError(
                f"{META_FILE}: {len(meta.class_names)} class names for {meta.num_classes} classes"
            )
        return meta


@dataclass(frozen=True)
class Bundle:
    """A bundle on the local disk."""

    directory: Path
    meta: BundleMeta

    def path(self, name: str) -> str:
        return str(self.directory / name)

    def artifacts(self) -> dict[str, str]:
        """The files under the artifact keys the pyfunc loaders read."""
        return {
            "symbol": self.path(SYMBOL_FILE),
            "params": self.path(PARAMS_FILE),
            "meta": self.path(META_FILE),
        }

    @property
    def pyfunc_code(self) -> Path:
        return PYFUNC_CODE[self.meta.kind]

    def load(self, device: Any = None):
        """The network as a Gluon ``SymbolBlock`` (on the CPU unless ``device`` is given)."""
        import mxnet as mx

        return mx.gluon.SymbolBlock.imports(
            self.path(SYMBOL_FILE),
            list(self.meta.inputs),
            self.path(PARAMS_FILE),
            ctx=device or mx.cpu(),
        )

    def copy_to(self, directory: str | Path) -> Bundle:
        """The same bundle in ``directory`` (the three files only)."""
        target = Path(directory)
        target.mkdir(parents=True, exist_ok=True)
        for name in FILES:
            shutil.copyfile(self.directory / name, target / name)
        return Bundle(target, self.meta)


def write(directory: str | Path, net, meta: BundleMeta) -> Bundle:
    """Export the hybridized ``net`` and its description into ``directory``."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    net.export(os.path.join(directory, PREFIX), epoch=0)
    Path(directory, META_FILE).write_text(meta.to_json())
    return Bundle(Path(directory), meta)


def read(directory: str | Path) -> Bundle:
    """The bundle in ``directory``; BundleError when a file is missing or malformed."""
    folder = Path(directory)
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        raise BundleError(f"{folder} holds no model bundle: {', '.join(missing)} missing")
    return Bundle(folder, BundleMeta.from_json((folder / META_FILE).read_text()))
