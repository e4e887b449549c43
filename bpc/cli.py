"""The `bpc` command line: look at a model's graphs, benchmark, train.

    bpc dot MODEL [--grad] [--fused] [-o FILE.dot|.svg|.png]
    bpc bench [--model M ...] [--target cpu|cuda] [--threads N] [--compare torch,jax] [--out DIR]
    bpc train MODEL [--epochs N] [--batch-size B] [--optimizer adam] [--lr LR] [--target cpu]

MODEL is a built-in name (`mlp:64-64-64-10`, `tiny`, `medium`, `large`) or a
path to a Python file defining `build()` (see `bpc.models`). Errors in the
arguments, the model or the data (an exception raised by a model file's
`build()` or `data()` included) print one line and exit with status 2;
failures while running (out of memory, a file that cannot be written, an
unexpected error) print one line and exit with status 1. BPC_DEBUG=1 shows
the full traceback instead.
"""
import argparse
import csv
import json
import os
import sys
import traceback

from . import __version__
from .models import ModelError, load as load_model

EPILOG_MODEL = ("MODEL: a built-in name such as mlp:64-64-64-10 (layer sizes; ReLU; softmax cross-entropy), "
                "mlp:64-32-10:tanh, tiny, medium, large, or a path to a .py file that defines build() "
                "returning a bpc.nn Module (optional: data(), INPUT_SHAPE, LOSS); see bpc/models.py.")


class CommandError(Exception):
    """A failure while running a command: printed, exit status 1."""


def _fail(prog, message, code):
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def _positive(kind):
    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}") from None
        if not v > 0:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}")
        return v
    return parse


def _fraction(text):
    """--validation-split: a fraction in (0, 1), or 0 for none."""
    try:
        v = float(text)
    except ValueError:
        v = None
    if v is None or not (v == 0 or 0 < v < 1):
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1 (such as 0.2), or 0 for no "
                                         f"validation, got {text!r}")
    return v


def _model_files(args):
    """The MODEL arguments of this command that are files."""
    models = getattr(args, "model", None)
    models = models if isinstance(models, list) else [models]
    return [m for m in models if isinstance(m, str) and os.path.isfile(m)]


def _where(exc, files):
    """'FILE:LINE in FUNCTION()' of the innermost traceback frame in one of
    `files` (the user's model files), or ''."""
    real = {os.path.realpath(f) for f in files}
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if os.path.realpath(f.filename) in real]
    return f"{frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name}()" if frames else ""


def _failure(what, exc, files=()):
    """One line for an exception raised while running user code or bpc."""
    where, text = _where(exc, files), str(exc)
    return f"{what}: {type(exc).__name__}" + (f": {text}" if text else "") + (f" (at {where})" if where else "")


def _load_model(model, seed):
    """`bpc.models.load`, any failure of the model file's own code (build(),
    data() for the input shape, imports) as one ModelError."""
    try:
        return load_model(model, seed=seed)
    except ModelError:
        raise
    except Exception as e:
        raise ModelError(_failure(f"model '{model}' failed to load", e, [model])) from e


def _load_data(spec):
    """`spec.load_data()`, a failure of data() as one ModelError."""
    try:
        return spec.load_data()
    except ModelError:
        raise
    except Exception as e:
        what = (f"data() in model file '{spec.source}' failed" if spec.source and spec.source != "builtin"
                else f"loading the data of model '{spec.name}' failed")
        raise ModelError(_failure(what, e, [spec.source])) from e


# ----- bpc dot ------------------------------------------------------------------------------------

def cmd_dot(args):
    from . import autodiff, dot
    spec = _load_model(args.model, args.seed)
    g = spec.graph()
    title = f"{spec.name}: " + ("fused kernels" if args.fused else "gradient graph" if args.grad else "forward graph")
    if args.fused:
        from .function import function
        grads = autodiff.grad(g.loss, g.params)
        step = function([g.x, g.y], g.loss, updates={p: p - args.lr * d for p, d in zip(g.params, grads)},
                        target=args.target, name="sgd_step")
        outputs, kwargs = None, {"fused": step}
        kernels = getattr(getattr(step.backend, "plan", None), "kernels", None)
        if kernels is not None:
            title += f" ({len(kernels)} kernels, target {args.target})"
    else:
        outputs = [g.loss, *autodiff.grad(g.loss, g.params)] if args.grad else [g.loss]
        kwargs = {"optimize": args.optimize}
    if args.text:
        if args.fused:
            raise ModelError("--text lists the graph op by op; it does not combine with --fused")
        text = dot.to_text(outputs, optimize=args.optimize)
        if args.output:
            with open(args.output, "w", encoding="utf-8") as f:
                f.write(text + "\n")
        else:
            print(text)
        return 0
    ext = os.path.splitext(args.output or "")[1].lower()
    if ext in (".svg", ".png", ".pdf"):
        import shutil
        if shutil.which("dot") is None:
            raise CommandError(f"rendering {args.output} needs Graphviz's `dot` program, which is not installed "
                               "(apt-get install graphviz, brew install graphviz or conda install graphviz); "
                               f"or write DOT text with -o {os.path.splitext(args.output)[0]}.dot")
    try:
        text = dot.to_dot(outputs, path=args.output, title=title, **kwargs)
    except RuntimeError as e:   # Graphviz failed
        raise CommandError(str(e)) from None
    if args.output:
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


