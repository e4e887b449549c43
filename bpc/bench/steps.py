"""What the benchmarks time on bpc's side: the SGD training step, and the
GEMM-only bound made of that step's matrix products.

The step is the one the README describes: the model's loss, the gradients
from `bpc.grad`, plain SGD updates `p - lr * g` for every parameter,
compiled with `bpc.function([x, y], loss, updates=...)` so that forward,
backward and update are one call.
"""
import numpy as np

import bpc
from bpc.graph.traverse import topo_sort

LR = 0.01


def sgd_step(spec, target, lr=LR, **options):
    """One compiled SGD training step of a model (a `bpc.models.ModelSpec`):
    returns (function, graph). The function takes (X, Y), returns the loss
    and updates the params."""
    g = spec.graph()
    grads = bpc.grad(g.loss, g.params)
    updates = {p: p - lr * gr for p, gr in zip(g.params, grads)}
    return bpc.function([g.x, g.y], g.loss, updates=updates, target=target, name="sgd_step",
                        **options), g


_GEMM_CACHE = {}


def gemm_bound(function, batch, seed=0):
    """The step's matrix products alone, as one njit function with
    preallocated outputs: returns (callable, list of 'AxB @ CxD'
    descriptions, ᵀ marking a transposed view), or (None, reason) when some
    product is not 2-d. The products, their shapes and their transposed
    views come from the compiled function's optimized graph, and the calls
    go to the BLAS compiled steps call (`bpc.backends.cpu.blas`)."""
    from numba import njit
    from bpc.backends.cpu import blas
    gemm = blas.numpy_gemm()
    rng = np.random.default_rng(seed)
    nodes = [n for n in topo_sort(function.program.roots) if n.op is not None]
    if any(n.op.name.startswith("conv2d") for n in nodes):
        return None, "the step has convolutions (the bound counts matrix products only)"
    if any(n.op.name == "scan" for n in nodes):
        return None, "the step has a loop over time (the bound times the products outside loops only)"
    products = [n for n in nodes if n.op.name == "matmul"]
    if not products:
        return None, "the step has no matrix products"
    args, names, lines, desc = [], [], [], []

    def operand(t, k):
        shape = tuple(batch if d is None else d for d in t.shape)
        if len(shape) != 2:
            raise ValueError(f"{t.ndim}-d operand")
        transposed = t.op is not None and t.op.name == "transpose"
        base = shape[::-1] if transposed else shape
        args.append(rng.normal(size=base).astype(t.dtype))
        names.append(k)
        return transposed, f"{shape[0]}x{shape[1]}" + ("ᵀ" if transposed else "")

    try:
        for i, n in enumerate(products):
            ta, da = operand(n.inputs[0], f"a{i}")
            tb, db = operand(n.inputs[1], f"b{i}")
            out = tuple(batch if d is None else d for d in n.shape)
            args.append(np.empty(out, dtype=n.dtype))
            names.append(f"o{i}")
            if gemm is None:
                lines.append(f"    np.dot(a{i}{'.T' if ta else ''}, b{i}{'.T' if tb else ''}, o{i})")
            else:
                flag = lambda t: blas.TRANS if t else blas.NO_TRANS
                one, zero = f"{n.dtype.name}(1.0)", f"{n.dtype.name}(0.0)"
                lines.append(f"    cblas_gemm({gemm.address(n.dtype)}, {gemm.index_bits}, {flag(ta)}, {flag(tb)}, "
                             f"{out[0]}, {out[1]}, a{i}.shape[{0 if ta else 1}], {one}, a{i}.ctypes.data, "
                             f"a{i}.shape[1], b{i}.ctypes.data, b{i}.shape[1], {zero}, o{i}.ctypes.data, {out[1]})")
            desc.append(f"{da} @ {db}")
    except ValueError as e:
        return None, f"GEMM bound needs 2-d products ({e})"
    src = f"def gemm_only({', '.join(names)}):\n" + "\n".join(lines) + "\n    return 0\n"
    fn = _GEMM_CACHE.get(src)
    if fn is None:
        ns = {"np": np, "cblas_gemm": blas.cblas_gemm, "float32": np.float32, "float64": np.float64}
        exec(compile(src, "<bpc-bench-gemm>", "exec"), ns)
        fn = _GEMM_CACHE[src] = njit(nogil=True)(ns["gemm_only"])
    return (lambda: fn(*args)), desc
