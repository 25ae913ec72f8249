"""The exported model bundle: the one format in which a trained network leaves training.

A checkpoint carries it, the driver logs it to MLflow as a pyfunc model, and whatever serves,
scores or compresses a registered model reads it back. A bundle is three files in a folder::

    model-symbol.json   the network's graph (``HybridBlock.export``)
    model-0000.params   its weights, MXNet's NDArray format (no pickle), or
    model-0000.params.gz  the same file gzip-compressed (a pruned model: its zeros compress)
    model.json          :class:`BundleMeta` as JSON: kind, input names, data shape, classes

This module is the only one that knows those names. The pyfunc loaders
(``gluon_pyfunc.py``, ``gluon_generator_pyfunc.py``) are logged as source files and may import
nothing from this project, so they read ``model.json`` by the keys written here; a test loads a
bundle through each of them.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import shutil
import tempfile
import warnings
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.contract import DatasetInfo
from pipeline.data.table_encoding import TableEncoding

PREFIX = "model"
#: ``HybridBlock.export(prefix, epoch=0)`` writes these two files.
SYMBOL_FILE = f"{PREFIX}-symbol.json"
PARAMS_FILE = f"{PREFIX}-0000.params"
PARAMS_GZ_FILE = f"{PARAMS_FILE}.gz"
META_FILE = "model.json"
FILES = (SYMBOL_FILE, PARAMS_FILE, META_FILE)
#: The largest weights file read, compressed or not (a bundle comes from storage that others
#: may write: a few KB of gzip can claim gigabytes). Ours are a few MB; a ResNet-50's 100.
MAX_WEIGHTS_BYTES = 2 * 1024**3

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
        table: how the user's table columns become the feature row (fitted on the training
            split: vocabularies, fill values, standardization); the pyfunc then takes the
            table's named columns. None: the model takes feature rows (N, num_features).
        int8_weights: weights stored as int8 with a float32 scale (``NAME`` and ``NAME`` +
            :data:`SCALE_SUFFIX` in the params file), to be
            dequantized before the graph is loaded: an INT8 model whose operators quantize
            float32 weights themselves (:func:`pack_int8`).
    """

    kind: str
    inputs: tuple[str, ...]
    epoch: int
    num_features: int
    feature_shape: tuple[int, ...]
    num_classes: int
    latent_dim: int = 0
    class_names: tuple[str, ...] = ()
    table: TableEncoding | None = None
    int8_weights: tuple[str, ...] = ()

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
            table=info.mapping.encoding if info.mapping is not None else None,
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
                table=TableEncoding.from_dict(raw["table"]) if raw.get("table") else None,
                int8_weights=tuple(str(n) for n in raw.get("int8_weights", ())),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise BundleError(f"{META_FILE} is not a bundle description: {exc!r}") from None
        if meta.kind not in PYFUNC_CODE:
            raise BundleError(f"{META_FILE}: unknown kind {meta.kind!r}")
        if meta.table is not None and meta.table.width != meta.num_features:
            raise BundleError(
                f"{META_FILE}: its table encoding makes {meta.table.width} features, the"
                f" network takes {meta.num_features}"
            )
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

    @property
    def params_file(self) -> str:
        """The weights' file name: plain or gzip-compressed."""
        return PARAMS_GZ_FILE if (self.directory / PARAMS_GZ_FILE).is_file() else PARAMS_FILE

    @property
    def files(self) -> tuple[str, ...]:
        return (SYMBOL_FILE, self.params_file, META_FILE)

    def artifacts(self) -> dict[str, str]:
        """The files under the artifact keys the pyfunc loaders read."""
        return {
            "symbol": self.path(SYMBOL_FILE),
            "params": self.path(self.params_file),
            "meta": self.path(META_FILE),
        }

    def arrays(self) -> dict[str, np.ndarray]:
        """The weights by MXNet's saved names (``arg:conv0_weight``, ``aux:...``), on the
        host; BundleError when the file is larger than :data:`MAX_WEIGHTS_BYTES` or not
        MXNet's."""
        path = Path(self.path(self.params_file))
        if path.stat().st_size > MAX_WEIGHTS_BYTES:
            raise BundleError(f"{self.params_file} is larger than {MAX_WEIGHTS_BYTES:,} bytes")
        return decode_params(path.read_bytes(), self.params_file, self.meta)

    def plain_copy(self, directory: str | Path) -> Bundle:
        """The same network in ``directory`` with its weights decoded by this package (size
        capped, gunzipped, int8 dequantized) into a plain float file: what a loader that
        trusts its input (MXNet's, the pyfunc's) may be given."""
        target = Path(directory)
        target.mkdir(parents=True, exist_ok=True)
        meta = dataclasses.replace(self.meta, int8_weights=())
        save_arrays(str(target / PARAMS_FILE), self.arrays())
        shutil.copyfile(self.directory / SYMBOL_FILE, target / SYMBOL_FILE)
        (target / META_FILE).write_text(meta.to_json())
        return Bundle(target, meta)

    @property
    def pyfunc_code(self) -> Path:
        return PYFUNC_CODE[self.meta.kind]

    def load(self, device: Any = None):
        """The network as a Gluon ``SymbolBlock`` (on the CPU unless ``device`` is given)."""
        import mxnet as mx

        with tempfile.TemporaryDirectory() as tmp:
            params = self.path(self.params_file)
            if self.params_file == PARAMS_GZ_FILE or self.meta.int8_weights:
                # MXNet reads weights from a plain file only.
                params = os.path.join(tmp, PARAMS_FILE)
                save_arrays(params, self.arrays())
            with warnings.catch_warnings():
                # "Cannot decide type for the following arguments": MXNet cannot infer an
                # imported graph's input dtype; it is float32 and the forward pass says so.
                warnings.simplefilter("ignore", UserWarning)
                return mx.gluon.SymbolBlock.imports(
                    self.path(SYMBOL_FILE), list(self.meta.inputs), params, ctx=device or mx.cpu()
                )

    def copy_to(self, directory: str | Path) -> Bundle:
        """The same bundle in ``directory`` (its three files only)."""
        target = Path(directory)
        target.mkdir(parents=True, exist_ok=True)
        for name in self.files:
            shutil.copyfile(self.directory / name, target / name)
        return Bundle(target, self.meta)

    def size_bytes(self) -> int:
        """What the weights take on disk (the graph and description are a few KB)."""
        return (self.directory / self.params_file).stat().st_size


