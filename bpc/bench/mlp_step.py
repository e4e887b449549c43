"""Training-step benchmark: one SGD step of an MLP, interpreted vs compiled.

For each workload (an MLP with ReLU, mean softmax cross-entropy, plain SGD
updates `p - lr * g` written with `bpc.grad`, float32) it measures, in one
run:

  interpreted   bpc's `interpret` target (NumPy, op by op), per step
  compiled      the compiled target (`cpu` by default, or `cuda`), per step
  ratio         interpreted / compiled, paired round by round
  cold compile  build + first call in a fresh process with an empty cache
                (BPC_CACHE_DIR set to a new temporary folder)
  warm start    a fresh process with that cache populated: from the
                process's first statement (imports included) to the end of
                the first call
  GEMM-only     the step's matrix products alone: the same np.dot calls
                (same shapes, same transposed views) in one njit function
                with preallocated outputs, the same BLAS (SciPy's OpenBLAS)
  numpy/torch/jax  a hand-written NumPy step, PyTorch eager and JAX jit on
                the same step, each in its own process, when installed

Times are per step: each measurement runs `rounds` rounds of enough calls to
last `min_round_s`; the reported value is the median over rounds with the
quartiles as the spread. bpc's interpreted, compiled and GEMM-only steps
run round-robin (one round of each in turn) so that load from other
processes hits them alike; their ratios come from the same rounds.

    python -m bpc.bench.mlp_step                       # tiny, medium, large
    python -m bpc.bench.mlp_step --model tiny --quick  # a short run
    bpc bench ...                                      # the same, plus the scaling study

Results: a table on stdout; JSON, CSV and a PNG in --out.
"""
import argparse
import datetime
import shutil
import tempfile

import numpy as np

from bpc.models import WORKLOADS, ModelError, load as load_model

from . import references
from .harness import child_env, run_child, summarize
from .machine import BackgroundLoad, busy_warning, describe_threads, load_average, machine_info, thread_info
from .report import format_table, write_results
from .steps import LR

DEFAULT_WORKLOADS = ("tiny", "medium", "large")
COMPARE = references.NAMES

__all__ = ["run", "bench_workload", "resolve_workloads", "add_arguments", "check_args", "parse_compare",
           "main", "COMPARE", "DEFAULT_WORKLOADS"]


def resolve_workloads(models, batch_size=None):
    """[(name, model, batch)] from workload names, mlp:... names or model files."""
    out = []
    for m in models or DEFAULT_WORKLOADS:
        if m in WORKLOADS:
            model, batch = WORKLOADS[m]
            out.append((m, model, batch_size or batch))
        else:
            spec = load_model(m)    # fails early and clearly on a bad name or file
            known = {v[0]: k for k, v in WORKLOADS.items()}
            name = known.get(spec.name, spec.name)
            batch = batch_size or (WORKLOADS[name][1] if name in WORKLOADS else 32)
            out.append((name, m, batch))
    return out


# ----- one workload -------------------------------------------------------------------------

def _bpc_processes(res, model, batch, target, threads, rounds, min_round_s, startup, note, tick):
    """The cold-compile process (with `startup`) and the measuring process
    (warm start, then interpreted, compiled and GEMM-only rounds), on one
    fresh cache; records their startup parts in `res` and returns the
    measuring process's result."""
    common = ["--model", model, "--batch", str(batch), "--target", target] + (
        ["--threads", str(threads)] if threads else [])
    cache = tempfile.mkdtemp(prefix="bpc-bench-cache-")
    try:
        if startup:
            note(f"{res['workload']}: cold compile")
            cold, cold_wall = run_child("startup", common, model, child_env(threads, cache))
            res["cold"] = dict(cold["startup"], process_s=cold_wall)
            res["cold_compile_s"] = cold["startup"]["build_s"] + cold["startup"]["first_call_s"]
            if tick:
                tick()
        note(f"{res['workload']}: {'warm start + ' if startup else ''}step times")
        out, _ = run_child("measure", common + ["--rounds", str(rounds), "--min-round-s", str(min_round_s)],
                           model, child_env(threads, cache), tick)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    if startup:
        res["warm"] = dict(out["startup"], process_s=None)
        res["warm_start_s"] = out["startup"]["since_start_s"]
    else:
        res["cold"] = dict(out["startup"])
        res["cold_compile_s"] = out["startup"]["build_s"] + out["startup"]["first_call_s"]
        res["warm_start_s"] = None
        res["notes"].append("warm start not measured (--no-startup); cold compile from the measuring process")
    return out


