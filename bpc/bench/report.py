"""What the benchmarks print and write: tables, JSON, CSV and PNG plots.

`bpc.bench.mlp_step` writes mlp_step.json/.csv/.png, `bpc.bench.scaling`
scaling.json/.csv/.png (bench/README.md describes every field). The plots
need matplotlib; without it the report gets a note instead of the PNG.
"""
import csv
import json
import os

import numpy as np

# ----- numbers ------------------------------------------------------------------------------


def fmt_time(s):
    """Seconds as µs, ms or s with three significant figures; '-' for None."""
    if s is None:
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.1f} µs"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def fmt_stat(st):
    """'31.0 µs ±3%': median and half the interquartile range."""
    if not st:
        return "-"
    spread = (st["q3"] - st["q1"]) / 2 / st["median"] * 100 if st["median"] else 0.0
    return f"{fmt_time(st['median'])} ±{spread:.0f}%"


def _write_json_csv(report, out_dir, stem, fields, rows):
    """stem.json (the whole report) and stem.csv (`rows` under `fields`) in
    out_dir; returns {"json": path, "csv": path}."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, stem + ".json"), "csv": os.path.join(out_dir, stem + ".csv")}
    with open(paths["json"], "w") as f:
        json.dump(report, f, indent=1)
    with open(paths["csv"], "w", newline="") as f:
        w = csv.DictWriter(f, fields)
        w.writeheader()
        w.writerows(rows)
    return paths


def _stat_columns(row, prefix, st):
    for s, key in (("median_s", "median"), ("q1_s", "q1"), ("q3_s", "q3")):
        row[f"{prefix}_{s}"] = st[key] if st else ""


# ----- the training-step benchmark (mlp_step) ---------------------------------------------------

COLUMNS = ["interpreted", "compiled", "gemm_only", "numpy", "torch", "jax"]

CSV_FIELDS = ["workload", "model", "batch", "target", "threads"] + [
    f"{c}_{s}" for c in COLUMNS for s in ("median_s", "q1_s", "q3_s")] + [
    "ratio_median", "ratio_q1", "ratio_q3", "compiled_over_gemm_median", "cold_compile_s", "warm_start_s",
    "warm_process_s"]


def format_table(results):
    """The workloads as a text table, one row each."""
    head = ["workload", "model", "batch", "interpreted", "compiled", "interp/comp", "cold compile",
            "warm start", "GEMM-only", "comp/GEMM", "numpy", "torch", "jax"]
    rows = []
    for r in results:
        R = r["results"]
        ratio = r.get("ratio")
        cg = r.get("compiled_over_gemm")
        rows.append([r["workload"], r["model"], str(r["batch"]), fmt_stat(R.get("interpreted")),
                     fmt_stat(R.get("compiled")),
                     f"{ratio['median']:.2f}x" if ratio else "-",
                     fmt_time(r.get("cold_compile_s")), fmt_time(r.get("warm_start_s")),
                     fmt_stat(R.get("gemm_only")), f"{cg['median']:.2f}x" if cg else "-",
                     fmt_stat(R.get("numpy")), fmt_stat(R.get("torch")), fmt_stat(R.get("jax"))])
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def csv_rows(results):
    """One CSV row (a dict over CSV_FIELDS) per workload."""
    for r in results:
        row = {"workload": r["workload"], "model": r["model"], "batch": r["batch"], "target": r["target"],
               "threads": r.get("threads", {}).get("numba_threads")}
        for c in COLUMNS:
            _stat_columns(row, c, r["results"].get(c))
        for s in ("median", "q1", "q3"):
            row[f"ratio_{s}"] = r["ratio"][s] if r.get("ratio") else ""
        row["compiled_over_gemm_median"] = r["compiled_over_gemm"]["median"] if r.get("compiled_over_gemm") else ""
        for k in ("cold_compile_s", "warm_start_s", "warm_process_s"):
            row[k] = "" if r.get(k) is None else r[k]
        yield row


def plot(results, path):
    """Bars of step time per workload and method (log scale)."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(2.8 + 2.6 * len(results), 4.0), layout="constrained")
    ax = fig.subplots()
    present = [c for c in COLUMNS if any(c in r["results"] for r in results)]
    width = 0.8 / max(len(present), 1)
    for j, c in enumerate(present):
        xs = [i + (j - (len(present) - 1) / 2) * width for i, r in enumerate(results) if c in r["results"]]
        st = [r["results"][c] for r in results if c in r["results"]]
        med = np.array([s["median"] for s in st])
        err = np.array([[s["median"] - s["q1"] for s in st], [s["q3"] - s["median"] for s in st]])
        ax.bar(xs, med, width, yerr=err, label=c.replace("_", "-"), capsize=2)
    ax.set_xticks(range(len(results)), [f"{r['workload']}\n{r['model']}\nbatch {r['batch']}" for r in results],
                  fontsize="small")
    ax.set_yscale("log")
    ax.set_ylabel("seconds per training step (median, IQR)")
    ax.set_title("bpc training step: interpreted vs compiled")
    ax.legend(fontsize="small")
    ax.grid(axis="y", alpha=0.3, which="both")
    fig.savefig(path, dpi=100)
    return path