def write(directory: str | Path, net, meta: BundleMeta) -> Bundle:
    """Export the hybridized ``net`` (run at least once) and its description into
    ``directory``."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    net.export(os.path.join(directory, PREFIX), epoch=0)
    Path(directory, META_FILE).write_text(meta.to_json())
    return Bundle(Path(directory), meta)


def decode_params(raw: bytes, name: str, meta: BundleMeta) -> dict[str, np.ndarray]:
    """A weights file's bytes (``name``: plain or gzip-compressed) as host arrays by saved
    name, int8-stored weights turned back into float32; BundleError when it holds no named
    weights. The one reader of a bundle's weights, wherever the bytes come from (a folder,
    or storage for ``init.weights``)."""
    import mxnet as mx

    if name == PARAMS_GZ_FILE:
        raw = gunzip(raw, MAX_WEIGHTS_BYTES, name)
    try:
        loaded = mx.nd.load_frombuffer(raw)
    except mx.base.MXNetError as exc:
        raise BundleError(f"{name} is not an MXNet weights file ({exc})") from None
    if not isinstance(loaded, dict):
        raise BundleError(f"{name} holds no named weights")
    return unpack_int8({key: a.asnumpy() for key, a in loaded.items()}, meta)


def gunzip(raw: bytes, limit: int, name: str) -> bytes:
    """``raw`` gunzipped, never more than ``limit`` bytes out (a gzip bomb stops there);
    BundleError when it is not gzip or is larger."""
    inflate = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip header and trailer
    try:
        out = inflate.decompress(raw, limit + 1)
    except zlib.error as exc:
        raise BundleError(f"{name} is not gzip-compressed ({exc})") from None
    if len(out) > limit:
        raise BundleError(f"{name} unpacks to more than {limit:,} bytes")
    if not inflate.eof:
        raise BundleError(f"{name} is cut short")
    return out


def write_arrays(directory: str | Path, source: Bundle, arrays: dict, compress: bool) -> Bundle:
    """A bundle with ``source``'s graph and description and the weights ``arrays`` (by saved
    name, as :meth:`Bundle.arrays` gives them)."""
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source.path(SYMBOL_FILE), target / SYMBOL_FILE)
    shutil.copyfile(source.path(META_FILE), target / META_FILE)
    save_arrays(str(target / PARAMS_FILE), arrays)
    if compress:
        compress_params(target)
    return Bundle(target, source.meta)


def save_arrays(path: str, arrays: dict[str, np.ndarray]) -> None:
    """Host arrays as an MXNet params file (names as :meth:`Bundle.arrays` gives them)."""
    import mxnet as mx

    mx.nd.save(path, {k: mx.nd.array(v, dtype=v.dtype) for k, v in arrays.items()})


#: The name suffix of an int8-stored weight's scale.
SCALE_SUFFIX = "__int8_scale"


def pack_int8(model: Bundle, arrays: dict[str, np.ndarray], names: list[str]) -> Bundle:
    """Write ``arrays`` as the bundle's weights, those of ``names`` (without ``arg:``) as
    int8 with one scale per tensor (max |w| / 127, what oneDNN's INT8 operators use), and
    record them in ``model.json``; they are dequantized on load (:func:`unpack_int8`)."""
    packed = dict(arrays)
    for name in names:
        w = packed.pop(f"arg:{name}")
        peak = float(np.abs(w).max())
        step = np.float32(peak / 127.0 if peak > 0 else 1.0)
        packed[f"arg:{name}"] = np.clip(np.rint(w / step), -127, 127).astype(np.int8)
        packed[f"arg:{name}{SCALE_SUFFIX}"] = np.array([step], dtype=np.float32)
    meta = dataclasses.replace(model.meta, int8_weights=tuple(names))
    Path(model.path(META_FILE)).write_text(meta.to_json())
    save_arrays(model.path(PARAMS_FILE), packed)
    return Bundle(model.directory, meta)


def unpack_int8(arrays: dict[str, np.ndarray], meta: BundleMeta) -> dict[str, np.ndarray]:
    """The float32 weights of ``meta.int8_weights`` back from int8 and their scales (the
    other arrays as they are)."""
    out = dict(arrays)
    for name in meta.int8_weights:
        q, scale = out.get(f"arg:{name}"), out.pop(f"arg:{name}{SCALE_SUFFIX}", None)
        if q is None or scale is None or q.dtype != np.int8 or scale.size != 1:
            raise BundleError(
                f"{META_FILE} names {name} an int8 weight, and the weights file holds no int8 "
                "array and scale of that name"
            )
        out[f"arg:{name}"] = q.astype(np.float32) * scale.reshape((-1,) + (1,) * (q.ndim - 1))
    return out


def compress_params(directory: Path) -> None:
    """Replace the plain weights file by its gzip-compressed copy."""
    plain = directory / PARAMS_FILE
    (directory / PARAMS_GZ_FILE).write_bytes(gzip.compress(plain.read_bytes(), compresslevel=9))
    plain.unlink()


def read(directory: str | Path) -> Bundle:
    """The bundle in ``directory``; BundleError when a file is missing or malformed."""
    folder = Path(directory)
    missing = [name for name in (SYMBOL_FILE, META_FILE) if not (folder / name).is_file()]
    if not (folder / PARAMS_FILE).is_file() and not (folder / PARAMS_GZ_FILE).is_file():
        missing.append(PARAMS_FILE)
    if missing:
        raise BundleError(f"{folder} holds no model bundle: {', '.join(missing)} missing")
    return Bundle(folder, BundleMeta.from_json((folder / META_FILE).read_text()))
