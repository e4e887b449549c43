"""Checkpoints: round trip without pickle, mismatch errors, atomic writes,
and a resumed fit that continues bit for bit like an uninterrupted one."""
import json
import os

import numpy as np
import pytest

import bpc
from bpc import checkpoint, nn, optim


def build(hidden=8):
    model = nn.Sequential([nn.Dense(4, hidden, "relu", seed=0, name="h"), nn.Dropout(0.25, seed=3, name="drop"),
                           nn.Dense(hidden, 3, seed=1, name="out")])
    return model, optim.Adam(lr=0.01, clip_norm=1.0)


def with_state(model, opt):
    """Create the optimizer's slots (by building its updates; nothing compiles)."""
    x = bpc.input("x", (None, 4))
    y = bpc.input("y", (None,), dtype="int64")
    opt.updates(bpc.softmax_cross_entropy(model(x, training=True), y), model.params)
    return model, opt


def everything(model, opt):
    return checkpoint.named_tensors([model, opt])


def test_round_trip_restores_every_tensor_step_and_rng(tmp_path):
    model, opt = with_state(*build())
    rng = np.random.default_rng(0)
    for key, t in everything(model, opt).items():
        t.value = rng.integers(1, 100, t.shape) if t.dtype.kind == "i" else rng.normal(size=t.shape)
    shuffle = np.random.default_rng(5)
    shuffle.random(3)
    path = tmp_path / "ck.npz"
    checkpoint.save(path, [model, opt], step=7, rng_state=shuffle, extra={"note": "hi", "losses": [0.5, 0.25]})

    model2, opt2 = with_state(*build())
    ck = checkpoint.load(path, [model2, opt2])
    saved, loaded = everything(model, opt), everything(model2, opt2)
    assert list(saved) == list(loaded)
    assert "model.1.counter" in saved and "optimizer.m.0" in saved and "optimizer.step" in saved
    for key in saved:
        assert np.array_equal(saved[key].value, loaded[key].value), key
        assert loaded[key].value.dtype == saved[key].value.dtype
    assert ck.step == 7 and ck.extra == {"note": "hi", "losses": [0.5, 0.25]}
    assert ck.rng().random() == shuffle.random()

    # A plain .npz: every array loads without pickle, metadata is JSON.
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(arrays["__meta__"].tobytes())
    assert meta["format"] == checkpoint.FORMAT
    assert {e["key"]: e["name"] for e in meta["tensors"]}["model.0.W"] == "h_W"


def test_dropout_counter_loads_before_its_graph_exists(tmp_path):
    model, _ = build()
    x = bpc.input("x", (None, 4))
    model(x, training=True)
    model.named_state()["1.counter"].value = 41
    checkpoint.save(tmp_path / "m.npz", model)
    fresh, _ = build()
    checkpoint.load(tmp_path / "m.npz", fresh)                 # no training graph yet
    fresh(x, training=True)                                     # the graph's counter continues from 41
    assert int(fresh.named_state()["1.counter"].value) == 41


def test_mismatched_model_names_the_parameter_and_shapes(tmp_path):
    model, opt = with_state(*build(hidden=8))
    checkpoint.save(tmp_path / "ck.npz", [model, opt])
    other, other_opt = with_state(*build(hidden=9))
    before = other.params[0].value.copy()
    with pytest.raises(checkpoint.CheckpointError,
                       match=r"'model\.0\.W' \(h_W\) has shape \(4, 8\) in the checkpoint but \(4, 9\) here"):
        checkpoint.load(tmp_path / "ck.npz", [other, other_opt])
    assert np.array_equal(other.params[0].value, before)      # nothing was assigned

    # keys on one side only
    with pytest.raises(checkpoint.CheckpointError, match=r"the checkpoint has 'optimizer\.lr'.*not being loaded"):
        checkpoint.load(tmp_path / "ck.npz", model)
    checkpoint.load(tmp_path / "ck.npz", model, strict=False)
    with pytest.raises(checkpoint.CheckpointError, match=r"'extra' \(extra\) is not in the checkpoint"):
        checkpoint.load(tmp_path / "ck.npz", [model, opt, {"extra": bpc.param("extra", np.ones(2))}])
    # dtypes
    p64 = bpc.param("p", np.ones(2), dtype="float64")
    checkpoint.save(tmp_path / "p.npz", [p64])
    with pytest.raises(checkpoint.CheckpointError, match="'p' \\(p\\) is float64 in the checkpoint but float32"):
        checkpoint.load(tmp_path / "p.npz", [bpc.param("p", np.ones(2, np.float32))])


def test_unreadable_files_raise_clearly(tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file")
    with pytest.raises(checkpoint.CheckpointError, match="not a readable bpc checkpoint"):
        checkpoint.read(junk)
    np.savez(tmp_path / "plain.npz", a=np.ones(2))
    with pytest.raises(checkpoint.CheckpointError, match="not a bpc checkpoint"):
        checkpoint.read(tmp_path / "plain.npz")
    with pytest.raises(FileNotFoundError):
        checkpoint.read(tmp_path / "missing.npz")
    with pytest.raises(TypeError, match="cannot save a str"):
        checkpoint.save(tmp_path / "x.npz", "weights")


def test_writes_are_atomic(tmp_path):
    p = bpc.param("p", np.arange(3.0))
    path = tmp_path / "ck.npz"
    checkpoint.save(path, [p], step=1)
    with pytest.raises(TypeError, match="JSON"):
        checkpoint.save(path, [p], step=2, extra={"bad": object()})
    assert os.listdir(tmp_path) == ["ck.npz"]                   # no temporary file left behind
    assert checkpoint.read(path).step == 1                      # the old checkpoint is intact


def blobs(n=60, seed=1):
    rng = np.random.default_rng(seed)
    Y = rng.integers(0, 3, n)
    return np.eye(3, 4)[Y] * 2 + rng.normal(size=(n, 4)), Y


def test_resumed_fit_continues_bit_for_bit(target, tmp_path):
    """Dropout masks, shuffling, Adam's moments and step, and the schedule
    all carry over: training 4 epochs equals 2 epochs + resume for 2."""
    X, Y = blobs()

    def run(**kw):
        model, opt = build()
        h = bpc.fit(model, X, Y, epochs=4, batch_size=16, optimizer=opt, schedule=optim.StepLR(1, 0.7),
                    target=target, seed=3, progress=False, **kw)
        return model, opt, h

    model_a, opt_a, h_a = run(checkpoint=tmp_path / "ck_{epoch}.npz")
    assert sorted(os.listdir(tmp_path)) == [f"ck_{e}.npz" for e in range(1, 5)]
    halfway = checkpoint.read(tmp_path / "ck_2.npz")
    assert halfway.step == 8 and halfway.arrays["model.1.counter"] == 8 and halfway.extra["epoch"] == 2

    model_b, opt_b, h_b = run(resume=tmp_path / "ck_2.npz")
    a, b = everything(model_a, opt_a), everything(model_b, opt_b)
    for key in a:
        assert np.array_equal(a[key].value, b[key].value), key
    assert h_b.history == h_a.history and h_b.epochs_run == 4
    # the second half really trained: the parameters moved after the checkpoint
    assert not np.array_equal(halfway.arrays["model.0.W"], model_b.params[0].value)

    checkpoint.save(tmp_path / "plain.npz", [model_a, opt_a])
    with pytest.raises(checkpoint.CheckpointError, match="not written by bpc.fit"):
        run(resume=tmp_path / "plain.npz")