def _record_steps(res, out):
    """Summaries and per-round ratios of the measuring process's samples."""
    samples = out["samples"]
    for k, v in samples.items():
        res["results"][k] = dict(summarize(v), calls_per_round=out["calls_per_round"][k])
    res["ratio"] = summarize(np.array(samples["interpreted"]) / np.array(samples["compiled"]))
    if "gemm_only" in samples:
        res["compiled_over_gemm"] = summarize(np.array(samples["compiled"]) / np.array(samples["gemm_only"]))
        res["gemm_products"] = out["gemm_products"]
    res["kernels"] = out["kernels"]
    res["threads"] = out["threads"]
    res["notes"] += out["notes"]


def _compare(res, spec, batch, threads, compare, rounds, min_round_s, note, tick):
    """Each reference framework's step in its own process; one missing or
    failing is a note, never a lost run."""
    for fw in compare:
        note(f"{res['workload']}: {fw}")
        builtin = spec.source == "builtin"
        lenet = builtin and spec.name == "lenet"
        lstm = builtin and spec.name.startswith("lstm:")
        if lenet and fw not in references.LENET_STEPS:
            res["notes"].append(f"{fw} skipped: no hand-written {fw} LeNet")
        elif lstm and fw not in references.LSTM_STEPS:
            res["notes"].append(f"{fw} skipped: no hand-written {fw} LSTM")
        elif not (lenet or lstm) and (not spec.layers or spec.activation != "relu"
                                      or spec.loss != "softmax_cross_entropy"):
            res["notes"].append(f"{fw} skipped: comparisons are written for the built-in ReLU MLPs, lenet "
                                "and lstm only")
        elif not references.available(fw):
            res["notes"].append(f"{fw} skipped: not installed")
        else:
            layers = "lenet" if lenet else spec.name if lstm else "-".join(map(str, spec.layers))
            child = ["--layers", layers, "--batch", str(batch), "--rounds", str(rounds),
                     "--min-round-s", str(min_round_s)] + (["--threads", str(threads)] if threads else [])
            try:
                env = references.environment(fw, child_env(threads), threads)
                got, _ = run_child(fw, child, layers, env, tick)
                res["results"][fw] = dict(summarize(got["samples"]), calls_per_round=got["calls_per_round"],
                                          threads=got["threads"])
                continue
            except Exception as e:   # a broken install must not lose the rest of the run
                res["notes"].append(f"{fw} failed: {e}")
        if tick:
            tick(rounds)


def bench_workload(name, model, batch, target="cpu", threads=None, compare=COMPARE, rounds=15,
                   min_round_s=0.05, startup=True, progress=None):
    """Measure one workload (each part in a fresh process); returns its
    result dict."""
    note = progress.set_description if progress is not None else (lambda s: None)
    tick = progress.update if progress is not None else None
    spec = load_model(model)
    res = {"workload": name, "model": spec.name, "layers": list(spec.layers) if spec.layers else None,
           "batch": batch, "target": target, "dtype": spec.dtype, "lr": LR, "results": {}, "notes": [],
           "load_before": load_average()}
    out = _bpc_processes(res, model, batch, target, threads, rounds, min_round_s, startup, note, tick)
    _record_steps(res, out)
    _compare(res, spec, batch, threads, compare, rounds, min_round_s, note, tick)
    res["load_after"] = load_average()
    return res


# ----- the run ------------------------------------------------------------------------------

def slower_than_interpreted(report, factor=1.0):
    """[(workload, interpreted/compiled ratio)] of the workloads whose
    compiled step (median ratio over rounds) is more than `factor` times
    slower than the interpreted one."""
    return [(r["workload"], r["ratio"]["median"]) for r in report["workloads"]
            if r.get("ratio") and r["ratio"]["median"] * factor < 1.0]


def slowdown_warnings(report):
    """A warning per workload whose compiled step ran slower than its
    interpreted one."""
    return [f"the compiled step of {name} ran slower than the interpreted one ({1 / ratio:.2f}x the time): "
            "compiled code should never lose; look at the thread line above (other processes on the cores, "
            "several BLAS pools) and at Function.profile()" for name, ratio in slower_than_interpreted(report)]


def _echo_report(report, threads, echo):
    report["notes"].append("per-step times: median over rounds, spread = half the interquartile range; "
                           "the machine may be shared, so compare ratios from one run")
    loaded = busy_warning(threads, [r["load_before"] for r in report["workloads"]])
    if report["settings"].get("busy"):
        echo(f"note: {report['settings']['busy']} busy process(es) spun on the cores during the run (--busy)")
    elif loaded:
        report["notes"].append(loaded)
        echo(f"note: {loaded}")
    echo(format_table(report["workloads"]))
    echo(f"threads: {describe_threads(report['threads'])}")
    for r in report["workloads"]:
        for n in r["notes"]:
            echo(f"note ({r['workload']}): {n}")
    for warning in slowdown_warnings(report):
        report["notes"].append("warning: " + warning)
        echo(f"warning: {warning}")


