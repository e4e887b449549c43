"""`bpc.function`: turn a graph into a callable for one target.

The front end is shared by every target: it collects the graph (outputs and
update values), runs the passes, validates every call's arguments before
anything runs, and hands a `Program` to the target's backend.
"""
import contextlib
import logging
import os
import threading
from dataclasses import dataclass, field

import numpy as np

from .errors import CallError, CheckError, GraphError, ShapeError, user_location
from .graph.tensor import Tensor, format_shape
from .graph.traverse import topo_sort
from .passes import optimize as run_passes

log = logging.getLogger("bpc")


def _log_compiles():
    """BPC_LOG_COMPILES=1 prints when, what and why bpc compiles. Set up
    when a compiled function is first built, not at import, so importing
    bpc configures no logging of its own."""
    if os.environ.get("BPC_LOG_COMPILES", "") not in ("", "0") and not log.handlers:
        log.setLevel(logging.INFO)
        log.addHandler(logging.StreamHandler())

TARGETS = ("interpret", "cpu", "cuda")


@dataclass
class Program:
    """What a backend compiles: the optimized graph of one function."""
    inputs: list            # input leaves, in call order
    outputs: list           # optimized output nodes
    updates: list           # (param or state leaf, optimized new-value node)
    name: str = "step"
    report: list = field(default_factory=list)   # node counts after each pass

    @property
    def roots(self):
        return list(self.outputs) + [v for _, v in self.updates]


def default_target():
    """The fastest target that works on this machine: cpu where Numba is
    installed, else the interpreter."""
    import importlib.util
    return "cpu" if importlib.util.find_spec("numba") is not None else "interpret"


def _make_backend(target, program, options):
    if target == "interpret":
        from .backends.interpret import InterpretBackend
        return InterpretBackend(program, **options)
    if target in ("cpu", "cuda"):
        _log_compiles()
    if target == "cpu":
        from .backends.cpu import CpuBackend
        return CpuBackend(program, **options)
    if target == "cuda":
        from .backends.cuda import CudaBackend
        return CudaBackend(program, **options)
    raise ValueError(f"unknown target {target!r}; expected one of {', '.join(TARGETS)}")


def _collect_updates(updates, roots):
    """Explicit updates plus one for each counter state the graph reads
    (`bpc.state(..., counter=True)`: dropout's random counters advance
    every call)."""
    if updates is None:
        pairs = []
    elif isinstance(updates, dict):
        pairs = list(updates.items())
    else:
        pairs = list(updates)
    seen = set()
    checked = []
    for target, expr in pairs:
        if not isinstance(target, Tensor) or target.kind not in ("param", "state"):
            raise GraphError(f"updates: keys must be params or state, got {target!r}")
        if target.id in seen:
            raise GraphError(f"updates: param '{target.name}' is updated twice")
        seen.add(target.id)
        if not isinstance(expr, Tensor):
            from .ops import lift
            expr = lift(expr, target)
        if expr.shape != target.shape:
            raise ShapeError(f"updates: new value for '{target.name}' has shape {format_shape(expr.shape)}, "
                             f"the param has {format_shape(target.shape)} (built at {expr.where})")
        if expr.dtype != target.dtype:
            from .ops import cast
            if expr.dtype.kind != target.dtype.kind:
                raise ShapeError(f"updates: new value for '{target.name}' is {expr.dtype.name}, "
                                 f"the param is {target.dtype.name}")
            expr = cast(expr, target.dtype)
        checked.append((target, expr))
    for node in topo_sort(list(roots) + [e for _, e in checked]):
        if node.kind == "state" and node.counter and node.id not in seen:
            seen.add(node.id)
            checked.append((node, node + 1))
    return checked