# ----- bpc bench ----------------------------------------------------------------------------------

# `bpc bench --strict` fails when a compiled step is more than this many
# times slower than the interpreted one: a margin that noise on a shared
# machine does not cross, and that threads fighting over the cores do.
STRICT_FACTOR = 2.0


def cmd_bench(args):
    """`bpc bench`: the training-step benchmark, then the scaling study
    (both in bpc.bench); a failing benchmark process exits with 1."""
    from .bench.harness import BenchError
    try:
        return _bench(args)
    except BenchError as e:
        raise CommandError(str(e)) from None


def _bench(args):
    from .bench import mlp_step, scaling
    compare = mlp_step.check_args(args)
    batches = scaling.parse_sizes(args.batches, "--batches") if args.batches else (
        scaling.QUICK_BATCHES if args.quick else scaling.BATCHES)
    widths = scaling.parse_sizes(args.widths, "--widths") if args.widths is not None else (
        scaling.QUICK_WIDTHS if args.quick else scaling.WIDTHS)
    try:
        workloads = mlp_step.resolve_workloads(args.model, args.batch_size)   # checks every MODEL first
    except ModelError:
        raise
    except Exception as e:
        raise ModelError(_failure("a --model failed to load", e, _model_files(args))) from e
    report = mlp_step.run(args.model, args.batch_size, args.target, args.threads, compare, args.rounds,
                          args.min_round_s, not args.no_startup, args.out, not args.no_progress, busy=args.busy)
    if args.scaling:
        print()
        scaling.run(load_model(workloads[0][1]), batches, widths, args.width_batch, args.target, args.threads,
                    rounds=min(args.rounds, 7), min_round_s=min(args.min_round_s, 0.03), out_dir=args.out,
                    progress=not args.no_progress)
    if not report["workloads"]:
        return 1
    slow = mlp_step.slower_than_interpreted(report, STRICT_FACTOR)
    if args.strict and slow:
        print(f"bpc bench: --strict: compiled steps more than {STRICT_FACTOR:g}x slower than interpreted: "
              + ", ".join(f"{name} ({1 / ratio:.2f}x the time)" for name, ratio in slow), file=sys.stderr)
        return 3
    return 0


# ----- bpc train ----------------------------------------------------------------------------------

def _make_optimizer(name, lr):
    from . import optim
    classes = getattr(optim, "OPTIMIZERS", {})
    if name not in classes:
        raise ModelError(f"--optimizer: unknown {name!r}; expected one of {', '.join(classes)}")
    return classes[name](lr=lr) if lr is not None else classes[name]()


def _history_rows(history):
    keys = [k for k in history if not k.startswith("grad_norm/") and k != "lr"]
    n = len(history[keys[0]]) if keys else 0
    return keys, [[i + 1] + [history[k][i] for k in keys] for i in range(n)]


