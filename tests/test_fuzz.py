"""Differential fuzzer: random programs must give, on every compiled target,
what the interpreter (the reference) gives: every output and every param
(and optimizer state) value after every step.

What the programs hold is described in fuzzgen.py. Each test case is a
*pack*: K independent random programs (disjoint inputs and params) compiled
together as ONE bpc.function (their inputs, outputs and updates
concatenated), so one compile checks K programs. A pack runs 2-3 steps (or
6) with batch sizes that change between calls, from the same initial param values
on every target, twice: all steps on the target, then a mixed run (target,
interpreter, target, with a param assigned by the user in between). When a
pack disagrees, each of its programs is run alone to find the failing ones;
the smallest is shrunk (steps, outputs and updates dropped while it still
fails) and printed with its seed and a command that reproduces it.

Targets: cpu with the serial and with the parallel build forced, cuda (on
Numba's simulator when there is no GPU; tiny shapes), and the interpreter
on the graph as written against the optimized graph (the passes).

Sizes (the defaults fit CI; compile time is what costs):
  BPC_FUZZ_PROGRAMS=N   programs on cpu with the serial build (default 40);
                        the parallel build gets N/6, cuda and the passes 6N
  BPC_FUZZ_PACK=K       programs per compiled function (default 10; at most
                        6 for the parallel build and for cuda)
  BPC_FUZZ_SEED=S       another set of seeds (default 0)
e.g. `BPC_FUZZ_PROGRAMS=2000 BPC_FUZZ_SEED=7 pytest tests/test_fuzz.py` for a
deep local run.

Reproduce one program (a failure prints the command, shrinking included):
  python tests/test_fuzz.py --target cpu-serial --seed SEED [--show]
"""
import math
import os
import sys
import warnings

import numpy as np
import pytest

# conftest switches Numba's CUDA simulator on (when there is no GPU) before
# anything imports numba; importing it first keeps that true when this file
# runs as a script.
from conftest import TARGETS, HAVE_NUMBA_CUDA

import bpc
import fuzzgen

PROGRAMS = int(os.environ.get("BPC_FUZZ_PROGRAMS", "40"))
PACK = int(os.environ.get("BPC_FUZZ_PACK", "10"))
SEED = int(os.environ.get("BPC_FUZZ_SEED", "0"))
SHRINK_RUNS = int(os.environ.get("BPC_FUZZ_SHRINK_RUNS", "24"))   # runs spent shrinking a failure


class Config:
    """One compiled target to compare with the interpreter, and how to fuzz it."""

    def __init__(self, name, target, options, programs, pack, small, max_batch, seed_base):
        self.name, self.target, self.options = name, target, options
        self.pack, self.small, self.max_batch = max(1, min(pack, programs)), small, max_batch
        self.packs = max(1, math.ceil(programs / self.pack))
        self.seed_base = seed_base

    def seeds(self):
        start = self.seed_base + SEED * 100_000
        return list(range(start, start + self.packs))


