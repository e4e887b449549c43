"""Checkpoints: parameters, optimizer state, step count and RNG state in one
`.npz` file, without pickle.

Tensors are stored as plain arrays; everything else (their keys, names,
shapes and dtypes, the step count, the state of the shuffling generator and
any extra JSON data, such as a training history) is JSON text in a uint8
array, so loading never runs code from the file. Files are written
atomically (temporary file + rename), so a crash mid-write leaves the
previous checkpoint intact.

Reading checks the whole file before returning: the zip structure, the
metadata's types and ranges, and every array's header against the metadata
(numeric dtype, shape, size), reading no array whose header is wrong. Any
problem raises one `CheckpointError` naming the file; `load` then checks
keys, shapes and dtypes against the tensors before assigning any of them.

What to save is given as a model (`bpc.nn` Module), an optimizer, a dict
`{key: tensor}`, a list of tensors (keyed by their names) or a list mixing
these. Models and optimizers contribute keys that are stable across
rebuilds ("model.0.W", "optimizer.m.0"), so a checkpoint loads into a
freshly built copy of the same architecture.
"""
import io
import json
import operator
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass, field

import numpy as np
from numpy.lib import format as npy_format

from .graph.tensor import Tensor, format_shape
from .io import atomic_write_text

FORMAT = "bpc-checkpoint/1"
_META = "__meta__"
_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")
_NPY_MAGIC = b"\x93NUMPY"
_DTYPE_KINDS = "biuf"       # what a bpc tensor can hold (bool, ints, floats)

# What zipfile, numpy's .npy header parser and json raise on a damaged or
# crafted file; nothing else runs while a checkpoint is read.
_READ_ERRORS = (zipfile.BadZipFile, zlib.error, struct.error, EOFError, OSError, ValueError, KeyError,
                TypeError, OverflowError, RecursionError, NotImplementedError, RuntimeError)


class CheckpointError(ValueError):
    """A checkpoint file is unreadable or does not match what it is loaded into."""