def cmd_train(args):
    import bpc
    fit = getattr(bpc, "fit", None)
    if fit is None:
        raise CommandError("bpc train needs bpc.fit (bpc/train.py), which this installation of bpc lacks")
    spec = _load_model(args.model, args.seed)
    X, Y, Xv, Yv = _load_data(spec)
    split = 0.2 if args.validation_split is None else args.validation_split
    if Xv is not None and args.validation_split is not None:
        print(f"note: --validation-split {args.validation_split:g} is not used: the data of {spec.name} "
              "has its own validation part", file=sys.stderr)
    validation = (Xv, Yv) if Xv is not None else (split or None)
    opt = _make_optimizer(args.optimizer, args.lr)
    print(f"training {spec.name} on {len(X)} examples"
          + (f" (validating on {len(Xv)})" if Xv is not None else
             f" ({split:.0%} held out for validation)" if split else "")
          + f": {args.epochs} epochs, batch {args.batch_size}, {args.optimizer} lr {float(opt.lr.value):g}, "
          f"target {args.target or 'default'}", file=sys.stderr)
    history = fit(spec.module, X, Y, epochs=args.epochs, batch_size=args.batch_size, optimizer=opt,
                  loss=spec.loss, validation_data=validation, target=args.target, seed=args.seed,
                  progress=not args.quiet)
    h = history.history
    keys, rows = _history_rows(h)
    print("  ".join(["epoch"] + [f"{k:>12}" for k in keys]))
    for row in rows:
        print("  ".join([f"{row[0]:>5}"] + [f"{v:>12.4f}" for v in row[1:]]))
    written = []
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        path = os.path.join(args.out, "history.json")
        with open(path, "w") as f:
            json.dump({"model": spec.name, "epochs": args.epochs, "batch_size": args.batch_size,
                       "optimizer": args.optimizer, "lr": float(opt.lr.value), "target": args.target,
                       "seed": args.seed, "history": h}, f, indent=1)
        written.append(path)
        path = os.path.join(args.out, "history.csv")
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["epoch"] + keys)
            w.writerows(rows)
        written.append(path)
        if args.plot:
            try:
                written.append(bpc.plot_history(history, os.path.join(args.out, "history.png")))
            except ImportError as e:
                print(f"note: no plot ({e})", file=sys.stderr)
    if args.save:       # also without --out
        bpc.save_checkpoint(args.save, [spec.module, opt], step=int(opt.step_count.value),
                            extra={"model": spec.name, "history": h})
        written.append(args.save)
    if written:
        print("wrote " + ", ".join(map(str, written)), file=sys.stderr)
    return 0


# ----- parser -----------------------------------------------------------------------------------------

def build_parser():
    ap = argparse.ArgumentParser(prog="bpc", description="bpc, a backprop compiler: look at a model's graphs, "
                                 "benchmark its training step, train it.", epilog=EPILOG_MODEL)
    ap.add_argument("--version", action="version", version=f"bpc {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    d = sub.add_parser("dot", help="draw a model's forward, gradient or fused-kernel graph (Graphviz DOT)",
                       description="Write the model's forward graph (default), the gradient graph derived by "
                                   "bpc.grad (--grad) or the fused kernels of its compiled SGD step (--fused) "
                                   "as Graphviz DOT; .svg/.png/.pdf outputs need Graphviz's `dot` program.",
                       epilog=EPILOG_MODEL)
    d.add_argument("model", metavar="MODEL")
    what = d.add_mutually_exclusive_group()
    what.add_argument("--grad", action="store_true", help="the loss and its gradients (backward cluster)")
    what.add_argument("--fused", action="store_true",
                      help="the compiled training step's optimized graph, fused kernels as clusters")
    d.add_argument("-o", "--output", metavar="FILE", help="FILE.dot (text), .svg, .png or .pdf; default: stdout")
    d.add_argument("--optimize", action="store_true", help="show the graph after bpc's simplification passes")
    d.add_argument("--text", action="store_true", help="a typed text listing instead of DOT")
    d.add_argument("--target", default="cpu", choices=["cpu", "cuda", "interpret"],
                   help="target whose kernels --fused draws (default cpu; nothing is compiled)")
    d.add_argument("--lr", type=_positive(float), default=0.01, help="SGD learning rate of the --fused step")
    d.add_argument("--seed", type=int, default=0, help="seed of the built-in models' initial weights")
    d.set_defaults(run=cmd_dot)

    b = sub.add_parser("bench", help="benchmark the training step: interpreted vs compiled (vs PyTorch/JAX)",
                       description="The training-step benchmark (bpc.bench.mlp_step: interpreted and compiled "
                                   "step time, their ratio, cold compile, warm start, GEMM-only bound, NumPy/"
                                   "PyTorch/JAX when installed) and the scaling study (bpc.bench.scaling: step "
                                   "time vs batch size and width). Prints tables; writes JSON, CSV and PNG. "
                                   "The scaling study runs with --scaling. For the smallest run: --quick --model tiny --compare none.",
                       epilog=EPILOG_MODEL + " bench/README.md in bpc's source explains how to read the numbers.")
    _bench_arguments(b)
    b.set_defaults(run=cmd_bench)

    t = sub.add_parser("train", help="train a model on its data with bpc.fit",
                       description="Train MODEL on its data with bpc.fit and print/save the history. Built-in "
                                   "MLPs of shape 64-...-10 train on scikit-learn's digits; other built-in "
                                   "sizes on a synthetic clustering problem; model files on their data().",
                       epilog=EPILOG_MODEL)
    t.add_argument("model", metavar="MODEL")
    t.add_argument("--epochs", type=_positive(int), default=10, help="default 10")
    t.add_argument("--batch-size", type=_positive(int), default=32, help="default 32")
    t.add_argument("--optimizer", default="adam", type=str.lower,
                   help="sgd, adam, adamw, rmsprop or adagrad (default adam)")
    t.add_argument("--lr", type=_positive(float), default=None, help="learning rate (default: the optimizer's)")
    t.add_argument("--target", default=None, choices=["interpret", "cpu", "cuda"],
                   help="compile target (default: bpc's default)")
    t.add_argument("--seed", type=int, default=0, help="initial weights and shuffling")
    t.add_argument("--validation-split", type=_fraction, default=None, metavar="FRACTION",
                   help="fraction in (0, 1) held out when the data has no validation part "
                        "(default 0.2; 0: none)")
    t.add_argument("--out", default="bpc_train", metavar="DIR",
                   help="folder for history.json/.csv/.png (default bpc_train; '' to save nothing)")
    t.add_argument("--no-plot", dest="plot", action="store_false", help="no history.png")
    t.add_argument("--save", metavar="FILE.npz", help="also save a checkpoint of the trained model")
    t.add_argument("--quiet", action="store_true", help="no progress output")
    t.set_defaults(run=cmd_train)
    return ap