# Numba compiles a whole step as one function, at ~0.05 s of CPU per loop nest
# (~1.5-2 s per program here, ~3.5 s with parallel=True); the simulated CUDA
# kernels cost next to nothing at these sizes, so cuda gets the most programs.
CONFIGS = {c.name: c for c in [
    Config("cpu-serial", "cpu", {"parallel": False}, PROGRAMS, PACK, False, 6, 10_000),
    Config("cpu-parallel", "cpu", {"parallel": True}, PROGRAMS // 6, min(PACK, 6), False, 6, 20_000),
    # The simulator runs every CUDA thread as a Python thread: tiny shapes.
    Config("cuda", "cuda", {}, PROGRAMS * 6, min(PACK, 6), True, 3, 30_000),
    # The interpreter on the graph as written (no simplification, CSE or
    # constant folding) against the optimized graph: rewrites keep values.
    Config("passes", "interpret", {"optimize": False}, PROGRAMS * 6, PACK, False, 6, 40_000),
]}

# Options the cuda packs rotate through (the simulator's launch limits, a
# tree reduction per output, tiled matrix products, the graph as written).
CUDA_OPTIONS = [{}, {"block": 4, "lane_work": 1}, {"tile": 2, "tiled_min_work": 1}, {"optimize": False}]


def options_for(config, pack_seed):
    if config.target == "cuda":
        return dict(CUDA_OPTIONS[pack_seed % len(CUDA_OPTIONS)])
    return dict(config.options)


# ----- packs ---------------------------------------------------------------------------

def pack_batches(config, pack_seed):
    """The batch size of each step, shared by every program of the pack: 2-3
    steps in 1..max_batch, or (one pack in four) 6 steps through 5 sizes,
    more than the workspaces a compiled function keeps per batch size."""
    rng = np.random.default_rng([pack_seed, 1])
    if rng.random() < 0.25:
        sizes = [int(b) for b in rng.permutation(5) + 1]
        return sizes + sizes[:1]
    return [int(rng.integers(1, config.max_batch + 1)) for _ in range(int(rng.integers(2, 4)))]


def make_pack(config, pack_seed, count=None):
    """The pack's batch sizes and programs; program i has seed
    pack_seed * 1000 + i (its input names avoid those of programs < i)."""
    batches = pack_batches(config, pack_seed)
    taken, programs = set(), []
    for i in range(config.pack if count is None else count):
        p = fuzzgen.generate(pack_seed * 1000 + i, batches, config.small, taken)
        taken |= {t.name for t in p.inputs}
        programs.append(p)
    return batches, programs


def program_of(config, seed):
    """Program `seed` exactly as its pack built it, and the pack's batch sizes."""
    batches, programs = make_pack(config, seed // 1000, seed % 1000 + 1)
    return batches, programs[-1]


def attempt(programs, config, batches, options):
    """Run the programs (one function) on the interpreter and the target and
    compare. Returns (kind, details): ("ok", None), ("refused", error),
    ("crash", error), or ("mismatch", {program index: [differences]}).

    Two runs each: every call on one function (positional arguments, params
    read after every step), then a mixed run (target, interpreter, target:
    calls by keyword, a param assigned by the user before step 1), which
    checks that a param has one value whichever function wrote it last."""
    with np.errstate(all="ignore"):
        ref_fn = fuzzgen.compile_pack(programs, "interpret")
        ref = fuzzgen.run(programs, [ref_fn], batches)
        try:
            fn = fuzzgen.compile_pack(programs, config.target, **options)
        except bpc.CompileError as e:
            return "refused", e
        except Exception as e:  # a wrong answer we cannot even read is still wrong
            return "crash", e
        try:
            got = fuzzgen.run(programs, [fn], batches)
        except Exception as e:
            return "crash", e
        bad = {}
        for i, p in enumerate(programs):
            diffs = fuzzgen.compare(p, i, ref, got)
            if diffs:
                bad[i] = diffs
        if bad:
            return "mismatch", bad
        try:
            ref = fuzzgen.run(programs, [ref_fn], batches, mixed=True)
        except Exception as e:  # the reference fails where the plain run did not
            return "crash", RuntimeError(f"the interpreter, in the mixed run (calls by keyword): "
                                         f"{type(e).__name__}: {e}")
        try:
            got = fuzzgen.run(programs, [fn, ref_fn], batches, mixed=True)
        except Exception as e:
            return "crash", RuntimeError(f"in the mixed run (target, interpreter, target): "
                                         f"{type(e).__name__}: {e}")
        for i, p in enumerate(programs):
            diffs = fuzzgen.compare(p, i, ref, got)
            if diffs:
                bad[i] = ["mixed run (target, interpreter, target; calls by keyword; the first "
                          "param assigned before step 1): " + d for d in diffs]
    return ("mismatch", bad) if bad else ("ok", None)


def failed(result):
    return result[0] in ("crash", "mismatch")


def shrink(program, config, batches, options, result):
    """Drop steps, outputs and updates while the program still fails (at
    most SHRINK_RUNS runs). Returns (program, batches, kept output indices,
    kept update indices, result); the indices refer to `program`."""
    runs = 0
    outs, ups = list(range(len(program.outputs))), list(range(len(program.updates)))

    def still_fails(o, u, b):
        nonlocal runs
        runs += 1
        r = attempt([program.subset(o, u)], config, b, options)
        return r if failed(r) else None

    if len(batches) > 1:
        r = still_fails(outs, ups, batches[:1])
        if r:
            batches, result = batches[:1], r
    for part in ("outputs", "updates"):
        i = 0
        while i < len(outs if part == "outputs" else ups) and runs < SHRINK_RUNS:
            o = [k for j, k in enumerate(outs) if part != "outputs" or j != i]
            u = [k for j, k in enumerate(ups) if part != "updates" or j != i]
            if not o:
                break
            r = still_fails(o, u, batches)
            if r:
                outs, ups, result = o, u, r
            else:
                i += 1
    return program.subset(outs, ups), batches, outs, ups, result


def minimize_pack(programs, config, batches, options):
    """Indices of a smaller set of programs that still fails together (one
    program dropped at a time, at most SHRINK_RUNS runs)."""
    keep = list(range(len(programs)))
    runs = 0
    for i in range(len(programs)):
        if runs >= SHRINK_RUNS or len(keep) <= 2:
            break
        trial = [k for k in keep if k != i]
        runs += 1
        if failed(attempt([programs[k] for k in trial], config, batches, options)):
            keep = trial
    return keep


def explain(result):
    kind, details = result
    if kind == "crash":
        return f"raised {type(details).__name__}: {details}"
    if kind == "refused":
        return f"refused: {details}"
    return "\n".join(line for diffs in details.values() for line in diffs)


def check_pack(config, pack_seed):
    batches, programs = make_pack(config, pack_seed)
    options = options_for(config, pack_seed)
    result = attempt(programs, config, batches, options)
    if result[0] == "ok":
        return
    where = (f"{config.name} (target={config.target!r}, options={options}) pack seed {pack_seed}, "
             f"{len(programs)} programs, batch sizes {batches}")
    # Which programs fail on their own? Those named by the mismatch first.
    suspects = list(result[1]) if result[0] == "mismatch" else list(range(len(programs)))
    solo = {}
    for i in suspects:
        r = attempt([programs[i]], config, batches, options)
        if failed(r):
            solo[i] = r
    if not solo and result[0] == "mismatch":
        for i in range(len(programs)):   # a program that fails only next to another
            if i not in suspects:
                r = attempt([programs[i]], config, batches, options)
                if failed(r):
                    solo[i] = r
    refused = [i for i in range(len(programs)) if i not in solo] if result[0] == "refused" else []
    if not solo:
        if result[0] == "refused":
            warnings.warn(f"{where}: the target refused the pack ({result[1]}); every program "
                          f"passed alone")
            return
        keep = minimize_pack(programs, config, batches, options)
        sub = [programs[i] for i in keep]
        pytest.fail(f"{where}: the pack fails but no program fails alone; these {len(keep)} fail together "
                    f"(programs {keep}):\n{explain(attempt(sub, config, batches, options))}\n\n"
                    + "\n\n".join(p.describe() for p in sub)
                    + f"\n\nreproduce: python tests/test_fuzz.py --target {config.name} --pack {pack_seed} "
                    f"--programs {','.join(map(str, keep))}", pytrace=False)
    smallest = min(solo, key=lambda i: programs[i].size())
    original = programs[smallest]
    program, small_batches, outs, ups, small_result = shrink(original, config, batches, options, solo[smallest])
    seeds = ", ".join(str(programs[i].seed) for i in sorted(solo))
    command = f"python tests/test_fuzz.py --target {config.name} --seed {program.seed}"
    if len(small_batches) < len(batches):
        command += f" --steps {len(small_batches)}"
    if len(outs) < len(original.outputs):
        command += f" --outputs {','.join(map(str, outs))}"
    if len(ups) < len(original.updates):
        command += f" --updates {','.join(map(str, ups)) or 'none'}"
    pytest.fail(
        f"{where}: {len(solo)} program(s) disagree with the interpreter (seeds {seeds}).\n"
        f"Smallest, program seed {program.seed}, shrunk to {len(program.outputs)} of "
        f"{len(original.outputs)} outputs, {len(program.updates)} of {len(original.updates)} updates "
        f"and batch sizes {small_batches}:\n{explain(small_result)}\n\n{program.describe()}\n\n"
        f"reproduce: {command}"
        + ("" if not refused else f"\n(the pack was refused: {result[1]})"),
        pytrace=False)


# ----- the tests -------------------------------------------------------------------------

def _ids(seeds):
    return [f"seed={s}" for s in seeds]


def _needs(target):
    if target not in TARGETS:
        pytest.skip(f"target {target!r} is not among BPC_TEST_TARGETS ({','.join(TARGETS)})")
    if target == "cuda" and not HAVE_NUMBA_CUDA:
        pytest.skip("numba-cuda is not installed")


@pytest.mark.parametrize("pack_seed", CONFIGS["cpu-serial"].seeds(), ids=_ids(CONFIGS["cpu-serial"].seeds()))
def test_cpu_serial_agrees_with_the_interpreter(pack_seed):
    _needs("cpu")
    check_pack(CONFIGS["cpu-serial"], pack_seed)


@pytest.mark.parametrize("pack_seed", CONFIGS["cpu-parallel"].seeds(), ids=_ids(CONFIGS["cpu-parallel"].seeds()))
def test_cpu_parallel_agrees_with_the_interpreter(pack_seed):
    _needs("cpu")
    check_pack(CONFIGS["cpu-parallel"], pack_seed)


@pytest.mark.parametrize("pack_seed", CONFIGS["cuda"].seeds(), ids=_ids(CONFIGS["cuda"].seeds()))
def test_cuda_agrees_with_the_interpreter(pack_seed):
    _needs("cuda")
    check_pack(CONFIGS["cuda"], pack_seed)


@pytest.mark.parametrize("pack_seed", CONFIGS["passes"].seeds(), ids=_ids(CONFIGS["passes"].seeds()))
def test_graph_passes_keep_what_programs_compute(pack_seed):
    check_pack(CONFIGS["passes"], pack_seed)


def test_generator_is_deterministic_and_covers_the_features():
    """The same seed gives the same program (names, shapes, values), and the
    default seeds exercise every feature the fuzzer promises."""
    a = fuzzgen.generate(123, [2, 1])
    b = fuzzgen.generate(123, [2, 1])
    strip = lambda text: "\n".join(line.split("#")[0] for line in text.splitlines()[1:])  # noqa: E731
    assert [t.name for t in a.inputs] == [t.name for t in b.inputs]
    assert [o.shape for o in a.outputs] == [o.shape for o in b.outputs]
    assert all(np.array_equal(x, y) for x, y in zip(a.init, b.init))
    assert all(np.array_equal(x, y) for x, y in zip(a.feeds(1, 2), b.feeds(1, 2)))
    assert len(strip(a.describe())) > 0
    seen = set()
    for config in CONFIGS.values():
        for pack_seed in config.seeds():
            for p in make_pack(config, pack_seed)[1]:
                seen |= set(p.notes)
    wanted = {"float32", "float64", "exp", "log", "tanh", "sigmoid", "relu", "maximum", "where", "mask",
              "sum", "mean", "max", "sum-keepdims", "reshape", "transpose", "T", "matmul-param", "grad",
              "output-param-view", "output-intermediate-view", "output-twice", "tricky-name",
              "update-swap", "update-chain", "update-view", "update-is-output", "update-sgd",
              "update-cross", "update-shared", "update-pure-view", "loss-xent", "fanout", "named-node",
              "int-input", "mixed-dtype", "cast", "matmul-aT", "broadcast_to", "optimizer",
              "bmm-weight", "bmm-stack", "getitem", "concat", "stack"}
    assert wanted <= seen, f"the default seeds never generate {sorted(wanted - seen)}"


# ----- reproducing one program from the command line ------------------------------------------

def main(argv=None):
    import argparse
    import ast
    parser = argparse.ArgumentParser(description="Run one fuzzer program on the interpreter and a target.")
    parser.add_argument("--seed", type=int, help="the program seed the failure names")
    parser.add_argument("--pack", type=int, help="run programs of this pack together instead")
    parser.add_argument("--programs", default=None, help="with --pack: which programs (indices)")
    parser.add_argument("--batches", default=None, help="batch sizes, one per step (comma-separated; "
                        "default: those of the program's pack)")
    parser.add_argument("--target", default="cpu-serial", choices=sorted(CONFIGS))
    parser.add_argument("--options", default=None, help="target options as a Python dict")
    parser.add_argument("--steps", type=int, default=None, help="run only the first STEPS batch sizes")
    parser.add_argument("--outputs", default=None, help="keep only these outputs (indices)")
    parser.add_argument("--updates", default=None, help="keep only these updates (indices, or 'none')")
    parser.add_argument("--show", action="store_true", help="print the program and the generated source")
    args = parser.parse_args(argv)
    config = CONFIGS[args.target]
    if args.pack is not None:
        batches, programs = make_pack(config, args.pack)
        if args.programs:
            programs = [programs[int(i)] for i in args.programs.split(",")]
        options = ast.literal_eval(args.options) if args.options else options_for(config, args.pack)
        for p in programs:
            print(p.describe() + "\n")
        result = attempt(programs, config, batches, options)
        print(f"{args.target}: {result[0]}\n{explain(result) if result[0] != 'ok' else ''}")
        return 0 if result[0] == "ok" else 1
    if args.seed is None:
        parser.error("give --seed (one program) or --pack")
    batches, program = program_of(config, args.seed)
    if args.batches:
        batches = [int(b) for b in args.batches.split(",")]
    options = ast.literal_eval(args.options) if args.options else options_for(config, args.seed // 1000)
    def indices(text):
        return None if text is None else [int(k) for k in text.split(",") if k not in ("", "none")]
    program = program.subset(indices(args.outputs), indices(args.updates))
    batches = batches[:args.steps]
    print(program.describe())
    if args.show:
        fn = bpc.function(program.inputs, program.outputs, updates=program.updates,
                          target=config.target, **options)
        print(fn.source)
    result = attempt([program], config, batches, options)
    print(f"\n{args.target}: {result[0]}\n{explain(result) if result[0] != 'ok' else ''}")
    return 0 if result[0] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
