"""Scaling study: compiled vs interpreted training-step time as the batch
grows (1 to 4096) and as the width grows (16 to 2048).

Two sweeps of the SGD training step of bench/mlp_step.py:

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

    python bench/scaling.py [--threads 1] [--quick] [--out DIR]

Writes scaling.json, scaling.csv and scaling.png (log-log plots).
"""
import argparse
import csv
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mlp_step  # noqa: E402  (the step, timing and GEMM bound are shared)
from bpc.models import load as load_model, mlp  # noqa: E402

BATCHES = tuple(2 ** k for k in range(13))            # 1 .. 4096
WIDTHS = tuple(2 ** k for k in range(4, 12))          # 16 .. 2048
WIDTH_BATCH = 128
QUICK_BATCHES = (1, 16, 256)
QUICK_WIDTHS = (16, 64)
THRESHOLDS = {"blas_dominates": ("gemm_share_interpreted", 0.5, "up"),
              "compiled_gemm": ("gemm_share_compiled", 0.5, "up"),
              "overhead_fades": ("ratio", 1.2, "down")}


def measure_point(sweep, x, spec, batch, compiled, interp, target, rounds, min_round_s, tick=None):
    X, Y = spec.sample_batch(batch)
    fns = {"interpreted": lambda: interp(X, Y), "compiled": lambda: compiled(X, Y)}
    gemm, _ = mlp_step.gemm_bound(compiled, batch) if target in ("cpu", "interpret") else (None, None)
    if gemm is not None:
        fns["gemm_only"] = gemm
    samples, _ = mlp_step.measure(fns, rounds, min_round_s, tick)
    point = {"sweep": sweep, "x": x, "model": spec.name, "batch": batch}
    for k, v in samples.items():
        point[k] = mlp_step.summarize(v)
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
    out = {}
    for name, (key, level, direction) in THRESHOLDS.items():
        x, how = crossover(points, key, level, direction)
        out[name] = {"x": x, "where": how, "metric": key, "level": level}
    return out


def run(model="mlp:64-64-64-10", batches=BATCHES, widths=WIDTHS, width_batch=WIDTH_BATCH, target="cpu",
        threads=None, rounds=7, min_round_s=0.03, out_dir=None, progress=True, echo=print):
    """Both sweeps; returns the report and writes scaling.json/.csv/.png."""
    mlp_step.set_threads(threads)
    spec = load_model(model)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=rounds * (len(batches) + len(widths)), unit="round", desc="scaling", disable=None,
                   leave=False)
    tick = bar.update if bar is not None else None
    report = {"benchmark": "scaling", "machine": mlp_step.machine_info(), "target": target,
              "settings": {"rounds": rounds, "min_round_s": min_round_s, "threads": threads,
                           "width_batch": width_batch, "model": spec.name},
              "load_before": mlp_step.load_average(), "points": [], "notes": [], "compile_s": {}}
    try:
        if batches:
            t = time.perf_counter()
            compiled, _ = mlp_step.sgd_step(spec, target)
            interp, _ = mlp_step.sgd_step(spec, "interpret")
            report["compile_s"]["batch"] = time.perf_counter() - t
            for b in batches:
                if bar is not None:
                    bar.set_description(f"scaling: batch {b}")
                report["points"].append(measure_point("batch", b, spec, b, compiled, interp, target, rounds,
                                                      min_round_s, tick))
        for w in widths:
            if bar is not None:
                bar.set_description(f"scaling: width {w} (compiling)")
            wspec = mlp((w, w, w, spec.layers[-1] if spec.layers else 10))
            t = time.perf_counter()
            compiled, _ = mlp_step.sgd_step(wspec, target)
            interp, _ = mlp_step.sgd_step(wspec, "interpret")
            X, Y = wspec.sample_batch(width_batch)
            compiled(X, Y)
            report["compile_s"][f"width {w}"] = time.perf_counter() - t
            if bar is not None:
                bar.set_description(f"scaling: width {w}")
            report["points"].append(measure_point("width", w, wspec, width_batch, compiled, interp, target,
                                                  rounds, min_round_s, tick))
    finally:
        if bar is not None:
            bar.close()
    report["threads"] = mlp_step.thread_info()
    report["load_after"] = mlp_step.load_average()
    busy = mlp_step.busy_warning(threads, [report["load_before"], report["load_after"]])
    if busy:
        report["notes"].append(busy)
    report["crossovers"] = {s: crossovers([p for p in report["points"] if p["sweep"] == s])
                            for s in ("batch", "width")}
    echo(format_table(report))
    echo(f"threads: {mlp_step.describe_threads(report['threads'])}")
    for n in report["notes"]:
        echo(f"note: {n}")
    if out_dir:
        echo("wrote " + ", ".join(write(report, out_dir).values()))
    return report