def run(models=None, batch_size=None, target="cpu", threads=None, compare=COMPARE, rounds=15,
        min_round_s=0.05, startup=True, out_dir=None, progress=True, echo=print, busy=0):
    """Run the benchmark; returns the report dict (and writes files to out_dir).
    busy: processes kept spinning (one core each) during the measurements."""
    workloads = resolve_workloads(models, batch_size)
    compare = [c for c in compare if c]
    steps_per = (1 if startup else 0) + rounds * (1 + len(compare))
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=steps_per * len(workloads), unit="step", desc="bench", disable=None, leave=False)
    report = {"benchmark": "mlp_step", "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "machine": machine_info(), "settings": {"target": target, "threads": threads, "rounds": rounds,
                                                     "min_round_s": min_round_s, "compare": compare,
                                                     "lr": LR, "optimizer": "sgd", "busy": busy},
              "workloads": [], "notes": []}
    try:
        with BackgroundLoad(busy):
            for name, model, batch in workloads:
                report["workloads"].append(bench_workload(name, model, batch, target, threads, compare, rounds,
                                                          min_round_s, startup, bar))
    finally:
        if bar is not None:
            bar.close()
    # Thread setup as the measuring processes saw it (the same for every workload).
    report["threads"] = report["workloads"][0]["threads"] if report["workloads"] else thread_info()
    _echo_report(report, threads, echo)
    if out_dir:
        paths = write_results(report, out_dir)
        echo("wrote " + ", ".join(paths.values()))
    return report


# ----- command line ---------------------------------------------------------------------------

def add_arguments(ap):
    ap.add_argument("--model", action="append", metavar="MODEL",
                    help="workload name (tiny, medium, large), mlp:... or a model file; repeatable "
                         "(default: tiny, medium and large)")
    ap.add_argument("--batch-size", type=int, default=None, help="batch size (default: the workload's)")
    ap.add_argument("--target", default="cpu", choices=["cpu", "cuda", "interpret"],
                    help="the compiled side (default cpu; interpret only to test the harness)")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for bpc's parallel loops and BLAS (and torch/numpy); default: Numba's")
    ap.add_argument("--compare", default=",".join(COMPARE),
                    help="comparison steps run when installed: numpy,torch,jax or none (default: all)")
    ap.add_argument("--rounds", type=int, default=15, help="timed rounds per measurement (default 15)")
    ap.add_argument("--min-round-s", type=float, default=0.05, help="minimum seconds per round (default 0.05)")
    ap.add_argument("--quick", action="store_true", help="a very short run (3 rounds of >= 5 ms)")
    ap.add_argument("--no-startup", action="store_true", help="skip the cold-compile and warm-start processes")
    ap.add_argument("--busy", type=int, default=0, metavar="N",
                    help="keep N processes spinning during the run, one core each (a shared machine)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    ap.add_argument("--out", default=None, metavar="DIR", help="folder for mlp_step.json/.csv/.png")


def parse_compare(text):
    """--compare: a list of reference names, [] for 'none'."""
    if text.strip().lower() in ("", "none"):
        return []
    items = [c.strip().lower() for c in text.split(",") if c.strip()]
    bad = [c for c in items if c not in COMPARE]
    if bad:
        raise ValueError(f"--compare: unknown {', '.join(bad)}; choose from {', '.join(COMPARE)} or none")
    return items


def check_args(args):
    """Validate parsed options (and apply --quick); returns the --compare
    list. Raises ValueError with a clear message."""
    for name in ("batch_size", "threads", "rounds"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {v}")
    if args.min_round_s <= 0:
        raise ValueError(f"--min-round-s must be positive, got {args.min_round_s}")
    if args.quick:
        args.rounds, args.min_round_s = min(args.rounds, 3), min(args.min_round_s, 0.005)
    return parse_compare(args.compare)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    args = ap.parse_args(argv)
    try:
        compare = check_args(args)
        resolve_workloads(args.model, args.batch_size)
    except (ValueError, ModelError) as e:
        ap.error(str(e))
    run(args.model, args.batch_size, args.target, args.threads, compare, args.rounds, args.min_round_s,
        not args.no_startup, args.out or "bench_results", not args.no_progress, busy=args.busy)


if __name__ == "__main__":
    main()
