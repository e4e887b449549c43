"""The training runner: `fit` a model on NumPy data, `plot_history`.

`fit` builds the model's training graph and its inference graph once,
compiles ONE training step

    step = bpc.function([x, y], [loss, *gradient norms], updates=optimizer updates)

(forward, backward, clipping and the update in one call) and one evaluation
function, then loops over shuffled mini-batches. Everything that changes
the trajectory (parameters, optimizer state, dropout counters, the shuffling
generator, the epoch) is checkpointed, so a resumed run continues exactly
as an uninterrupted one would.

`fit` itself is the outline of a run (check the arguments, build the graph
and compile, resume, then per epoch: schedule, batches, metrics,
validation, history, early stopping, checkpoint); each step is a small
function below it. Losses and the graph come from `bpc.losses`.
"""
import io
import math
import time
from dataclasses import dataclass, field, replace

import numpy as np

from . import checkpoint as ckpt
from . import metrics as metrics_mod
from . import optim
from .data import check_int, check_xy, index_batches, rng_from, train_test_split
from .function import function
from .io import atomic_write_text
from .losses import LOSSES, Loss, ModelGraph, build_graph, get_loss  # noqa: F401  (LOSSES, Loss: re-exported)


# ----- the graphs fit compiles -------------------------------------------------------------

TrainGraph = ModelGraph   # the name fit's History.graph had before the graph moved to bpc.losses


def _check_model(model):
    if not callable(model) or not hasattr(model, "params"):
        raise TypeError(f"expected a model (a bpc.nn Module: callable with .params), got {type(model).__name__}")
    params = list(model.params)
    if not params:
        raise ValueError(f"model {model!r} has no parameters to train")
    names = [p.name for p in params]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"model parameters need distinct names (history and checkpoints use them); "
                         f"repeated: {', '.join(dup)}")
    return params


def build_training_graph(model, X, Y, loss="softmax_cross_entropy", l2=0.0):
    """The `ModelGraph` `fit` compiles for data shaped like `X`, `Y`:
    inputs, training and inference outputs and losses, gradients and their
    norms (`bpc.losses.build_graph` with everything on). `l2` adds
    `bpc.nn.l2_penalty` of the weight matrices (params with two or more
    axes) to both losses."""
    params = _check_model(model)
    return build_graph(model, loss, np.asarray(X).shape[1:], params[0].dtype, Y=Y, eval_graph=True,
                       l2=l2, gradients=True)


# ----- history and early stopping ----------------------------------------------------------

@dataclass
class EarlyStopping:
    """Stop when `monitor` (default "val_loss", or "loss" without validation
    data) has not improved by more than `min_delta` for `patience` epochs.
    Losses improve by going down, other metrics (accuracy...) by going up.
    With `restore_best`, `fit` ends with the model's parameters as they
    were after the best epoch (the optimizer's state is the last one)."""
    patience: int = 5
    monitor: str = None
    min_delta: float = 0.0
    restore_best: bool = False
    best: float = field(default=math.inf, init=False)   # in "lower is better" units
    best_epoch: int = field(default=-1, init=False)
    wait: int = field(default=0, init=False)

    def __post_init__(self):
        self.patience = check_int(self.patience, "early_stopping: patience")

    def update(self, value, epoch):
        """Record an epoch's monitored value; True when training should stop."""
        score = value if self.monitor.endswith("loss") else -value
        if score < self.best - self.min_delta:
            self.best, self.best_epoch, self.wait = float(score), epoch, 0
            return False
        self.wait += 1
        return self.wait >= self.patience

    def state(self):
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait}


@dataclass
class History:
    """What `fit` returns: `history` maps "loss", "val_loss", each metric,
    "val_" + metric, "lr" and "grad_norm/<param name>" to one value per
    epoch. Also the model, the optimizer, the compiled functions
    (`train_step`, `eval_step`) and the graph they came from."""
    model: object
    optimizer: object
    history: dict = field(default_factory=dict)
    graph: ModelGraph = None
    train_step: object = None
    eval_step: object = None
    epochs_run: int = 0
    stopped_early: bool = False
    best_epoch: int = None
    best_params: dict = field(default=None, repr=False)   # EarlyStopping(restore_best=True): the best epoch's

    def __getitem__(self, key):
        return self.history[key]

    def record(self, values):
        for k, v in values.items():
            self.history.setdefault(k, []).append(float(v))

    def __repr__(self):
        last = ", ".join(f"{k}={v[-1]:.4g}" for k, v in self.history.items()
                         if v and not k.startswith("grad_norm/"))
        return f"<bpc History {self.epochs_run} epochs: {last}>"


