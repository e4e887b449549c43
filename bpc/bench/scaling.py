"""Scaling study: compiled vs interpreted training-step time as the batch
grows (1 to 4096) and as the width grows (16 to 2048).

Two sweeps of the SGD training step of `bpc.bench.mlp_step`:

  batch sweep  one model (default mlp:64-64-64-10), batch 1, 2, 4, ... 4096;
               one compiled function serves every batch size (the batch
               dimension stays symbolic), so nothing recompiles
  width sweep  mlp:W-W-W-10 at batch 128 for W = 16, 32, ... 2048 (one
               compile per width)

At each point the interpreted step, the compiled step and the GEMM-only
bound (the step's matrix products alone) are timed round-robin in this
process. Per-step overhead (Python dispatch, unfused elementwise passes)
is roughly constant, GEMM work grows with the size, so the ratio
interpreted/compiled falls towards 1 as BLAS takes over. The crossovers
reported are the sizes from which on a ratio stays past a level
(interpolated on the log axis between the two measured points around it):

  blas_dominates    GEMM-only time reaches half of the INTERPRETED step:
                    beyond it compilation can at most halve the step
  compiled_gemm     GEMM-only time reaches half of the COMPILED step
  overhead_fades    interpreted/compiled falls to 1.2 (compiling buys
                    less than 20%)

    python -m bpc.bench.scaling [--threads 1] [--quick] [--out DIR]

Writes scaling.json, scaling.csv and scaling.png (log-log plots).
"""
import argparse
import time

import numpy as np

from bpc.models import load as load_model

from .harness import measure, summarize
from .machine import busy_warning, describe_threads, load_average, machine_info, set_threads, thread_info
from .report import scaling_table, write_scaling
from .steps import gemm_bound, sgd_step

BATCHES = tuple(2 ** k for k in range(13))            # 1 .. 4096
WIDTHS = tuple(2 ** k for k in range(4, 12))          # 16 .. 2048
WIDTH_BATCH = 128
QUICK_BATCHES = (1, 16, 256)
QUICK_WIDTHS = (16, 64)
THRESHOLDS = {"blas_dominates": ("gemm_share_interpreted", 0.5, "up"),
              "compiled_gemm": ("gemm_share_compiled", 0.5, "up"),
              "overhead_fades": ("ratio", 1.2, "down")}


def measure_point(sweep, x, spec, batch, compiled, interp, target, rounds, min_round_s, tick=None):
    """One point of a sweep: the interpreted, compiled and (on the CPU)
    GEMM-only steps at this batch, round-robin, and their per-round ratios."""
    X, Y = spec.sample_batch(batch)
    fns = {"interpreted": lambda: interp(X, Y), "compiled": lambda: compiled(X, Y)}
    gemm, _ = gemm_bound(compiled, batch) if target in ("cpu", "interpret") else (None, None)
    if gemm is not None:
        fns["gemm_only"] = gemm
    samples, _ = measure(fns, rounds, min_round_s, tick)
    point = {"sweep": sweep, "x": x, "model": spec.name, "batch": batch}
    for k, v in samples.items():
        point[k] = summarize(v)
    i, c = np.array(samples["interpreted"]), np.array(samples["compiled"])
    point["ratio"] = float(np.median(i / c))
    if gemm is not None:
        g = np.array(samples["gemm_only"])
        point["gemm_share_interpreted"] = float(np.median(g / i))
        point["gemm_share_compiled"] = float(np.median(g / c))
    return point


def crossover(points, key, level, direction):
    """The size from which on points[key] stays at or beyond `level` (above
    it for "up", below for "down"), interpolated linearly in log x between
    the last point that misses and the first that holds; None if the last
    point misses. Returns (x or None, how)."""
    pts = [(p["x"], p[key]) for p in points if p.get(key) is not None]
    if not pts:
        return None, "not measured"
    holds = [(v >= level) if direction == "up" else (v <= level) for _, v in pts]
    if not holds[-1]:
        return None, f"not reached up to {pts[-1][0]}"
    i = len(holds) - 1
    while i > 0 and holds[i - 1]:
        i -= 1
    if i == 0:
        return float(pts[0][0]), f"already at the smallest size ({pts[0][0]})"
    (x0, v0), (x1, v1) = pts[i - 1], pts[i]
    f = (level - v0) / (v1 - v0) if v1 != v0 else 1.0
    return float(np.exp(np.log(x0) + f * (np.log(x1) - np.log(x0)))), f"between {x0} and {x1}"


def crossovers(points):
    """Every crossover of THRESHOLDS over one sweep's points."""
    out = {}
    for name, (key, level, direction) in THRESHOLDS.items():
        x, how = crossover(points, key, level, direction)
        out[name] = {"x": x, "where": how, "metric": key, "level": level}
    return out


