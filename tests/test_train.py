"""The training runner: fit on a small synthetic problem, its history,
early stopping, plots, and the errors fit raises before compiling anything.

The fits here share one architecture, one optimizer type and one set of
outputs, so a compiled target generates the same step source for all of
them (its disk cache compiles it once).
"""
import numpy as np
import pytest

import bpc
from bpc import nn, optim

EPOCHS = 6


def blobs(n=240, seed=0):
    """Three well separated Gaussian classes in 4 dimensions."""
    rng = np.random.default_rng(seed)
    Y = rng.integers(0, 3, n)
    centers = np.array([[2.0, 0, 0, 1], [-2.0, 1, 0, -1], [0, -2.0, 2, 0]])
    return centers[Y] + 0.6 * rng.normal(size=(n, 4)), Y


def build_model():
    return nn.Sequential([nn.Dense(4, 16, "relu", seed=0, name="h"), nn.Dropout(0.1, seed=5, name="drop"),
                          nn.Dense(16, 3, seed=1, name="out")])


def train(target, lr=0.02, **kw):
    X, Y = blobs()
    model, opt = build_model(), optim.Adam(lr=lr)
    kw.setdefault("epochs", EPOCHS)
    history = bpc.fit(model, X, Y, batch_size=32, optimizer=opt, validation_data=0.25,
                      metrics=("accuracy", "f1"), target=target, progress=False, **kw)
    return model, opt, history


_trained = {}


def trained(target):
    """One fit per target, shared by the tests that only read its results."""
    if target not in _trained:
        _trained[target] = train(target, schedule=optim.StepLR(step_size=3, gamma=0.5))
    return _trained[target]


