"""Checkpoints a job resumes from, written and read without pickle.

One checkpoint is a directory::

    params.nd       every network's parameters        MXNet NDArray-list format (mx.nd.save)
    best.nd         with checkpoint.keep_best, when an earlier epoch scored best: that
                    epoch's parameters (the model registered at the end)
    optimizer.nd    every optimizer state array       MXNet NDArray-list format
    state.json      epoch, step, world size, seed, config hash, optimizer counters, RNG state
    model-*         the exported model bundle the registry logs (pipeline/model/bundle.py)
    model.json      the bundle's description (kind, inputs, data shape)
    MANIFEST.json   written last: the SHA-256 of every other file

MXNet's own ``Trainer.save_states`` pickles the optimizer, and unpickling runs whatever the
file says; a checkpoint may come from storage others can write to. So every array here goes
through MXNet's NDArray-list format (parsed by MXNet's C++ loader), everything else is JSON,
and :func:`verify` refuses a file whose first bytes are not what its format demands before
anything parses it.

A checkpoint without a manifest (the writer died first) or with a mismatching checksum is
skipped with a warning, and the one before it is used (:func:`resume`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import struct
import tempfile
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

MANIFEST = "MANIFEST.json"
STATE = "state.json"
PARAMS = "params.nd"
BEST = "best.nd"
OPTIMIZER = "optimizer.nd"
#: First 8 bytes of an MXNet NDArray-list file (kMXAPINDArrayListMagic, little endian).
NDARRAY_MAGIC = struct.pack("<Q", 0x112)
FORMAT_VERSION = 1


class CheckpointError(Exception):
    """A checkpoint that must not be used: incomplete, corrupt, or not in our format."""


# -- writing ------------------------------------------------------------------------------------


def _flatten_state(state, key: str, out: dict) -> Any:
    """An optimizer state (None, an NDArray or nested tuples of them) -> its layout for JSON,
    with the arrays put into ``out`` under keys derived from ``key``."""
    if state is None:
        return None
    if isinstance(state, list | tuple):
        return [_flatten_state(s, f"{key}.{i}", out) for i, s in enumerate(state)]
    out[key] = state
    return key


def snapshot(networks: dict) -> dict:
    """Every parameter of ``networks`` ({prefix: DistributedNetwork}) copied to host memory,
    keyed ``prefix/structural name`` as in params.nd."""
    import mxnet as mx

    return {
        f"{prefix}/{name}": p.data().copyto(mx.cpu())
        for prefix, opt in networks.items()
        for name, p in _structural(opt.net).items()
    }


def load_snapshot(networks: dict, arrays: dict) -> None:
    """Put a :func:`snapshot` (or a checkpoint's best.nd) back into ``networks``; CheckpointError
    for one of another model, before any parameter is touched."""
    for p, value in _fitting(networks, arrays, "the snapshot"):
        p.set_data(value.as_in_context(p.data().context))


def _fitting(networks: dict, arrays: dict, source: str) -> list:
    """(parameter, its array) for every parameter of ``networks``; CheckpointError when
    ``arrays`` lacks one or holds it in another shape (another model's)."""
    pairs = []
    for prefix, opt in networks.items():
        for name, p in _structural(opt.net).items():
            key = f"{prefix}/{name}"
            if key not in arrays:
                raise CheckpointError(f"{source} has no {key}: a checkpoint of another model")
            if tuple(arrays[key].shape) != tuple(p.shape):
                raise CheckpointError(f"{source}: {key} has shape {arrays[key].shape}")
            pairs.append((p, arrays[key]))
    return pairs


def write(directory: str, networks: dict, state: dict[str, Any], best: dict | None = None) -> None:
    """Write a checkpoint of ``networks`` ({prefix: DistributedNetwork}) plus ``state`` into
    ``directory`` (which may already hold the exported model); the manifest last. ``best``:
    an earlier epoch's :func:`snapshot` to keep beside them (checkpoint.keep_best)."""
    import mxnet as mx

    params = snapshot(networks)
    optim_arrays: dict = {}
    optim_meta: dict[str, Any] = {}
    for prefix, opt in networks.items():
        names = _trainer_names(opt)
        updater = opt.trainer._updaters[0]
        optimizer = opt.trainer._optimizer
        optim_meta[prefix] = {
            "num_update": optimizer.num_update,
            "index_update_count": {
                names[i]: n for i, n in optimizer._index_update_count.items() if i in names
            },
            "states": {
                names[i]: _flatten_state(state, f"{prefix}/{names[i]}", optim_arrays)
                for i, state in updater.states.items()
            },
        }
    mx.nd.save(os.path.join(directory, PARAMS), params)
    if best is not None:
        mx.nd.save(os.path.join(directory, BEST), best)
    mx.nd.save(
        os.path.join(directory, OPTIMIZER), {k: v.copyto(mx.cpu()) for k, v in optim_arrays.items()}
    )
    full_state = {"format": FORMAT_VERSION, **state, "optimizers": optim_meta}
    with open(os.path.join(directory, STATE), "w") as f:
        json.dump(full_state, f)
    files = sorted(n for n in os.listdir(directory) if n != MANIFEST)
    # On disk before the manifest that vouches for them: after a power cut, a manifest never
    # names a file whose blocks were still in the page cache.
    for name in files:
        _fsync(os.path.join(directory, name))
    manifest = {name: _sha256(os.path.join(directory, name)) for name in files}
    tmp = os.path.join(directory, MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump({"format": FORMAT_VERSION, "files": manifest}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(directory, MANIFEST))
    _fsync(directory)


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _structural(net) -> dict:
    """Parameters by their place in the network ("features.0.weight"), as save_parameters
    names them: Gluon's own names carry a per-process counter ("conv6_weight")."""
    return net._collect_params_with_prefix()


def _trainer_names(opt) -> dict[int, str]:
    """The trainer's parameter index -> structural name. Optimizer states are kept by index,
    and the trainer orders parameters by their Gluon names, which differ between processes."""
    by_id = {id(p): name for name, p in _structural(opt.net).items()}
    return {i: by_id[id(p)] for i, p in enumerate(opt.trainer._params)}


def _count_dicts(optimizer) -> list[dict]:
    return [
        optimizer._index_update_count,
        *getattr(optimizer, "_all_index_update_counts", {}).values(),
    ]


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# -- reading ------------------------------------------------------------------------------------


def _json(path: str) -> dict:
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:1] == b"\x80":
        raise CheckpointError(f"{os.path.basename(path)} holds a pickle, not JSON; refused")
    try:
        value = json.loads(raw)
    except ValueError:
        raise CheckpointError(f"{os.path.basename(path)} is not valid JSON") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{os.path.basename(path)} is not a JSON object")
    return value


def _is_file_name(name: object) -> bool:
    """A plain file name: no folder part, not ``.``/``..``, not absolute (on any system)."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and "/" not in name
        and "\\" not in name
        and ":" not in name
        and "\0" not in name
    )


def manifest_files(path: str) -> dict[str, str]:
    """The manifest's {file name: SHA-256}; CheckpointError unless every name is a plain file
    name (a name like ``../../x`` would make a reader write or read outside the folder)."""
    files = _json(path).get("files")
    if not isinstance(files, dict) or STATE not in files or PARAMS not in files:
        raise CheckpointError("MANIFEST.json does not list state.json and params.nd")
    bad = [name for name in files if not _is_file_name(name)]
    if bad:
        raise CheckpointError(f"MANIFEST.json names {bad[0]!r}, not a file name; refused")
    return files


def verify(directory: str) -> dict:
    """Check the manifest, every checksum and every array file's header; return the state.

    Raises CheckpointError (nothing has been unpickled or parsed by MXNet at that point)."""
    path = os.path.join(directory, MANIFEST)
    if not os.path.exists(path):
        raise CheckpointError("no MANIFEST.json (the writer stopped before finishing)")
    files = manifest_files(path)
    for name, expected in files.items():
        file = os.path.join(directory, name)
        if not os.path.exists(file):
            raise CheckpointError(f"{name} is missing")
        if _sha256(file) != expected:
            raise CheckpointError(f"{name}: SHA-256 does not match MANIFEST.json")
        if name.endswith((".nd", ".params")):
            with open(file, "rb") as f:
                head = f.read(8)
            if head != NDARRAY_MAGIC:
                kind = "a pickle" if head[:1] == b"\x80" else "not an MXNet NDArray file"
                raise CheckpointError(f"{name} is {kind}; refused")
    return _json(os.path.join(directory, STATE))


def _unflatten_state(layout, arrays: dict, ctx):
    if layout is None:
        return None
    if isinstance(layout, list):
        return tuple(_unflatten_state(item, arrays, ctx) for item in layout)
    return arrays[layout].as_in_context(ctx)


def restore(directory: str, networks: dict, ctx) -> dict:
    """Load a verified checkpoint into ``networks`` ({prefix: DistributedNetwork}); return
    its state."""

    state = verify(directory)
    # Only what the manifest vouches for: a best.nd put beside it later is not read.
    has_best = BEST in manifest_files(os.path.join(directory, MANIFEST))
    try:
        plan = _parse(directory, networks, state, ctx)
        best = _best(directory, networks) if has_best else None
    except CheckpointError:
        raise
    except Exception as exc:  # MXNet's parse errors, missing or mistyped keys: all "unusable"
        raise CheckpointError(f"cannot be read ({type(exc).__name__}: {exc})") from None
    # Applied only once everything parsed: a checkpoint that fails half-way must not leave the
    # networks half restored (the caller falls back to an older one, or to a fresh start).
    for apply in plan:
        apply()
    if best is not None:
        state["best_params"] = best
    return state


def _best(directory: str, networks: dict) -> dict:
    """best.nd's arrays (host memory), checked against ``networks``, not loaded into them."""
    import mxnet as mx

    arrays = mx.nd.load(os.path.join(directory, BEST))
    arrays = arrays if isinstance(arrays, dict) else {}
    _fitting(networks, arrays, BEST)
    return arrays


def _parse(directory: str, networks: dict, state: dict, ctx) -> list:
    """Read every array and key of the checkpoint and check it fits ``networks``; return the
    assignments to make (closures), without touching the networks."""
    import mxnet as mx

    params = mx.nd.load(os.path.join(directory, PARAMS))
    optim_arrays = mx.nd.load(os.path.join(directory, OPTIMIZER))
    # An empty file loads as a list; a named one as a dict.
    params = params if isinstance(params, dict) else {}
    optim_arrays = optim_arrays if isinstance(optim_arrays, dict) else {}
    placed = [(p, value.as_in_context(ctx)) for p, value in _fitting(networks, params, PARAMS)]
    plan: list = [lambda p=p, value=value: p.set_data(value) for p, value in placed]
    for prefix, opt in networks.items():
        meta = state["optimizers"][prefix]
        index = {name: i for i, name in _trainer_names(opt).items()}
        num_update = int(meta["num_update"])
        counts = {index[name]: int(n) for name, n in meta["index_update_count"].items()}
        states = {
            index[name]: _unflatten_state(layout, optim_arrays, ctx)
            for name, layout in meta["states"].items()
        }
        plan.append(
            lambda opt=opt, n=num_update, c=counts, st=states: _set_optimizer(opt, n, c, st)
        )
    return plan


def _set_optimizer(opt, num_update: int, counts: dict, states: dict) -> None:
    optimizer = opt.trainer._optimizer
    optimizer.num_update = num_update
    # In place: the optimizer keeps per-device aliases of this dict.
    for per_device in {id(d): d for d in _count_dicts(optimizer)}.values():
        per_device.clear()
        per_device.update(counts)
    for updater in opt.trainer._updaters:
        updater.states = dict(states)
        updater.states_synced = dict.fromkeys(updater.states, True)


# -- finding the newest usable checkpoint -------------------------------------------------------


def candidates(filesystem, run_dir: str) -> list[str]:
    """The run's checkpoint directories, newest first (Ray Train names them
    ``checkpoint_<timestamp>``, so names sort by age)."""
    import pyarrow.fs as pafs

    selector = pafs.FileSelector(run_dir, allow_not_found=True)
    found = [
        info.path
        for info in filesystem.get_file_info(selector)
        if info.type == pafs.FileType.Directory and info.base_name.startswith("checkpoint_")
    ]
    return sorted(found, reverse=True)


def _download(filesystem, folder: str, name: str, target: str) -> None:
    """``folder/name`` from ``filesystem`` into ``target/name``; ``name`` is a file name."""
    try:
        with (
            filesystem.open_input_stream(f"{folder.rstrip('/')}/{name}") as src,
            open(os.path.join(target, name), "wb") as out,
        ):
            while chunk := src.read(1 << 20):
                out.write(chunk)
    except FileNotFoundError:
        raise CheckpointError(f"{name} is missing") from None


@contextlib.contextmanager
def local_copy(filesystem, path: str) -> Iterator[str]:
    """``path`` as a local directory: itself on a local disk; from object storage, a
    temporary folder holding the manifest and the files it names, nothing else.

    Storage keys are never turned into local paths (a key like ``ckpt/../../x`` would write
    outside the folder): the manifest is read first, its names must be plain file names, and
    each is fetched by that name. Raises CheckpointError before anything is parsed."""
    import pyarrow.fs as pafs

    if isinstance(filesystem, pafs.LocalFileSystem):
        yield path
        return
    with tempfile.TemporaryDirectory() as tmp:
        _download(filesystem, path, MANIFEST, tmp)
        for name in manifest_files(os.path.join(tmp, MANIFEST)):
            _download(filesystem, path, name, tmp)
        yield tmp


def resume(filesystem, run_dir: str, networks: dict, ctx, warn=log.warning) -> dict | None:
    """Restore the newest checkpoint of the run that verifies; skip (and warn about) the
    others. Returns its state (with ``checkpoint``: its path), or None when there is none."""
    for path in candidates(filesystem, run_dir):
        name = path.rstrip("/").rsplit("/", 1)[-1]
        try:
            with local_copy(filesystem, path) as directory:
                state = restore(directory, networks, ctx)
        except Exception as exc:  # whatever makes it unusable, the one before may do
            reason = exc if isinstance(exc, CheckpointError) else f"{type(exc).__name__}: {exc}"
            warn(f"checkpoint {name} skipped: {reason}; using the one before it")
            continue
        return {**state, "checkpoint": path}
    return None


#: Ray Train v2's record of the checkpoints it was told about, in the run's folder.
TRAIN_SNAPSHOT = "checkpoint_manager_snapshot.json"


def drop_torn_train_snapshot(filesystem, run_dir: str) -> bool:
    """Delete Ray Train's snapshot in ``run_dir`` when it is not valid JSON; True if it did.

    Ray writes it in place (open, write, close), so a driver killed in between leaves it empty
    or cut, and Ray's controller then fails on start with a JSONDecodeError: a resume would never
    start. Nothing of ours reads it (:func:`resume` lists the checkpoints themselves), and
    without it Ray starts with no checkpoint history, which is what it does for a new run."""
    path = f"{run_dir.rstrip('/')}/{TRAIN_SNAPSHOT}"
    try:
        with filesystem.open_input_stream(path) as f:
            text = f.read()
    except FileNotFoundError:
        return False
    try:
        json.loads(text)
        return False
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        filesystem.delete_file(path)
        return True