def format_table(report):
    lines = []
    for sweep, label in (("batch", "batch size"), ("width", f"width (batch {report['settings']['width_batch']})")):
        pts = [p for p in report["points"] if p["sweep"] == sweep]
        if not pts:
            continue
        title = f"{report['settings']['model']}, by {label}" if sweep == "batch" else f"mlp:W-W-W-10, by {label}"
        lines.append(title)
        lines.append(f"{'x':>6}  {'interpreted':>14}  {'compiled':>14}  {'GEMM-only':>14}  {'interp/comp':>11}  "
                     f"{'GEMM/interp':>11}  {'GEMM/comp':>9}")
        for p in pts:
            share_i = p.get("gemm_share_interpreted")
            share_c = p.get("gemm_share_compiled")
            lines.append(f"{p['x']:>6}  {mlp_step.fmt_stat(p['interpreted']):>14}  "
                         f"{mlp_step.fmt_stat(p['compiled']):>14}  {mlp_step.fmt_stat(p.get('gemm_only')):>14}  "
                         f"{p['ratio']:>10.2f}x  {'-' if share_i is None else f'{share_i:.2f}':>11}  "
                         f"{'-' if share_c is None else f'{share_c:.2f}':>9}")
        for name, c in report["crossovers"][sweep].items():
            x = "-" if c["x"] is None else f"{c['x']:.0f}"
            lines.append(f"  crossover {name} ({c['metric']} {'>=' if 'share' in c['metric'] else '<='} "
                         f"{c['level']}): {x} ({c['where']})")
        lines.append("")
    return "\n".join(lines).rstrip()


def write(report, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, "scaling.json"), "csv": os.path.join(out_dir, "scaling.csv")}
    with open(paths["json"], "w") as f:
        json.dump(report, f, indent=1)
    fields = ["sweep", "x", "model", "batch"] + [f"{c}_{s}" for c in ("interpreted", "compiled", "gemm_only")
                                                 for s in ("median_s", "q1_s", "q3_s")] + [
        "ratio", "gemm_share_interpreted", "gemm_share_compiled"]
    with open(paths["csv"], "w", newline="") as f:
        w = csv.DictWriter(f, fields)
        w.writeheader()
        for p in report["points"]:
            row = {k: p.get(k, "") for k in ("sweep", "x", "model", "batch", "ratio", "gemm_share_interpreted",
                                             "gemm_share_compiled")}
            for c in ("interpreted", "compiled", "gemm_only"):
                st = p.get(c)
                for s, key in (("median_s", "median"), ("q1_s", "q1"), ("q3_s", "q3")):
                    row[f"{c}_{s}"] = st[key] if st else ""
            w.writerow(row)
    try:
        paths["png"] = plot(report, os.path.join(out_dir, "scaling.png"))
    except ImportError:
        report["notes"].append("no PNG: matplotlib is not installed")
    return paths


def plot(report, path):
    """Step time (log-log) and ratios (log x) against batch size and width."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import ScalarFormatter
    sweeps = [s for s in ("batch", "width") if any(p["sweep"] == s for p in report["points"])]
    fig = Figure(figsize=(6.0 * len(sweeps), 7.5), layout="constrained")
    axes = np.array(fig.subplots(2, len(sweeps), squeeze=False))
    styles = {"interpreted": ("tab:red", "o"), "compiled": ("tab:blue", "s"), "gemm_only": ("tab:gray", "^")}
    for j, sweep in enumerate(sweeps):
        pts = [p for p in report["points"] if p["sweep"] == sweep]
        xs = np.array([p["x"] for p in pts])
        top, bottom = axes[0, j], axes[1, j]
        for key, (color, marker) in styles.items():
            if not all(key in p for p in pts):
                continue
            med = np.array([p[key]["median"] for p in pts])
            top.plot(xs, med, marker=marker, color=color, label=key.replace("_", "-"))
            top.fill_between(xs, [p[key]["q1"] for p in pts], [p[key]["q3"] for p in pts], color=color, alpha=0.2)
        top.set_xscale("log", base=2)
        top.set_yscale("log")
        top.set_ylabel("seconds per training step")
        what = (f"{report['settings']['model']}: batch size" if sweep == "batch"
                else f"mlp:W-W-W-10, batch {report['settings']['width_batch']}: width W")
        top.set_title(what)
        top.grid(alpha=0.3, which="both")
        top.legend(fontsize="small")
        bottom.plot(xs, [p["ratio"] for p in pts], marker="o", color="tab:purple", label="interpreted / compiled")
        if all("gemm_share_interpreted" in p for p in pts):
            bottom.plot(xs, [p["gemm_share_interpreted"] for p in pts], marker="^", color="tab:gray",
                        label="GEMM / interpreted")
            bottom.plot(xs, [p["gemm_share_compiled"] for p in pts], marker="v", color="tab:green",
                        label="GEMM / compiled")
        bottom.axhline(1.0, color="black", lw=0.8)
        for name, c in report["crossovers"][sweep].items():
            if c["x"] is not None:
                bottom.axvline(c["x"], ls="--", lw=0.8, color="tab:orange")
                bottom.annotate(name, (c["x"], 1.0), rotation=90,
                                fontsize="x-small", va="bottom", ha="right")
        bottom.set_xscale("log", base=2)
        bottom.set_yscale("log")
        for ax in (top, bottom):
            ax.xaxis.set_major_formatter(ScalarFormatter())
        bottom.set_xlabel("batch size" if sweep == "batch" else "width")
        bottom.set_ylabel("ratio")
        bottom.grid(alpha=0.3, which="both")
        bottom.legend(fontsize="small")
    fig.suptitle(f"bpc scaling ({report['target']}, {report['machine']['cores']} cores, "
                 f"{report['threads']['numba_threads']} numba threads)")
    fig.savefig(path, dpi=100)
    return path


def parse_sizes(text, what):
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