class Function:
    """A compiled (or interpreted) function of a graph. Call it with NumPy
    arrays, positionally or by input name; it returns NumPy arrays."""

    def __init__(self, inputs, outputs, updates=None, target=None, optimize=True,
                 check_numerics=False, check=None, name="step", **options):
        if isinstance(inputs, Tensor):
            inputs = [inputs]
        self.inputs = list(inputs)
        for t in self.inputs:
            if not isinstance(t, Tensor) or t.kind != "input":
                raise GraphError(f"function inputs must be bpc.input tensors, got {t!r}")
        if len({t.name for t in self.inputs}) != len(self.inputs):
            raise GraphError("function inputs must have distinct names, got "
                             + ", ".join(repr(t.name) for t in self.inputs))
        self._single = isinstance(outputs, Tensor)
        outs = [outputs] if self._single else list(outputs or [])
        for o in outs:
            if not isinstance(o, Tensor):
                raise GraphError(f"function outputs must be bpc tensors, got {type(o).__name__}")
        self.outputs = outs
        update_pairs = _collect_updates(updates, outs)
        self.updates = update_pairs
        self.target = target or default_target()
        self.check_numerics = check_numerics
        if check is None:   # BPC_CHECK=1 checks every compiled function
            check = os.environ.get("BPC_CHECK", "") not in ("", "0")
        self.check = bool(check) and self.target != "interpret"
        self.where = user_location()

        roots = outs + [e for _, e in update_pairs]
        self._check_closed(roots)
        if optimize:
            new_outs, new_updates, report = run_passes(outs, update_pairs)
        else:
            new_outs, new_updates, report = outs, update_pairs, [("input", len(topo_sort(roots)))]
        # One node per result of each scan (CSE merges them too; unoptimized
        # graphs can hold several, and the planner gives each result one buffer).
        from .ops.scan import merge_scan_results
        merged = merge_scan_results(new_outs + [v for _, v in new_updates])
        new_outs, new_updates = merged[:len(new_outs)], [(t, v) for (t, _), v in zip(new_updates, merged[len(new_outs):])]
        self.program = Program(self.inputs, new_outs, new_updates, name=name, report=report)
        self._batched = [i for i, t in enumerate(self.inputs) if None in t.shape]
        if any(None in n.shape for n in topo_sort(roots)) and not self._batched:
            raise GraphError("the graph has a batch dimension (None) but no input carries one")
        self._labels = _label_checks(self.inputs, self.program.roots)
        self.backend = _make_backend(self.target, self.program, options)
        self._lock = threading.Lock() if self.program.updates else contextlib.nullcontext()
        self.last_profile = None   # the last `profile()`'s result, shown by `report()`

    def _check_closed(self, roots):
        fed = {t.id for t in self.inputs}
        for n in topo_sort(roots):
            if n.kind == "input" and n.id not in fed:
                raise GraphError(f"the graph needs input '{n.name}' (declared at {n.where}), "
                                 f"which is not among the function's inputs "
                                 f"[{', '.join(t.name for t in self.inputs)}]")

    # ----- calling ----------------------------------------------------------------
    def _bind(self, args, kwargs):
        if len(args) > len(self.inputs):
            raise CallError(f"{self._sig()} takes {len(self.inputs)} arguments, got {len(args)}")
        bound = list(args) + [None] * (len(self.inputs) - len(args))
        names = {t.name: i for i, t in enumerate(self.inputs)}
        for key, val in kwargs.items():
            if key not in names:
                raise CallError(f"{self._sig()} got an unexpected argument '{key}'")
            if names[key] < len(args):
                raise CallError(f"{self._sig()} got two values for '{key}'")
            bound[names[key]] = val
        missing = [self.inputs[i].name for i, v in enumerate(bound) if v is None]
        if missing:
            raise CallError(f"{self._sig()} is missing {', '.join(repr(m) for m in missing)}")
        return bound

    def _sig(self):
        return f"function({', '.join(t.name for t in self.inputs)}) [built at {self.where}]"

    def _validate(self, bound):
        arrays, batch = [], None
        for t, v in zip(self.inputs, bound):
            arr = np.asarray(v)
            if arr.dtype.kind not in "biuf":
                raise CallError(f"input '{t.name}': expected {t.dtype.name} numbers, got {arr.dtype}")
            if arr.dtype != t.dtype:
                if not np.can_cast(arr.dtype, t.dtype, casting="same_kind") or (
                        t.dtype.kind in "iu" and arr.dtype.kind == "f"):
                    raise CallError(f"input '{t.name}': expected {t.dtype.name}, got {arr.dtype} "
                                    f"(which would lose information)")
                arr = arr.astype(t.dtype)
            if arr.ndim != len(t.shape):
                raise CallError(f"input '{t.name}': expected a {len(t.shape)}-d array of shape "
                                f"{format_shape(t.shape)}, got shape {arr.shape}")
            for axis, (want, got) in enumerate(zip(t.shape, arr.shape)):
                if want is None:
                    if batch is None:
                        batch = got
                    elif got != batch:
                        raise CallError(f"input '{t.name}': batch dimension (axis {axis}) is {got}, "
                                        f"but an earlier input has batch size {batch}")
                elif want != got:
                    raise CallError(f"input '{t.name}': axis {axis} must be {want}, got {got} "
                                    f"(expected shape {format_shape(t.shape)}, got {arr.shape})")
            # C-contiguous and writeable: compiled code is specialised on the
            # layout (a read-only array would compile a second variant).
            ok = arr.flags.c_contiguous and arr.flags.writeable
            arrays.append(arr if ok else np.array(arr, order="C"))
        if batch == 0:
            raise CallError("empty batch: inputs have 0 rows")
        for i, depth in self._labels:
            a = arrays[i]
            if a.size and (a.min() < 0 or a.max() >= depth):
                bad = a[(a < 0) | (a >= depth)][0]
                raise CallError(f"input '{self.inputs[i].name}': label {bad} is outside [0, {depth})")
        return arrays, (1 if batch is None else batch)

    def __call__(self, /, *args, **kwargs):   # an input may be called "self"
        arrays, batch = self._validate(self._bind(args, kwargs))
        # Steps that update params run one at a time, checks included: each
        # reads the values the previous one wrote. Functions without updates
        # run concurrently, each call in a workspace of its own.
        with self._lock:
            outs = self._run(arrays, batch)
        return outs[0] if self._single else outs

    def _run(self, arrays, batch):
        """One call on validated arguments; the caller holds the lock."""
        if self.check_numerics or self.check:
            return self._call_checked(arrays, batch)
        return self.backend(arrays, batch)

    def profile(self, /, *args, repeat=20, **kwargs):
        """Time each kernel of the step (target "cpu" only): takes the
        arguments a call takes and returns a `bpc.profile.Profile`, one row
        per kernel call in step order (seconds per call; FLOPs and GFLOP/s
        of the matrix products), the kernels' total and the time of a whole
        call; `print()` it for a table.

        It runs ONE real step first (its outputs are `profile.outputs`),
        then times every kernel `repeat` times per round (best of 5 rounds)
        and the whole step likewise, restoring every param and state the
        step writes: afterwards the model is as after one call. An input
        named "repeat" must be passed positionally. The last profile is
        kept (`last_profile`) and shown by `report()`."""
        from .profile import profile
        return profile(self, args, kwargs, repeat=repeat)

    def _call_checked(self, arrays, batch):
        """A call under `check_numerics` and/or `check`: on a failure the
        params and state are left as they were before the call."""
        from .backends import residency
        from .backends.interpret import evaluate, first_nonfinite
        p = self.program
        before = {t.id: residency.host_value(t) for t, _ in p.updates}
        if self.check:   # the reference: the interpreter, on the pre-step values
            feeds = {t.id: a for t, a in zip(p.inputs, arrays)}
            expected = evaluate(p.roots, feeds, batch, before)
        outs = self.backend(arrays, batch)
        new_values = [t.value for t, _ in p.updates]
        try:
            if self.check_numerics and not all(
                    np.all(np.isfinite(v)) for v in outs + new_values if v.dtype.kind == "f"):
                # Re-run op by op on the pre-step values to name the first bad node.
                node = first_nonfinite(p, arrays, batch, before)
                raise FloatingPointError(f"non-finite value (NaN or Inf) first produced by {_describe(node)}"
                                         + ("; params and state were left unchanged" if p.updates else ""))
            if self.check:
                got = outs + new_values
                labels = [f"output {k}" for k in range(len(outs))] + [
                    f"the update of {t.kind} '{t.name}'" for t, _ in p.updates]
                for node, label, g, want in zip(p.roots, labels, got, expected):
                    problem = _mismatch(g, np.asarray(want, dtype=node.dtype))
                    if problem:
                        raise CheckError(
                            f"target '{self.target}' disagrees with the interpreter on {label}, "
                            f"{_describe(node)}: {problem}"
                            + ("; params and state were left unchanged" if p.updates else ""))
        except (FloatingPointError, CheckError):
            for t, _ in p.updates:
                t.value = before[t.id]
            raise
        return outs

    # ----- introspection ----------------------------------------------------------
    @property
    def source(self):
        """Generated source code (compiled targets), after a legend of the
        identifiers that stand for the user's inputs, params and named nodes."""
        source = getattr(self.backend, "source", None)
        legend = getattr(self.backend, "legend", None)
        return source if source is None or not legend else "\n".join(legend) + "\n\n" + source

    def report(self):
        """What the compiler did: node counts after each pass and, for
        compiled targets, the kernels the step runs; after `profile()`, the
        matrix products with their shapes and GFLOP/s."""
        lines = [f"{self._sig()} on target '{self.target}'", "passes (nodes after each):"]
        lines += [f"  {name:34} {count}" for name, count in self.program.report]
        plan = getattr(self.backend, "plan", None)
        if plan is not None:
            forms = [k.form for k in plan.kernels]
            lines.append(f"kernels: {len(forms)} ({forms.count('loop')} fused loops, "
                         f"{forms.count('matmul')} matrix products, {forms.count('view')} views); "
                         f"{len(plan.buffer_specs)} workspace buffers; "
                         f"{len(plan.in_place)} updates written in place")
            lines += [f"  {k.describe()}" for k in plan.kernels]
        for variant, compiles in getattr(self.backend, "compiles", {}).items():
            done = [c for c in compiles if c.how in ("compiled", "helper")]
            lines.append(f"{variant} kernels: {len(compiles)} distinct; {len(done)} compiled "
                         f"({sum(c.how == 'helper' for c in done)} by helper processes), "
                         f"{sum(c.how == 'cache hit' for c in compiles)} loaded from the cache, "
                         f"{sum(c.how == 'shared' for c in compiles)} already loaded by another function; "
                         f"{sum(c.seconds for c in compiles):.2f} s here "
                         f"(LLVM {sum(c.llvm_seconds for c in compiles):.2f} s)")
            lines += [f"  {c.describe()}" for c in compiles]
        if self.last_profile is not None:
            lines.append(self.last_profile.matmul_section())
        return "\n".join(lines)

    def __repr__(self):
        return f"<bpc.Function {self._sig()} target={self.target}>"