def write_results(report, out_dir, stem="mlp_step"):
    """mlp_step.json, .csv and .png in out_dir; returns {kind: path}."""
    paths = _write_json_csv(report, out_dir, stem, CSV_FIELDS, csv_rows(report["workloads"]))
    try:
        paths["png"] = plot(report["workloads"], os.path.join(out_dir, stem + ".png"))
    except ImportError:
        report["notes"].append("no PNG: matplotlib is not installed")
    return paths


# ----- the scaling study -------------------------------------------------------------------------

SCALING_FIELDS = ["sweep", "x", "model", "batch"] + [
    f"{c}_{s}" for c in ("interpreted", "compiled", "gemm_only") for s in ("median_s", "q1_s", "q3_s")] + [
    "ratio", "gemm_share_interpreted", "gemm_share_compiled"]


def scaling_table(report):
    """Each sweep as a text table, followed by its crossovers."""
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
            lines.append(f"{p['x']:>6}  {fmt_stat(p['interpreted']):>14}  "
                         f"{fmt_stat(p['compiled']):>14}  {fmt_stat(p.get('gemm_only')):>14}  "
                         f"{p['ratio']:>10.2f}x  {'-' if share_i is None else f'{share_i:.2f}':>11}  "
                         f"{'-' if share_c is None else f'{share_c:.2f}':>9}")
        for name, c in report["crossovers"][sweep].items():
            x = "-" if c["x"] is None else f"{c['x']:.0f}"
            lines.append(f"  crossover {name} ({c['metric']} {'>=' if 'share' in c['metric'] else '<='} "
                         f"{c['level']}): {x} ({c['where']})")
        lines.append("")
    return "\n".join(lines).rstrip()


def _scaling_rows(points):
    for p in points:
        row = {k: p.get(k, "") for k in ("sweep", "x", "model", "batch", "ratio", "gemm_share_interpreted",
                                         "gemm_share_compiled")}
        for c in ("interpreted", "compiled", "gemm_only"):
            _stat_columns(row, c, p.get(c))
        yield row


def write_scaling(report, out_dir):
    """scaling.json, .csv and .png in out_dir; returns {kind: path}."""
    paths = _write_json_csv(report, out_dir, "scaling", SCALING_FIELDS, _scaling_rows(report["points"]))
    try:
        paths["png"] = plot_scaling(report, os.path.join(out_dir, "scaling.png"))
    except ImportError:
        report["notes"].append("no PNG: matplotlib is not installed")
    return paths


def _plot_times(ax, pts, xs):
    styles = {"interpreted": ("tab:red", "o"), "compiled": ("tab:blue", "s"), "gemm_only": ("tab:gray", "^")}
    for key, (color, marker) in styles.items():
        if not all(key in p for p in pts):
            continue
        med = np.array([p[key]["median"] for p in pts])
        ax.plot(xs, med, marker=marker, color=color, label=key.replace("_", "-"))
        ax.fill_between(xs, [p[key]["q1"] for p in pts], [p[key]["q3"] for p in pts], color=color, alpha=0.2)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_ylabel("seconds per training step")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")


def _plot_ratios(ax, pts, xs, crossings):
    ax.plot(xs, [p["ratio"] for p in pts], marker="o", color="tab:purple", label="interpreted / compiled")
    if all("gemm_share_interpreted" in p for p in pts):
        ax.plot(xs, [p["gemm_share_interpreted"] for p in pts], marker="^", color="tab:gray",
                label="GEMM / interpreted")
        ax.plot(xs, [p["gemm_share_compiled"] for p in pts], marker="v", color="tab:green",
                label="GEMM / compiled")
    ax.axhline(1.0, color="black", lw=0.8)
    for name, c in crossings.items():
        if c["x"] is not None:
            ax.axvline(c["x"], ls="--", lw=0.8, color="tab:orange")
            ax.annotate(name, (c["x"], 1.0), rotation=90, fontsize="x-small", va="bottom", ha="right")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_ylabel("ratio")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")


def plot_scaling(report, path):
    """Step time (log-log) and ratios (log x) against batch size and width."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import ScalarFormatter
    sweeps = [s for s in ("batch", "width") if any(p["sweep"] == s for p in report["points"])]
    fig = Figure(figsize=(6.0 * len(sweeps), 7.5), layout="constrained")
    axes = np.array(fig.subplots(2, len(sweeps), squeeze=False))
    for j, sweep in enumerate(sweeps):
        pts = [p for p in report["points"] if p["sweep"] == sweep]
        xs = np.array([p["x"] for p in pts])
        top, bottom = axes[0, j], axes[1, j]
        _plot_times(top, pts, xs)
        top.set_title(f"{report['settings']['model']}: batch size" if sweep == "batch"
                      else f"mlp:W-W-W-10, batch {report['settings']['width_batch']}: width W")
        _plot_ratios(bottom, pts, xs, report["crossovers"][sweep])
        for ax in (top, bottom):
            ax.xaxis.set_major_formatter(ScalarFormatter())
        bottom.set_xlabel("batch size" if sweep == "batch" else "width")
    fig.suptitle(f"bpc scaling ({report['target']}, {report['machine']['cores']} cores, "
                 f"{report['threads']['numba_threads']} numba threads)")
    fig.savefig(path, dpi=100)
    return path
