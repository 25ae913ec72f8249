"""Starting from a model bundle's weights (``init.weights``) and holding its zeros
(``init.hold_zeros``): how a pruned model is fine-tuned through the ordinary training job.

A bundle's weights carry the names the exporting process gave them (``conv0_weight``); a
network built again in another process may be named differently (Gluon numbers blocks per
process), so weights are matched by name when every name matches, else by position, and
always by shape. The driver checks the match before any worker starts
(:func:`check_init_weights`), so a bundle of another architecture is one line, not a worker
failure.
"""

from __future__ import annotations

import numpy as np

from pipeline.config import JobConfig
from pipeline.data.contract import DatasetInfo
from pipeline.errors import ConfigError, StorageError
from pipeline.model import bundle
from pipeline.model.prune import is_prunable
from pipeline.storage import resolve


def read_bundle(uri: str, s3) -> tuple[bundle.BundleMeta, dict[str, np.ndarray]]:
    """The description and weights of the bundle at ``uri`` (a folder or s3:// prefix), the
    weights by name without MXNet's ``arg:``/``aux:`` prefix."""
    location = resolve(uri, s3)
    fs = location.filesystem

    def fetch(name: str) -> bytes | None:
        # compression=None: pyarrow would gunzip a ".gz" itself, with no limit; the bundle
        # reader does it, capped. One byte past the cap is read to tell "too large".
        try:
            with fs.open_input_stream(location.join(name), compression=None) as f:
                data = f.read(bundle.MAX_WEIGHTS_BYTES + 1)
        except (FileNotFoundError, OSError):
            return None
        if len(data) > bundle.MAX_WEIGHTS_BYTES:
            raise ConfigError(
                f"init.weights={uri}: {name} is larger than {bundle.MAX_WEIGHTS_BYTES:,} bytes;"
                " not a model bundle this pipeline wrote"
            )
        return data

    meta_text = fetch(bundle.META_FILE)
    params_name = bundle.PARAMS_FILE
    params = fetch(params_name)
    if params is None:
        params_name = bundle.PARAMS_GZ_FILE
        params = fetch(params_name)
    if meta_text is None or params is None:
        raise StorageError(
            f"init.weights={uri}: no model bundle there ({bundle.META_FILE} and "
            f"{bundle.PARAMS_FILE} needed); give the folder of a checkpoint or exported model"
        )
    try:
        meta = bundle.BundleMeta.from_json(meta_text.decode())
        arrays = bundle.decode_params(params, params_name, meta)
    except (bundle.BundleError, UnicodeDecodeError) as exc:
        raise ConfigError(f"init.weights={uri}: not a readable model bundle ({exc})") from None
    return meta, {name.split(":", 1)[-1]: a for name, a in arrays.items()}


def match_weights(params, arrays: dict[str, np.ndarray], uri: str) -> list:
    """(Parameter, array) pairs for every parameter of ``params`` (a ParameterDict whose
    shapes are resolved); ConfigError when the bundle does not fit the network."""
    mine = list(params.items())
    if len(mine) != len(arrays):
        raise ConfigError(
            f"init.weights={uri}: the bundle has {len(arrays)} weight arrays and the "
            f"configured model {len(mine)}; use the model settings it was trained with"
        )
    if all(name in arrays for name, _ in mine):
        pairs = [(p, arrays[name]) for name, p in mine]
    else:
        pairs = [(p, a) for (_, p), a in zip(mine, arrays.values(), strict=True)]
    for p, a in pairs:
        if tuple(p.shape) != tuple(a.shape):
            raise ConfigError(
                f"init.weights={uri}: weight {p.name} is {tuple(p.shape)} in the configured "
                f"model and {tuple(a.shape)} in the bundle; use the model settings it was "
                "trained with"
            )
    return pairs


def load_weights(params, arrays: dict[str, np.ndarray], uri: str) -> None:
    import mxnet as mx

    for p, a in match_weights(params, arrays, uri):
        p.set_data(mx.nd.array(a, dtype=a.dtype))


def check_init_weights(cfg: JobConfig, info: DatasetInfo) -> None:
    """The driver's check: the bundle is a classifier of this data and fits the model."""
    if not cfg.init.weights:
        return
    import mxnet as mx

    from models import ADVERSARIAL, build_model

    uri = cfg.init.weights
    if cfg.model.name in ADVERSARIAL:
        raise ConfigError(
            f"init.weights: model.name={cfg.model.name} trains two networks against each "
            "other, and a bundle holds only the generator; start a GAN from random weights"
        )
    meta, arrays = read_bundle(uri, cfg.s3)
    if meta.kind != "classifier" or (meta.num_features, meta.num_classes) != (
        info.num_features,
        info.num_classes,
    ):
        raise ConfigError(
            f"init.weights={uri}: a {meta.kind} of {meta.num_features} features and "
            f"{meta.num_classes} classes, and {cfg.data.uri} has {info.num_features} features "
            f"and {info.num_classes} classes"
        )
    net = build_model(cfg.model.name, cfg.model.arch, info.feature_shape, info.num_classes)
    net.initialize()
    net(mx.nd.zeros((2, info.num_features)))
    match_weights(net.collect_params(), arrays, uri)


class ZeroMask:
    """The zeros of the conv and dense weights at the start, put back after every update
    (momentum and weight decay would otherwise revive them)."""

    def __init__(self, params):
        self._held = []
        for name, p in params.items():
            if p.grad_req != "null" and is_prunable(name, len(p.shape)):
                data = p.data()
                self._held.append((p, (data != 0).astype(data.dtype)))

    def apply(self) -> None:
        import mxnet as mx

        for p, keep in self._held:
            data = p.data()  # a restored checkpoint may have replaced the array
            mx.nd.elemwise_mul(data, keep, out=data)