def _label_checks(inputs, roots):
    """(argument position, depth) for each input that a one_hot in this
    program reads as class labels: the call checks they lie in [0, depth)."""
    depth = {}
    for n in topo_sort(roots):
        if n.op is not None and "label_depth" in n.attrs and n.inputs[0].kind == "input":
            label = n.inputs[0].id
            depth[label] = min(n.attrs["label_depth"], depth.get(label, n.attrs["label_depth"]))
    return [(i, depth[t.id]) for i, t in enumerate(inputs) if t.id in depth]


# (relative, absolute per unit of the largest value) for check=True. Loose
# enough for rounding, far below what a wrong buffer or index gives. An
# ill-conditioned float32 graph can still exceed it: check it in float64.
CHECK_TOLERANCE = {"float32": (2e-3, 2e-4), "float64": (1e-7, 1e-9)}


def _describe(node):
    if node is None:
        return "an unknown node"
    return f"'{node.name}' ({node.op.name if node.op else node.kind}, built at {node.where})"


def _mismatch(got, want):
    """Why `got` (a compiled result) differs from `want` (the interpreter's),
    or None. Floats agree within `CHECK_TOLERANCE` of their dtype, relative
    to each value and to the largest one (BLAS and fused loops sum in other
    orders; float32 exp and log differ by an ulp between NumPy and LLVM,
    which cancellation can magnify); NaN and Inf must match exactly."""
    if got.shape != want.shape:
        return f"shape {got.shape}, expected {want.shape}"
    if got.dtype.kind != "f":
        bad = got != want
    else:
        rtol, atol = CHECK_TOLERANCE[got.dtype.name]
        finite = np.isfinite(want)
        scale = max(1.0, float(np.max(np.abs(want[finite])))) if finite.any() else 1.0
        with np.errstate(invalid="ignore"):
            close = np.abs(got - want) <= rtol * np.abs(want) + atol * scale
        bad = ~(close | (np.isnan(got) & np.isnan(want)) | (got == want))
    if not np.any(bad):
        return None
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    return (f"{int(np.count_nonzero(bad))} of {bad.size} elements differ, first at index {first}: "
            f"{got[first]!r} instead of {want[first]!r}")


def function(inputs, outputs, updates=None, target=None, **options):
    """Compile `outputs` (a tensor or list) as a function of `inputs`.

    `updates` maps params (or state) to new-value expressions, written after
    the outputs are computed. `target` is "interpret", "cpu" or "cuda"
    (default: the fastest available). `check=True` (or BPC_CHECK=1) runs
    the interpreter beside a compiled target on every call and raises
    `bpc.CheckError` naming the first output or update that differs.
    `check_numerics=True` raises `FloatingPointError` naming the first node
    that produced a NaN or Inf in an output or update. Either leaves the
    params and state unchanged when it raises. Returns a `Function`."""
    return Function(inputs, outputs, updates, target, **options)
