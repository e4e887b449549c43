"""The BLAS that compiled matrix products call: NumPy's own.

A process that runs a compiled step almost always runs NumPy too (the
interpreter, data preparation, metrics), and NumPy's wheels bring their
own OpenBLAS with its own pool of threads. Numba's `np.dot` calls a second
one, SciPy's. Each pool's threads spin for a while after a product, so two
pools on the same cores take turns stalling each other: the matrix
products of a 784-1024-1024-10 MLP step took 36-57 ms instead of 31 right
after NumPy products (2 cores), and a benchmark alternating interpreted and
compiled steps saw the compiled medium step 3-4x slower than alone. So
compiled kernels call `cblas_?gemm` of NumPy's BLAS, found at run time,
through its address (passed in the kernel's sizes table, so the cached
machine code holds no address), with transposes as BLAS flags and the
scaling factors `alpha` and `beta` at hand.

Where NumPy's BLAS exposes no CBLAS gemm that bpc knows (a NumPy built
against a system BLAS with hidden symbols, say), kernels use Numba's
`np.dot` as before. `BPC_BLAS=numpy` or `BPC_BLAS=scipy` chooses.
"""
import ctypes
import glob
import hashlib
import os
from dataclasses import dataclass

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

# CBLAS constants.
ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112

# (symbol of sgemm, of dgemm, index bits): NumPy's wheels (scipy-openblas,
# ILP64), then LP64 builds of the same, then any CBLAS.
_SYMBOLS = (("scipy_cblas_sgemm64_", "scipy_cblas_dgemm64_", 64), ("cblas_sgemm64_", "cblas_dgemm64_", 64),
            ("scipy_cblas_sgemm", "scipy_cblas_dgemm", 32), ("cblas_sgemm", "cblas_dgemm", 32))


@dataclass(frozen=True)
class Gemm:
    """Where compiled matrix products go: a library's CBLAS gemm entries."""
    library: str          # file name of the library
    sgemm: str            # symbol names
    dgemm: str
    index_bits: int       # 64 (ILP64) or 32
    addresses: tuple      # (sgemm, dgemm) in this process
    version: str

    def address(self, dtype):
        return self.addresses[0 if dtype.name == "float32" else 1]

    def symbol(self, dtype):
        return self.sgemm if dtype.name == "float32" else self.dgemm

    def describe(self):
        return f"NumPy's BLAS ({self.version or self.library}, {self.sgemm}/{self.dgemm}, {self.index_bits}-bit indices)"


class Address(int):
    """A function's address in a kernel's sizes table, shown by name."""

    def __new__(cls, value, name):
        self = super().__new__(cls, value)
        self.name = name
        return self

    def __repr__(self):
        return f"&{self.name}"


def _numpy_blas_files():
    import numpy as np
    here = os.path.dirname(np.__file__)
    found = []
    for pattern in (os.path.join(here, os.pardir, "numpy.libs", "*"), os.path.join(here, ".dylibs", "*")):
        found += sorted(p for p in glob.glob(pattern) if "blas" in os.path.basename(p).lower())
    return found


def _numpy_blas_version():
    try:
        import numpy as np
        blas = np.__config__.CONFIG["Build Dependencies"]["blas"]
        return f"{blas['name']} {blas['version']}"
    except Exception:   # older NumPy: no CONFIG dict
        return ""


def _lookup():
    for path in _numpy_blas_files() + [None]:   # None: symbols already loaded into the process
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for s, d, bits in _SYMBOLS:
            try:
                fs, fd = getattr(lib, s), getattr(lib, d)
            except AttributeError:
                continue
            addresses = tuple(ctypes.cast(f, ctypes.c_void_p).value for f in (fs, fd))
            return Gemm(os.path.basename(path) if path else "(process)", s, d, bits, addresses,
                        _numpy_blas_version())
    return None


_found = []


def numpy_gemm():
    """NumPy's CBLAS gemm (a `Gemm`), or None when bpc cannot call it:
    then compiled products use Numba's np.dot (SciPy's BLAS). BPC_BLAS=scipy
    forces that; BPC_BLAS=numpy makes a missing NumPy BLAS an error."""
    choice = os.environ.get("BPC_BLAS", "").strip().lower()
    if choice not in ("", "numpy", "scipy"):
        raise ValueError(f"BPC_BLAS={choice!r}: expected 'numpy' or 'scipy'")
    if choice == "scipy":
        return None
    if not _found:
        _found.append(_lookup())
    if _found[0] is None and choice == "numpy":
        raise RuntimeError("BPC_BLAS=numpy, but bpc found no CBLAS gemm in NumPy's BLAS "
                           f"(looked in {_numpy_blas_files() or 'no bundled library'} and the process)")
    return _found[0]


def describe():
    """Which BLAS compiled matrix products call, in words."""
    g = numpy_gemm()
    if g is not None:
        return g.describe()
    try:
        from threadpoolctl import threadpool_info
        libs = [p for p in threadpool_info() if p.get("user_api") == "blas" and "scipy" in (p.get("filepath") or "")
                and "numpy" not in (p.get("filepath") or "")]
        if libs:
            return f"SciPy's BLAS through Numba's np.dot ({libs[0].get('internal_api')} {libs[0].get('version')})"
    except ImportError:
        pass
    return "SciPy's BLAS through Numba's np.dot"


@intrinsic
def cblas_gemm(typingctx, fn, index_bits, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """C = alpha * op(A) @ op(B) + beta * C, row-major, through the CBLAS
    gemm at address `fn` (an int64); `index_bits` (a literal 32 or 64) is
    the width of its size arguments; a, b, c are data addresses; alpha and
    beta are of the product's dtype."""
    bits = getattr(index_bits, "literal_value", None)
    if bits not in (32, 64) or not isinstance(alpha, types.Float):
        return None
    index = types.int64 if bits == 64 else types.int32
    targets = [types.int32, types.int32, types.int32, index, index, index, alpha, "ptr", index,
               "ptr", index, alpha, "ptr", index]

    def codegen(context, builder, sig, args):
        ptr = ir.IntType(8).as_pointer()
        values, llvm_types = [], []
        for value, ty, target in zip([context.get_constant(types.int32, ROW_MAJOR)] + list(args[2:]),
                                     [types.int32] + list(sig.args[2:]), targets):
            if target == "ptr":
                value = builder.inttoptr(context.cast(builder, value, ty, types.intp), ptr)
                llvm_types.append(ptr)
            else:
                value = context.cast(builder, value, ty, target)
                llvm_types.append(context.get_value_type(target))
            values.append(value)
        fnty = ir.FunctionType(ir.VoidType(), llvm_types)
        builder.call(builder.inttoptr(args[0], fnty.as_pointer()), values)
        return context.get_dummy_value()
    return types.void(fn, index_bits, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc), codegen


# Generated kernels that call `cblas_gemm` name this in their source, so
# that a change to this module changes their cache keys.
with open(__file__, "rb") as _f:
    CALL_VERSION = hashlib.sha256(_f.read()).hexdigest()[:12]