def _bench_arguments(b):
    b.add_argument("--model", action="append", metavar="MODEL",
                   help="workload (tiny, medium, large), mlp:... or a model file; repeatable "
                        "(default: tiny, medium and large)")
    b.add_argument("--batch-size", type=_positive(int), default=None, help="batch size (default: the workload's)")
    b.add_argument("--target", default="cpu", choices=["cpu", "cuda", "interpret"],
                   help="the compiled side (default cpu; interpret only to test the harness)")
    b.add_argument("--threads", type=_positive(int), default=None,
                   help="threads for Numba's parallel loops and BLAS (and PyTorch/NumPy); default: Numba's")
    b.add_argument("--compare", default="numpy,torch,jax",
                   help="comparison steps, each when installed: numpy,torch,jax or none (default: all)")
    b.add_argument("--rounds", type=_positive(int), default=9, help="timed rounds per measurement (default 9)")
    b.add_argument("--min-round-s", type=_positive(float), default=0.03,
                   help="minimum seconds per round (default 0.03)")
    b.add_argument("--quick", action="store_true",
                   help="a very short run: 3 short rounds, 3 batch sizes and 2 widths in the scaling study")
    b.add_argument("--no-startup", action="store_true", help="skip the cold-compile and warm-start processes")
    b.add_argument("--scaling", action="store_true",
                   help="also run the scaling study (step time vs batch size and width; several minutes)")
    b.add_argument("--no-scaling", action="store_true", help="no scaling study (the default)")
    b.add_argument("--strict", action="store_true",
                   help=f"exit with status 3 when a compiled step is more than {STRICT_FACTOR:g}x slower than the "
                        "interpreted one")
    b.add_argument("--batches", default=None, help="batch sizes of the scaling study (default 1,2,4,...,4096)")
    b.add_argument("--widths", default=None,
                   help="widths of the scaling study (default 16,32,...,2048; '' for no width sweep)")
    b.add_argument("--width-batch", type=_positive(int), default=128,
                   help="batch size of the width sweep (default 128)")
    b.add_argument("--busy", type=_positive(int), default=0, metavar="N",
                   help="keep N processes spinning during the run, one core each: compiled steps must hold up "
                        "on a shared machine")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.add_argument("--out", default="bench_results", metavar="DIR",
                   help="folder for mlp_step.json/.csv/.png and scaling.json/.csv/.png (default bench_results)")


def main(argv=None):
    """Run the command line; returns the exit status (errors raise SystemExit)."""
    ap = build_parser()
    args = ap.parse_args(argv)
    prog = f"bpc {args.command}"
    if getattr(args, "out", None) == "":
        args.out = None
    try:
        return args.run(args) or 0
    except KeyboardInterrupt:
        _fail(prog, "interrupted", 130)
    except BrokenPipeError:   # e.g. `bpc dot MODEL | head`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except Exception as e:
        if os.environ.get("BPC_DEBUG"):   # the full traceback
            raise
        _fail(prog, *_message(e, args))


def _message(e, args):
    """(one-line message, exit status) for an exception from a command: 2
    for a bad argument, model, data or input file, 1 for a failure while
    running."""
    if isinstance(e, CommandError):
        return str(e), 1
    if isinstance(e, (ModelError, ValueError, FileNotFoundError)):
        return str(e), 2
    if isinstance(e, MemoryError):
        hint = " (try a smaller --batch-size)" if getattr(args, "batch_size", None) else ""
        return _failure("out of memory", e, _model_files(args)) + hint, 1
    if isinstance(e, OSError):    # e.g. an output that cannot be written
        return (f"'{e.filename}': {e.strerror}" if e.filename and e.strerror else str(e)), 1
    return _failure("unexpected error", e, _model_files(args)) + "; set BPC_DEBUG=1 for the traceback", 1


if __name__ == "__main__":
    raise SystemExit(main())