# ----- fit -------------------------------------------------------------------------------------

def fit(model, X, Y, epochs=10, batch_size=32, optimizer="adam", loss="softmax_cross_entropy",
        validation_data=None, metrics=None, target=None, seed=0, progress=True, early_stopping=None,
        schedule=None, checkpoint=None, resume=None, l2=0.0, shuffle=True, drop_last=False):
    """Train `model` (a `bpc.nn` Module) on X, Y; returns a `History`.

    optimizer: a `bpc.optim` optimizer or a name ("adam", "sgd", ...).
    loss: "softmax_cross_entropy" (integer labels), "mse",
        "binary_cross_entropy_with_logits" (see `bpc.losses.LOSSES`) or a
        callable (output, y) -> scalar.
    validation_data: (X_val, Y_val), or a fraction of X to hold out.
    metrics: names in `bpc.metrics.METRICS` or callables on label arrays,
        computed per epoch on the training outputs and on the validation
        data; default ("accuracy",) for classification losses, () otherwise.
    target: compile target (default: bpc's default).
    seed: seeds the shuffling generator (a fresh permutation every epoch).
    early_stopping: patience (epochs without improvement of val_loss, or of
        loss without validation data) or an `EarlyStopping`.
    schedule: a `bpc.optim` schedule; sets `optimizer.lr` before each epoch.
    checkpoint: a path written after every epoch ("{epoch}" in it is
        replaced by the epoch number); resume: a checkpoint path to continue
        from (the run then goes on to `epochs` in total).
    l2: L2 penalty coefficient on the weight matrices.
    """
    # Every argument is checked before anything is built or compiled.
    X, Y = check_xy(X, Y, "fit")
    epochs, batch_size = check_int(epochs, "fit: epochs"), check_int(batch_size, "fit: batch_size")
    spec = get_loss(loss)
    metric_fns = _metric_fns(metrics, spec)
    opt = optim.get(optimizer)
    _check_schedule(schedule)
    X, Y, Xv, Yv = _validation(validation_data, X, Y, spec, seed)
    stopper = _early_stopping(early_stopping, metric_fns, Xv is not None)
    n_batches = _count_batches(len(X), batch_size, drop_last)

    graph = build_training_graph(model, X, Y, spec, l2)
    X, Y = _as_features(X, graph, "X"), graph.Y
    if Xv is not None:
        Xv, Yv = _as_features(Xv, graph, "validation X"), spec.prepare(Yv, graph.output, graph.x.dtype)
    updates = opt.apply_gradients(graph.params, graph.grads)   # creates the optimizer's state
    history = History(model, opt, graph=graph)
    rng, start = rng_from(seed), 0
    if resume is not None:   # before compiling, so a bad checkpoint fails fast
        start, rng = _resume(resume, model, opt, history, stopper)
    step, eval_step = _compile(history, updates, metric_fns, Xv is not None, target)

    batches = _Batches(X, Y, batch_size, shuffle, drop_last, rng, n_batches)
    bar = _Progress(progress, epochs, n_batches)
    for epoch in range(start, epochs):
        values = {"lr": _learning_rate(opt, schedule, epoch)}
        bar.start(epoch)
        values.update(_train_epoch(step, batches, graph, metric_fns, bar, epoch))
        if eval_step is not None:
            values.update(_evaluate(eval_step, Xv, Yv, spec, metric_fns))
        stop = _end_epoch(history, stopper, values, epoch)
        bar.end(epoch, values)
        if checkpoint is not None:
            _save(checkpoint, model, opt, history, rng, stopper, epoch + 1)
        if stop:
            history.stopped_early = True
            break
    if history.best_params is not None and history.best_epoch != history.epochs_run - 1:
        for key, p in history.model.named_params().items():
            p.value = history.best_params[key]
    return history


