"""Compile every generated kernel to PTX without a GPU, and audit its
floating-point width.

The simulator runs kernels as Python, so it accepts code a GPU compiler
rejects and never shows a float64 promotion. `compile_program` compiles
each kernel of a program with `numba.cuda.compile_ptx` for a real
architecture (needs `numba-cuda[cu13]`, no driver; and not the simulator,
which replaces numba.cuda process-wide: run it in a separate process).

`float64_audit` checks the documented float64 policy of float32 kernels:
the only float64 values are the accumulators of float sums and means
(`lowering.acc_init`: float32 running sums drift by percents over 1e7
terms), so
float64 instructions may appear only in kernels holding such a reduction,
and only as the accumulation itself: widening conversions, additions (or
subtractions, for a negated element), the mean's division by its count,
narrowing the result, and moves/loads/stores of those values (the
shared-memory partials). Any other float64 arithmetic (mul, fma, exp,
comparisons, ...) is a promotion bug. Kernels where the graph itself holds
float64 values (an optimizer's float64 learning rate or step count) are
left out: float64 there is what the graph asks for.
"""
import re

# Opcodes a float64 accumulator needs (see the module docstring); LLVM folds
# the addition of a negated element into a subtraction.
ALLOWED_F64 = {"add", "sub", "div", "cvt", "mov", "ld", "st", "selp"}

_F64 = re.compile(r"^\s*(?:@%p\d+\s+)?([a-z]+)(\.[a-z0-9.]*f64[a-z0-9.]*)\s", re.M)


def f64_instructions(ptx):
    """(opcode, full suffix) of every instruction touching a .f64 operand type."""
    return [(m.group(1), m.group(1) + m.group(2)) for m in _F64.finditer(ptx)]


def kernel_signature(spec):
    from numba import types, from_dtype
    out = []
    for name in spec.args:
        if name in spec.dtypes:
            out.append(types.Array(from_dtype(spec.dtypes[name]), 1, "C"))
        else:
            out.append(types.int64)
    return tuple(out)


def compile_program(program, cc=(9, 0), tile=16):
    """{kernel name: (spec, PTX text)} for every kernel of a program."""
    from numba import cuda
    from . import generate, load_kernels, simulator_enabled
    from ...passes.fuse import plan as make_plan
    if simulator_enabled():
        raise RuntimeError("compile_program needs the real numba.cuda: run it in a process "
                           "without NUMBA_ENABLE_CUDASIM")
    gen, _ = generate(program, make_plan(program), tile)
    modules = load_kernels(gen)
    out, compiled = {}, {}
    for spec in gen.specs:   # each module once per signature (kernels shared by launches compile once)
        key = (spec.module, kernel_signature(spec))
        if key not in compiled:
            compiled[key], _ = cuda.compile_ptx(modules[spec.module][0].kernel.py_func, key[1], cc=cc)
        out[spec.name] = (spec, compiled[key])
    return out


def float64_audit(compiled):
    """Problems (strings) with float64 use in compiled kernels of a program
    whose floats are all float32; empty when the policy holds."""
    problems = []
    for name, (spec, ptx) in compiled.items():
        found = f64_instructions(ptx)
        if not found or spec.float64_values:
            continue
        if not spec.float64_sums:
            problems.append(f"{spec.describe} uses float64: {sorted({f for _, f in found})}")
            continue
        bad = sorted({full for op, full in found if op not in ALLOWED_F64})
        if bad:
            problems.append(f"{spec.describe} has float64 arithmetic beyond its accumulators: {bad}")
        if any(op == "div" for op, _ in found) and not spec.means:
            problems.append(f"{spec.describe} divides in float64 but holds no mean")
    return problems