def _sweep_batches(report, spec, batches, target, rounds, min_round_s, bar, tick):
    t = time.perf_counter()
    compiled, _ = sgd_step(spec, target)
    interp, _ = sgd_step(spec, "interpret")
    report["compile_s"]["batch"] = time.perf_counter() - t
    for b in batches:
        if bar is not None:
            bar.set_description(f"scaling: batch {b}")
        report["points"].append(measure_point("batch", b, spec, b, compiled, interp, target, rounds,
                                              min_round_s, tick))


def _sweep_widths(report, spec, widths, width_batch, target, rounds, min_round_s, bar, tick):
    classes = spec.layers[-1] if spec.layers else 10
    for w in widths:
        if bar is not None:
            bar.set_description(f"scaling: width {w} (compiling)")
        wspec = load_model(f"mlp:{w}-{w}-{w}-{classes}")
        t = time.perf_counter()
        compiled, _ = sgd_step(wspec, target)
        interp, _ = sgd_step(wspec, "interpret")
        X, Y = wspec.sample_batch(width_batch)
        compiled(X, Y)
        report["compile_s"][f"width {w}"] = time.perf_counter() - t
        if bar is not None:
            bar.set_description(f"scaling: width {w}")
        report["points"].append(measure_point("width", w, wspec, width_batch, compiled, interp, target,
                                              rounds, min_round_s, tick))


def run(model="mlp:64-64-64-10", batches=BATCHES, widths=WIDTHS, width_batch=WIDTH_BATCH, target="cpu",
        threads=None, rounds=7, min_round_s=0.03, out_dir=None, progress=True, echo=print):
    """Both sweeps; returns the report and writes scaling.json/.csv/.png."""
    set_threads(threads)
    spec = load_model(model)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=rounds * (len(batches) + len(widths)), unit="round", desc="scaling", disable=None,
                   leave=False)
    tick = bar.update if bar is not None else None
    report = {"benchmark": "scaling", "machine": machine_info(), "target": target,
              "settings": {"rounds": rounds, "min_round_s": min_round_s, "threads": threads,
                           "width_batch": width_batch, "model": spec.name},
              "load_before": load_average(), "points": [], "notes": [], "compile_s": {}}
    try:
        if batches:
            _sweep_batches(report, spec, batches, target, rounds, min_round_s, bar, tick)
        _sweep_widths(report, spec, widths, width_batch, target, rounds, min_round_s, bar, tick)
    finally:
        if bar is not None:
            bar.close()
    report["threads"] = thread_info()
    report["load_after"] = load_average()
    busy = busy_warning(threads, [report["load_before"], report["load_after"]])
    if busy:
        report["notes"].append(busy)
    report["crossovers"] = {s: crossovers([p for p in report["points"] if p["sweep"] == s])
                            for s in ("batch", "width")}
    echo(scaling_table(report))
    echo(f"threads: {describe_threads(report['threads'])}")
    for n in report["notes"]:
        echo(f"note: {n}")
    if out_dir:
        echo("wrote " + ", ".join(write_scaling(report, out_dir).values()))
    return report


def parse_sizes(text, what):
    """'1,16,256' -> (1, 16, 256); ValueError naming `what` otherwise."""
    try:
        sizes = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{what}: expected comma-separated positive integers, got {text!r}") from None
    if any(v < 1 for v in sizes):
        raise ValueError(f"{what}: sizes must be positive, got {text!r}")
    return sizes


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mlp:64-64-64-10", help="model of the batch sweep")
    ap.add_argument("--batches", default=",".join(map(str, BATCHES)), help="batch sizes (comma-separated)")
    ap.add_argument("--widths", default=",".join(map(str, WIDTHS)), help="widths (comma-separated; '' for none)")
    ap.add_argument("--width-batch", type=int, default=WIDTH_BATCH, help="batch size of the width sweep")
    ap.add_argument("--target", default="cpu", choices=["cpu", "cuda", "interpret"])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--min-round-s", type=float, default=0.03)
    ap.add_argument("--quick", action="store_true", help="three batch sizes, two widths, three short rounds")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--out", default="bench_results", metavar="DIR")
    args = ap.parse_args(argv)
    try:
        batches, widths = parse_sizes(args.batches, "--batches"), parse_sizes(args.widths, "--widths")
    except ValueError as e:
        ap.error(str(e))
    if args.quick:
        batches, widths, args.rounds, args.min_round_s = QUICK_BATCHES, QUICK_WIDTHS, 3, 0.005
    run(args.model, batches, widths, args.width_batch, args.target, args.threads, args.rounds, args.min_round_s,
        args.out, not args.no_progress)


if __name__ == "__main__":
    main()