def _check_schedule(schedule):
    if schedule is not None and not isinstance(schedule, optim.Schedule):
        raise TypeError(f"fit: schedule must be a bpc.optim schedule (StepLR, ExponentialLR, CosineLR), "
                        f"got {type(schedule).__name__}")


def _metric_fns(metrics, spec):
    if metrics is None:
        metrics = ("accuracy",) if spec.has_predictions else ()
    if isinstance(metrics, str) or callable(metrics):
        metrics = (metrics,)
    fns = {}
    for m in metrics:
        fn = metrics_mod.get(m)
        fns[m if isinstance(m, str) else getattr(fn, "__name__", "metric")] = fn
    if fns and not spec.has_predictions:
        raise ValueError(f"metrics {', '.join(fns)} need class predictions, which loss '{spec.name}' "
                         "does not define; pass metrics=()")
    return fns


def _early_stopping(early_stopping, metric_fns, validating):
    """A fresh EarlyStopping (patience int or a configured one) whose monitor
    is a value this run computes; None without early stopping."""
    if early_stopping is None:
        return None
    if isinstance(early_stopping, EarlyStopping):
        stopper = replace(early_stopping)     # fresh state, the same settings
    else:
        stopper = EarlyStopping(patience=early_stopping)
    stopper.monitor = stopper.monitor or ("val_loss" if validating else "loss")
    known = ["loss", *metric_fns] + (["val_loss"] + [f"val_{m}" for m in metric_fns] if validating else [])
    if stopper.monitor not in known:
        raise ValueError(f"fit: early stopping monitors {stopper.monitor!r}, which this run does not "
                         f"compute; expected one of {', '.join(known)}")
    return stopper


def _validation(validation_data, X, Y, spec, seed):
    """(X_train, Y_train, X_val or None, Y_val or None)."""
    if validation_data is None:
        return X, Y, None, None
    if isinstance(validation_data, float):
        stratify = spec.targets == "classes" and np.asarray(Y).ndim == 1 and np.asarray(Y).dtype.kind in "biu"
        Xt, Xv, Yt, Yv = train_test_split(X, Y, validation_data, seed=seed, stratify=stratify)
        return Xt, Yt, Xv, Yv
    if isinstance(validation_data, (tuple, list)) and len(validation_data) == 2:
        Xv, Yv = check_xy(*validation_data, "fit: validation_data")
        return X, Y, Xv, Yv
    raise ValueError("fit: validation_data must be (X_val, Y_val) or a fraction of X to hold out, "
                     f"got {type(validation_data).__name__}")


def _count_batches(n, batch_size, drop_last):
    n_batches = n // batch_size if drop_last else -(-n // batch_size)
    if n_batches == 0:
        raise ValueError(f"fit: drop_last with batch_size {batch_size} leaves no batch of {n} rows")
    return n_batches


def _as_features(X, graph, what):
    X = np.asarray(X)
    if X.dtype.kind not in "biuf":
        raise ValueError(f"fit: {what} must hold numbers, got {X.dtype}")
    if X.shape[1:] != graph.x.shape[1:]:
        raise ValueError(f"fit: {what} rows have shape {X.shape[1:]}, the model was built for "
                         f"{graph.x.shape[1:]}")
    return np.ascontiguousarray(X, dtype=graph.x.dtype)


def _compile(history, updates, metric_fns, validating, target):
    """The training step (loss, outputs when metrics need them, gradient
    norms; the updates) and the evaluation function (None without
    validation data), also kept on the History."""
    graph = history.graph
    outputs = [graph.loss] + ([graph.output] if metric_fns else []) + graph.grad_norms
    history.train_step = function([graph.x, graph.y], outputs, updates=updates, target=target,
                                  name="train_step")
    history.eval_step = None if not validating else function(
        [graph.x, graph.y], [graph.eval_loss, graph.eval_output], target=target, name="eval_step")
    return history.train_step, history.eval_step


@dataclass
class _Batches:
    """The training rows and how every epoch cuts them: a fresh
    permutation from `rng` when shuffling."""
    X: np.ndarray
    Y: np.ndarray
    size: int
    shuffle: bool
    drop_last: bool
    rng: object
    count: int       # batches per epoch

    def __iter__(self):
        return iter(index_batches(len(self.X), self.size, self.shuffle, self.rng, self.drop_last))