def test_fit_lowers_the_loss_and_records_history(target):
    model, opt, h = trained(target)
    assert h.model is model and h.optimizer is opt and h.epochs_run == EPOCHS and not h.stopped_early
    grad_keys = {f"grad_norm/{n}" for n in ("h_W", "h_b", "out_W", "out_b")}
    assert set(h.history) == {"lr", "loss", "accuracy", "f1", "val_loss", "val_accuracy", "val_f1"} | grad_keys
    assert all(len(v) == EPOCHS for v in h.history.values())
    assert h["loss"][-1] < 0.5 * h["loss"][0]
    assert h["val_loss"][-1] < h["val_loss"][0]
    assert h["val_accuracy"][-1] > 0.9 and h["accuracy"][-1] > 0.85
    for k in grad_keys:
        assert all(np.isfinite(v) and v > 0 for v in h[k]), k
    assert h["lr"] == pytest.approx([0.02] * 3 + [0.01] * 3)   # StepLR applied between epochs
    assert h.train_step.target == target and h.eval_step.target == target
    n_batches = -(-180 // 32)                                  # 240 rows, 25% held out
    assert int(opt.step_count.value) == EPOCHS * n_batches
    assert int(model.named_state()["1.counter"].value) == EPOCHS * n_batches


def test_validation_metrics_match_predictions(target):
    model, _, h = trained(target)
    X, Y = blobs()
    _, Xv, _, Yv = bpc.data.train_test_split(X, Y, 0.25, seed=0, stratify=True)   # fit's own split
    pred = model.predict(Xv, target=target).argmax(axis=1)
    assert h["val_accuracy"][-1] == pytest.approx(bpc.metrics.accuracy(Yv, pred), abs=1e-12)
    assert h["val_f1"][-1] == pytest.approx(bpc.metrics.f1(Yv, pred), abs=1e-12)


def test_early_stopping_stops(target):
    # lr = 0: the parameters never move, so val_loss never improves.
    _, _, h = train(target, lr=0.0, epochs=20, early_stopping=2)
    assert h.stopped_early and h.epochs_run == 3 and len(h["loss"]) == 3 and h.best_epoch == 0


def test_early_stopping_can_restore_the_best_epochs_parameters():
    """A learning rate far too high makes val_loss climb after the first
    epochs; with restore_best the model ends with the best epoch's
    parameters (its validation loss is the best one recorded)."""
    stopper = bpc.train.EarlyStopping(2, restore_best=True)
    model, _, h = train("interpret", lr=0.4, epochs=12, early_stopping=stopper)
    assert h.best_epoch < h.epochs_run - 1, h["val_loss"]
    X, Y = blobs()
    _, Xv, _, Yv = bpc.data.train_test_split(X, Y, 0.25, seed=0, stratify=True)
    logits = model.predict(Xv, target="interpret")
    shifted = logits - logits.max(axis=1, keepdims=True)
    loss = np.mean(np.log(np.exp(shifted).sum(axis=1)) - shifted[np.arange(len(Yv)), Yv])
    assert loss == pytest.approx(min(h["val_loss"]), rel=1e-5)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")   # NumPy's overflow warnings on the way to inf
def test_a_diverging_run_raises(target):
    with pytest.raises(FloatingPointError, match="the loss became .* try a smaller learning rate"):
        train(target, lr=1e30)


def test_plot_history_writes_a_png(tmp_path):
    h = {"loss": [1.0, 0.5, 0.3], "val_loss": [1.1, 0.7, 0.6], "accuracy": [0.5, 0.8, 0.9], "lr": [0.1] * 3,
         "grad_norm/W": [1.0, 0.1, 0.01], "grad_norm/b": [0.5, 0.05, 0.02]}
    path = tmp_path / "sub" / "history.png"
    assert bpc.plot_history(h, path) == path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["history.png"]
    with pytest.raises(ValueError, match="no 'loss' values"):
        bpc.plot_history({}, tmp_path / "x.png")


def test_plot_history_without_matplotlib(tmp_path, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match="plot_history needs matplotlib"):
        bpc.plot_history({"loss": [1.0]}, tmp_path / "x.png")


X4, Y4 = blobs(20)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(loss="hinge"), ValueError, "unknown loss 'hinge'"),
    (dict(optimizer="adamax"), ValueError, "unknown optimizer 'adamax'"),
    (dict(Y=Y4[:5]), ValueError, "X has 20 rows but Y has 5"),
    (dict(epochs=0), ValueError, "epochs must be a positive int"),
    (dict(batch_size=2.5), ValueError, "batch_size must be a positive int"),
    (dict(loss="mse", metrics=("accuracy",)), ValueError, "need class predictions"),
    (dict(loss="mse"), ValueError, r"output has shape \(N, 3\), so targets need rows of shape \(3,\)"),
    (dict(Y=Y4.astype(float)), ValueError, r"class probabilities need rows of shape \(3,\)"),
    (dict(X=X4[:, :3]), bpc.ShapeError, r"Dense 'h' expects a \(batch, 4\) input"),
    (dict(metrics=("auc",)), ValueError, "unknown metric 'auc'"),
    (dict(early_stopping=bpc.train.EarlyStopping(2, monitor="val_loss"), validation_data=None),
     ValueError, "monitors 'val_loss', which this run does not compute"),
    (dict(early_stopping=0), ValueError, "patience must be a positive int"),
    (dict(validation_data="some"), ValueError, "validation_data must be"),
    (dict(schedule=0.5), TypeError, "schedule must be a bpc.optim schedule"),
    (dict(batch_size=64, drop_last=True), ValueError, "leaves no batch"),
])
def test_bad_fit_arguments_raise_before_compiling(kwargs, error, message, monkeypatch):
    def no_compiling(*args, **kw):
        raise AssertionError("fit compiled before checking its arguments")
    monkeypatch.setattr(bpc.train, "function", no_compiling)
    args = dict(X=X4, Y=Y4, epochs=2, validation_data=0.25)
    args.update(kwargs)
    with pytest.raises(error, match=message):
        bpc.fit(build_model(), args.pop("X"), args.pop("Y"), progress=False, **args)


def test_models_need_distinct_parameter_names():
    model = nn.Sequential([nn.Dense(4, 4, name="same"), nn.Dense(4, 3, name="same")])
    with pytest.raises(ValueError, match="distinct names.*same_W, same_b"):
        bpc.fit(model, X4, Y4, progress=False)