def _short(value, limit=60):
    """repr(value), cut short: crafted metadata may hold huge values."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _generator(state):
    """A Generator restored to a bit-generator state dict (ValueError if unusable)."""
    try:
        name = state["bit_generator"]
        if name not in _BIT_GENERATORS:
            raise ValueError(f"unknown bit generator {_short(name)}")
        bitgen = getattr(np.random, name)()
        bitgen.state = state
    except (KeyError, TypeError, AttributeError, ValueError, OverflowError, IndexError) as e:
        raise ValueError(f"{type(e).__name__}: {e}") from None
    return np.random.Generator(bitgen)


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
            return _generator(self.rng_state)
        except ValueError as e:
            raise CheckpointError(f"checkpoint '{self.path}': unusable RNG state ({e})") from None


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
    if rng_state is None:
        return None
    if isinstance(rng_state, np.random.Generator):
        rng_state = rng_state.bit_generator.state
    if not isinstance(rng_state, dict):
        raise TypeError(f"checkpoint: rng_state must be a numpy Generator or its state dict, "
                        f"got {type(rng_state).__name__}")
    try:
        _generator(rng_state)       # refuse to write a state that could not be loaded
    except ValueError as e:
        raise ValueError(f"checkpoint: unusable rng_state ({e})") from None
    return rng_state


def _check_step(step):
    if isinstance(step, (bool, np.bool_)):
        raise TypeError(f"checkpoint: step must be an int, got {step!r}")
    try:
        step = operator.index(step)
    except TypeError:
        raise TypeError(f"checkpoint: step must be an int, got {_short(step)}") from None
    if step < 0:
        raise ValueError(f"checkpoint: step must be >= 0, got {step}")
    return step


def save(path, tensors, step=0, rng_state=None, extra=None):
    """Write `tensors` (see `named_tensors`), the step count (an int >= 0),
    an RNG state (a Generator or its `bit_generator.state`) and `extra` (a
    JSON-able dict) to `path`. Everything is checked before the file is
    touched."""
    named = named_tensors(tensors)
    step = _check_step(step)
    if extra is not None and not isinstance(extra, dict):
        raise TypeError(f"checkpoint: extra must be a dict, got {type(extra).__name__}")
    arrays, entries = {}, []
    for i, (key, t) in enumerate(named.items()):
        value = np.array(t.value, order="C")   # (ascontiguousarray would make 0-d arrays 1-d)
        arrays[f"t{i}"] = value
        entries.append({"key": key, "name": t.name, "array": f"t{i}",
                        "shape": list(value.shape), "dtype": value.dtype.str})
    meta = {"format": FORMAT, "step": step, "rng_state": _rng_state(rng_state),
            "extra": extra or {}, "tensors": entries}
    try:
        text = json.dumps(meta)
    except (TypeError, ValueError) as e:
        raise TypeError(f"checkpoint: extra data must be JSON-serialisable ({e})") from None
    arrays[_META] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_text(path, buf.getvalue(), binary=True)


# ----- reading ---------------------------------------------------------------------------------

def read(path):
    """Read and check a checkpoint file into a `Checkpoint` (nothing is
    assigned). A missing file raises FileNotFoundError; anything else wrong
    with the file raises `CheckpointError`."""
    name = os.fspath(path)
    try:
        fh = open(name, "rb")
    except FileNotFoundError:
        raise
    except OSError as e:          # a folder, no permission...
        raise CheckpointError(f"'{name}' cannot be read as a bpc checkpoint "
                              f"({type(e).__name__}: {e.strerror or e})") from None
    with fh:
        try:
            head = fh.read(len(_NPY_MAGIC))
            if not head:
                raise CheckpointError(f"'{name}' is not a readable bpc checkpoint (the file is empty)")
            if head == _NPY_MAGIC:
                raise CheckpointError(f"'{name}' is a single NumPy array (.npy), not a bpc checkpoint "
                                      "(an .npz file written by bpc.save_checkpoint)")
            fh.seek(0)
            with zipfile.ZipFile(fh) as z:
                return _read_zip(name, z)
        except CheckpointError:
            raise
        except _READ_ERRORS as e:
            what = "truncated, or not a zip file" if isinstance(e, zipfile.BadZipFile) else "damaged"
            raise CheckpointError(f"'{name}' is not a readable bpc checkpoint ({what}: "
                                  f"{type(e).__name__}: {e})") from None


def _read_zip(path, z):
    members = {}
    for info in z.infolist():
        members.setdefault(info.filename, info)
    if f"{_META}.npy" not in members:
        raise CheckpointError(f"'{path}' is not a bpc checkpoint (no metadata)")
    raw = _read_array(path, z, members[f"{_META}.npy"], "the metadata", np.dtype(np.uint8), None)
    if raw.ndim != 1:
        raise CheckpointError(f"'{path}' is not a bpc checkpoint (its metadata is not a byte string)")
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CheckpointError(f"'{path}' is not a bpc checkpoint (its metadata is not JSON: {e})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"'{path}' is not a bpc checkpoint (its metadata is a JSON "
                              f"{type(meta).__name__}, not an object)")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"'{path}' has format {_short(meta.get('format'))}, expected {FORMAT!r}")
    entries = _check_meta(path, meta, members)
    arrays = {e["key"]: _read_array(path, z, members[e["array"] + ".npy"], f"array '{e['key']}'",
                                    np.dtype(e["dtype"]), tuple(e["shape"])) for e in entries}
    names = {e["key"]: e["name"] for e in entries}
    return Checkpoint(path, arrays, meta["step"], meta["rng_state"], meta["extra"], names)


def _check_meta(path, meta, members):
    """The tensor entries of well-formed metadata; CheckpointError naming the first bad field."""
    def bad(problem):
        return CheckpointError(f"checkpoint '{path}' has bad metadata: {problem}")

    for k in ("step", "rng_state", "extra", "tensors"):
        if k not in meta:
            raise bad(f"'{k}' is missing")
    step = meta["step"]
    if not _is_int(step) or step < 0:
        raise bad(f"'step' must be an int >= 0, got {_short(step)}")
    if meta["rng_state"] is not None:
        if not isinstance(meta["rng_state"], dict):
            raise bad(f"'rng_state' must be an object or null, got {_short(meta['rng_state'])}")
        try:
            _generator(meta["rng_state"])
        except ValueError as e:
            raise bad(f"unusable 'rng_state' ({e})") from None
    if not isinstance(meta["extra"], dict):
        raise bad(f"'extra' must be an object, got {_short(meta['extra'])}")
    entries = meta["tensors"]
    if not isinstance(entries, list):
        raise bad(f"'tensors' must be a list, got {_short(entries)}")
    keys, used = set(), set()
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            raise bad(f"tensors[{i}] must be an object, got {_short(e)}")
        for k in ("key", "name", "array", "dtype"):
            if not isinstance(e.get(k), str):
                raise bad(f"tensors[{i}].{k} must be a string, got {_short(e.get(k))}")
        key = e["key"]
        if key in keys:
            raise bad(f"two tensors have the key {_short(key)}")
        keys.add(key)
        if e["array"] == _META or e["array"] + ".npy" not in members:
            raise bad(f"tensor {_short(key)} names array {_short(e['array'])}, which is not in the file")
        if e["array"] in used:
            raise bad(f"tensor {_short(key)} shares array {_short(e['array'])} with another tensor")
        used.add(e["array"])
        shape = e.get("shape")
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise bad(f"tensor {_short(key)} has shape {_short(shape)}; expected a list of ints >= 0")
        try:
            dtype = np.dtype(e["dtype"])
        except (TypeError, ValueError, SyntaxError):
            dtype = None
        if dtype is None or dtype.kind not in _DTYPE_KINDS or dtype.fields is not None \
                or dtype.subdtype is not None:
            raise bad(f"tensor {_short(key)} has dtype {_short(e['dtype'])}; expected a bool, int or "
                      "float dtype")
    return entries


def _read_array(path, z, info, what, dtype, shape):
    """One array member, its .npy header checked against `dtype` and `shape`
    (any shape when None) and the member's size before any data is read."""
    def bad(problem):
        return CheckpointError(f"checkpoint '{path}': {what} is damaged ({problem})")

    with z.open(info) as fp:
        version = npy_format.read_magic(fp)
        if version == (1, 0):
            got_shape, fortran, got_dtype = npy_format.read_array_header_1_0(fp)
        elif version == (2, 0):
            got_shape, fortran, got_dtype = npy_format.read_array_header_2_0(fp)
        else:
            raise bad(f".npy format version {version}")
        if got_dtype.newbyteorder("=") != dtype.newbyteorder("="):
            raise bad(f"it holds {got_dtype.str} data, the metadata says {dtype.str}")
        if shape is not None and tuple(got_shape) != shape:
            raise bad(f"it has shape {format_shape(got_shape)}, the metadata says {format_shape(shape)}")
        count = 1
        for d in got_shape:
            count *= d
        nbytes = count * got_dtype.itemsize
        if info.file_size - fp.tell() != nbytes:
            raise bad(f"{nbytes} bytes of data expected, {info.file_size - fp.tell()} present")
        try:
            flat = np.empty(count, dtype=got_dtype)
        except MemoryError:
            raise CheckpointError(f"checkpoint '{path}': {what} needs {nbytes} bytes of memory, "
                                  "more than can be allocated") from None
        view, done = memoryview(flat).cast("B"), 0
        while done < nbytes:
            n = fp.readinto(view[done:])
            if not n:
                raise bad("it ends early")
            done += n
    arr = np.array(flat.reshape(got_shape[::-1]).T, order="C") if fortran else flat.reshape(got_shape)
    return arr if got_dtype.isnative else arr.astype(got_dtype.newbyteorder("="))


# ----- loading into tensors ----------------------------------------------------------------------

def restore(ck, tensors, strict=True):
    """Assign the arrays of a `Checkpoint` (from `read`) to `tensors`, after
    checking every key, shape and dtype (see `load`)."""
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
        raise CheckpointError(f"checkpoint '{ck.path}' does not match: " + "; ".join(problems))
    for key, t in named.items():
        if key in ck.arrays:
            t.value = ck.arrays[key]
    return ck


def load(path, tensors, strict=True):
    """Read `path` and assign its arrays to `tensors` (as for `save`).

    The file and every key, shape and dtype are checked before anything is
    assigned; a problem raises `CheckpointError` naming the file and the
    tensors involved. With `strict=False`, keys present on only one side are
    skipped. Returns the `Checkpoint` (its `step`, `rng_state`, `rng()` and
    `extra`)."""
    named_tensors(tensors)        # a bad argument fails before the file is read
    return restore(read(path), tensors, strict)