def _learning_rate(opt, schedule, epoch):
    """Apply the schedule for this epoch; the learning rate it runs with."""
    if schedule is not None:
        schedule.apply(opt, epoch)
    return float(opt.lr.value)


def _train_epoch(step, batches, graph, metric_fns, bar, epoch):
    """One pass of the training step over the batches: the mean loss, the
    metrics of the training outputs, each parameter's mean gradient norm."""
    total, seen, norms, outs, targets = 0.0, 0, np.zeros(len(graph.params)), [], []
    for idx in batches:
        loss_v, *rest = step(batches.X[idx], batches.Y[idx])
        loss_v = float(loss_v)
        if not math.isfinite(loss_v):
            raise FloatingPointError(f"fit: the loss became {loss_v} in epoch {epoch + 1}; try a "
                                     "smaller learning rate or gradient clipping (clip_norm=...)")
        total, seen = total + loss_v * len(idx), seen + len(idx)
        if metric_fns:
            outs.append(rest.pop(0))
            targets.append(batches.Y[idx])
        norms += [float(n) for n in rest]
        bar.batch(loss_v)
    values = {"loss": total / seen}
    if metric_fns:
        values.update(_scores(metric_fns, graph.loss_spec, np.concatenate(outs), np.concatenate(targets)))
    for p, n in zip(graph.params, norms / batches.count):
        values[f"grad_norm/{p.name}"] = n
    return values


def _scores(metric_fns, spec, outputs, Y, prefix=""):
    if not metric_fns:
        return {}
    pred, true = spec.predictions(outputs), spec.labels(Y)
    return {prefix + name: fn(true, pred) for name, fn in metric_fns.items()}


def _evaluate(eval_fn, X, Y, spec, metric_fns, chunk=1024):
    """Loss (mean over rows) and metrics of the inference graph on X, Y."""
    total, outs = 0.0, []
    for start in range(0, len(X), chunk):
        loss, out = eval_fn(X[start:start + chunk], Y[start:start + chunk])
        total += float(loss) * len(out)
        outs.append(out)
    return {"val_loss": total / len(X), **_scores(metric_fns, spec, np.concatenate(outs), Y, "val_")}


def _end_epoch(history, stopper, values, epoch):
    """Record the epoch's values and ask early stopping; True to stop."""
    history.record(values)
    history.epochs_run = epoch + 1
    if stopper is None:
        return False
    stop = stopper.update(values[stopper.monitor], epoch)
    history.best_epoch = stopper.best_epoch
    if stopper.restore_best and stopper.best_epoch == epoch:
        history.best_params = {k: np.array(p.value) for k, p in history.model.named_params().items()}
    return stop


class _Progress:
    """A tqdm bar per epoch when stderr is a terminal; otherwise one
    summary line per epoch (nothing at all with progress=False)."""

    def __init__(self, enabled, epochs, n_batches):
        self.enabled, self.epochs, self.n_batches = enabled, epochs, n_batches
        self.bar = None

    def start(self, epoch):
        if not self.enabled:
            return
        from tqdm.auto import tqdm
        self.t0 = time.perf_counter()
        self.bar = tqdm(total=self.n_batches, desc=f"epoch {epoch + 1}/{self.epochs}", unit="batch",
                        leave=True, disable=None, dynamic_ncols=True)

    def batch(self, loss):
        if self.bar is not None and not self.bar.disable:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    def end(self, epoch, values):
        if not self.enabled:
            return
        shown = {k: v for k, v in values.items() if not k.startswith("grad_norm/") and k != "lr"}
        if not self.bar.disable:
            self.bar.set_postfix({k: f"{v:.4f}" for k, v in shown.items()})
            self.bar.close()
        else:
            self.bar.close()
            text = " - ".join(f"{k} {v:.4f}" for k, v in shown.items())
            print(f"epoch {epoch + 1}/{self.epochs}: {text} ({time.perf_counter() - self.t0:.1f}s)", flush=True)


# ----- checkpoints ------------------------------------------------------------------------------

def _save(path, model, opt, history, rng, stopper, epochs_done):
    extra = {"epoch": epochs_done, "history": history.history,
             "early_stopping": stopper.state() if stopper else None}
    ckpt.save(str(path).replace("{epoch}", str(epochs_done)), [model, opt],
              step=int(opt.step_count.value), rng_state=rng, extra=extra)


