"""Checkpoints: parameters, optimizer state, step count and RNG state in one
`.npz` file, without pickle.

Tensors are stored as plain arrays; everything else (their keys, names,
shapes and dtypes, the step count, the state of the shuffling generator and
any extra JSON data, such as a training history) is JSON text in a uint8
array, so loading uses `allow_pickle=False` and never runs code from the
file. Files are written atomically (temporary file + rename), so a crash
mid-write leaves the previous checkpoint intact.

What to save is given as a model (`bpc.nn` Module), an optimizer, a dict
`{key: tensor}`, a list of tensors (keyed by their names) or a list mixing
these. Models and optimizers contribute keys that are stable across
rebuilds ("model.0.W", "optimizer.m.0"), so a checkpoint loads into a
freshly built copy of the same architecture.
"""
import io
import json
import zipfile
from dataclasses import dataclass, field

import numpy as np

from .graph.tensor import Tensor, format_shape
from .io import atomic_write_text

FORMAT = "bpc-checkpoint/1"
_META = "__meta__"
_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")


class CheckpointError(ValueError):
    """A checkpoint file is unreadable or does not match what it is loaded into."""


@dataclass
class Checkpoint:
    """What `read` finds in a file: arrays by key, and the metadata."""
    path: str
    arrays: dict
    step: int = 0
    rng_state: dict = None
    extra: dict = field(default_factory=dict)
    names: dict = field(default_factory=dict)   # key -> tensor name when saved

    def rng(self):
        """A `numpy.random.Generator` restored to the saved state."""
        if self.rng_state is None:
            raise CheckpointError(f"checkpoint '{self.path}' holds no RNG state")
        try:
            name = self.rng_state["bit_generator"]
            if name not in _BIT_GENERATORS:
                raise ValueError(f"unknown bit generator {name!r}")
            bitgen = getattr(np.random, name)()
            bitgen.state = self.rng_state
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise CheckpointError(f"checkpoint '{self.path}': unusable RNG state ({e})") from None
        return np.random.Generator(bitgen)


def named_tensors(objects):
    """`{key: tensor}` for a model, an optimizer, a dict, a tensor, or a list of these."""
    items = objects if isinstance(objects, (list, tuple)) else [objects]
    out = {}

    def add(key, t):
        if not isinstance(t, Tensor) or t.kind not in ("param", "state"):
            raise TypeError(f"checkpoint: '{key}' is not a bpc param or state tensor: {t!r}")
        if key in out:
            raise CheckpointError(f"checkpoint: two tensors have the key '{key}'; "
                                  "give them distinct names or pass a dict")
        out[key] = t

    for obj in items:
        if isinstance(obj, Tensor):
            add(obj.name, obj)
        elif isinstance(obj, dict):
            for k, t in obj.items():
                add(str(k), t)
        elif hasattr(obj, "named_params"):          # a bpc.nn Module
            for k, t in {**obj.named_params(), **obj.named_state()}.items():
                add(f"model.{k}", t)
        elif hasattr(obj, "named_state"):           # a bpc.optim Optimizer
            for k, t in obj.named_state().items():
                add(f"optimizer.{k}", t)
        else:
            raise TypeError(f"checkpoint: cannot save a {type(obj).__name__}; pass a model, an "
                            "optimizer, a dict of tensors or a list of tensors")
    return out


def _rng_state(rng_state):
    if rng_state is None or isinstance(rng_state, dict):
        return rng_state
    if isinstance(rng_state, np.random.Generator):
        return rng_state.bit_generator.state
    raise TypeError(f"checkpoint: rng_state must be a numpy Generator or its state dict, "
                    f"got {type(rng_state).__name__}")


def save(path, tensors, step=0, rng_state=None, extra=None):
    """Write `tensors` (see `named_tensors`), the step count, an RNG state (a
    Generator or its `bit_generator.state`) and `extra` (JSON-able) to `path`."""
    named = named_tensors(tensors)
    arrays, entries = {}, []
    for i, (key, t) in enumerate(named.items()):
        value = np.array(t.value, order="C")   # (ascontiguousarray would make 0-d arrays 1-d)
        arrays[f"t{i}"] = value
        entries.append({"key": key, "name": t.name, "array": f"t{i}",
                        "shape": list(value.shape), "dtype": value.dtype.str})
    meta = {"format": FORMAT, "step": int(step), "rng_state": _rng_state(rng_state),
            "extra": extra or {}, "tensors": entries}
    try:
        text = json.dumps(meta)
    except TypeError as e:
        raise TypeError(f"checkpoint: extra data must be JSON-serialisable ({e})") from None
    arrays[_META] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_text(path, buf.getvalue(), binary=True)


def read(path):
    """Read a checkpoint file into a `Checkpoint` (nothing is assigned)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            if _META not in f.files:
                raise CheckpointError(f"'{path}' is not a bpc checkpoint (no metadata)")
            meta = json.loads(f[_META].tobytes().decode("utf-8"))
            if meta.get("format") != FORMAT:
                raise CheckpointError(f"'{path}' has format {meta.get('format')!r}, expected {FORMAT!r}")
            arrays = {e["key"]: f[e["array"]] for e in meta["tensors"]}
            names = {e["key"]: e["name"] for e in meta["tensors"]}
    except (zipfile.BadZipFile, OSError, KeyError, ValueError, UnicodeDecodeError) as e:
        if isinstance(e, (CheckpointError, FileNotFoundError)):
            raise
        raise CheckpointError(f"'{path}' is not a readable bpc checkpoint ({type(e).__name__}: {e})") from None
    return Checkpoint(str(path), arrays, meta["step"], meta["rng_state"], meta["extra"], names)


def load(path, tensors, strict=True):
    """Read `path` and assign its arrays to `tensors` (as for `save`).

    Every key, shape and dtype is checked before anything is assigned; a
    mismatch raises `CheckpointError` naming the tensors involved. With
    `strict=False`, keys present on only one side are skipped. Returns the
    `Checkpoint` (its `step`, `rng_state`, `rng()` and `extra`)."""
    ck = read(path)
    named = named_tensors(tensors)
    problems = []
    if strict:
        problems += [f"'{k}' ({named[k].name}) is not in the checkpoint" for k in named if k not in ck.arrays]
        problems += [f"the checkpoint has '{k}' ({ck.names[k]}), which is not being loaded"
                     for k in ck.arrays if k not in named]
    for key, t in named.items():
        if key not in ck.arrays:
            continue
        a = ck.arrays[key]
        if a.shape != t.shape:
            problems.append(f"'{key}' ({t.name}) has shape {format_shape(a.shape)} in the checkpoint "
                            f"but {format_shape(t.shape)} here")
        elif a.dtype != t.dtype:
            problems.append(f"'{key}' ({t.name}) is {a.dtype.name} in the checkpoint but {t.dtype.name} here")
    if problems:
        raise CheckpointError(f"checkpoint '{path}' does not match: " + "; ".join(problems))
    for key, t in named.items():
        if key in ck.arrays:
            t.value = ck.arrays[key]
    return ck