def _resume(path, model, opt, history, stopper):
    """Load a checkpoint written by fit; returns (first epoch to run, rng).
    The file and its training state are checked before anything is assigned."""
    ck = ckpt.read(path)
    epoch, hist, stopping = _fit_state(ck)
    rng = ck.rng()
    ckpt.restore(ck, [model, opt])
    history.history = hist
    history.epochs_run = epoch
    if stopper is not None and stopping:
        stopper.best = float(stopping["best"])
        stopper.best_epoch, stopper.wait = stopping["best_epoch"], stopping["wait"]
        history.best_epoch = stopper.best_epoch
    return epoch, rng


def _fit_state(ck):
    """(epochs done, history, early-stopping state or None) from the `extra`
    of a checkpoint written by fit; CheckpointError naming the first bad field."""
    extra = ck.extra

    def bad(problem):
        return ckpt.CheckpointError(f"checkpoint '{ck.path}' has a bad training state: {problem}")

    def is_number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    if "epoch" not in extra:
        raise ckpt.CheckpointError(f"checkpoint '{ck.path}' was not written by bpc.fit (no epoch count)")
    epoch = extra["epoch"]
    if not ckpt._is_int(epoch) or epoch < 0:
        raise bad(f"'epoch' must be an int >= 0, got {ckpt._short(epoch)}")
    hist = extra.get("history")
    if not isinstance(hist, dict):
        raise bad(f"'history' must be an object, got {ckpt._short(hist)}")
    for k, v in hist.items():
        # <= epoch: a value first recorded after a resume (e.g. val_loss) has fewer entries
        if not isinstance(v, list) or len(v) > epoch or not all(is_number(x) for x in v):
            raise bad(f"history {ckpt._short(k)} must be a list of at most {epoch} numbers, got {ckpt._short(v)}")
    stopping = extra.get("early_stopping")
    if stopping is not None:
        if not isinstance(stopping, dict) or set(stopping) != {"best", "best_epoch", "wait"}:
            raise bad(f"'early_stopping' must be an object with best, best_epoch and wait, "
                      f"got {ckpt._short(stopping)}")
        if not is_number(stopping["best"]):
            raise bad(f"early_stopping.best must be a number, got {ckpt._short(stopping['best'])}")
        if not ckpt._is_int(stopping["best_epoch"]) or not -1 <= stopping["best_epoch"] < epoch:
            raise bad(f"early_stopping.best_epoch must be an int in [-1, {epoch}), "
                      f"got {ckpt._short(stopping['best_epoch'])}")
        if not ckpt._is_int(stopping["wait"]) or stopping["wait"] < 0:
            raise bad(f"early_stopping.wait must be an int >= 0, got {ckpt._short(stopping['wait'])}")
    return epoch, {k: [float(x) for x in v] for k, v in hist.items()}, stopping


# ----- plots ---------------------------------------------------------------------------------

def plot_history(history, path):
    """Save a PNG of the loss curves, the metrics and the per-parameter
    gradient norms (log scale) per epoch. Needs matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("plot_history needs matplotlib: pip install 'bpc[plot]' "
                          "(or pip install matplotlib)") from None
    h = history.history if isinstance(history, History) else dict(history)
    if not h.get("loss"):
        raise ValueError("plot_history: the history has no 'loss' values (did training run?)")
    base = [k for k in h if not k.startswith(("val_", "grad_norm/")) and k != "lr"]
    norms = [k for k in h if k.startswith("grad_norm/")]
    panels = [(k, [k] + ([f"val_{k}"] if f"val_{k}" in h else [])) for k in base]
    if norms:
        panels.append(("gradient norm", norms))
    # A Figure without pyplot: no global state, no GUI backend needed.
    fig = Figure(figsize=(4.2 * len(panels), 3.4), layout="constrained")
    for ax, (title, keys) in zip(np.atleast_1d(fig.subplots(1, len(panels))), panels):
        for k in keys:
            ax.plot(range(1, len(h[k]) + 1), h[k], marker="o" if len(h[k]) < 30 else None,
                    label=k.removeprefix("grad_norm/"))
        if title == "gradient norm":
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write_text(path, buf.getvalue(), binary=True)
    return path
