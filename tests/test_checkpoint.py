"""Checkpoints: round trip without pickle, mismatch errors, atomic writes,
and a resumed fit that continues bit for bit like an uninterrupted one."""
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import bpc
import bpc.io
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


# ----- damaged, foreign and crafted files -----------------------------------------------------------

def one_param_checkpoint(path, step=3):
    p = bpc.param("p", np.arange(3.0))
    checkpoint.save(path, [p], step=step, rng_state=np.random.default_rng(0), extra={"note": "hi"})
    return path


def arrays_of(path):
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def rewrite(src, dst, change_meta=None, **replace_arrays):
    """Copy checkpoint `src` to `dst` with its metadata edited by
    `change_meta(meta)` (which may return a new one) and arrays replaced."""
    arrays = arrays_of(src)
    meta = json.loads(arrays["__meta__"].tobytes())
    if change_meta is not None:
        meta = change_meta(meta) or meta
    arrays.update(replace_arrays)
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(dst, **arrays)        # allow_pickle: crafted object arrays included
    return dst


class Marker:
    """Unpickling it creates a file: proof that code from the file ran."""
    path = None

    def __reduce__(self):
        return (open, (str(Marker.path), "w"))


def assert_refused_untouched(path, match):
    """Reading fails with one CheckpointError naming the file, and loading
    leaves the param as it was."""
    with pytest.raises(checkpoint.CheckpointError, match=match) as info:
        checkpoint.read(path)
    assert str(path) in str(info.value)
    target = bpc.param("p", np.full(3, 7.0))
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.load(path, [target])
    assert np.array_equal(target.value, np.full(3, 7.0))


def test_files_that_are_not_checkpoints(tmp_path):
    good = one_param_checkpoint(tmp_path / "good.npz")
    cases = {"empty.npz": (b"", "the file is empty"),
             "truncated.npz": (good.read_bytes()[:len(good.read_bytes()) // 2], "truncated, or not a zip file"),
             "text.npz": (b"hello, not a checkpoint\n", "truncated, or not a zip file")}
    for name, (data, match) in cases.items():
        (tmp_path / name).write_bytes(data)
        assert_refused_untouched(tmp_path / name, match)
    np.save(tmp_path / "array.npy", np.arange(3.0))
    assert_refused_untouched(tmp_path / "array.npy", r"single NumPy array \(\.npy\)")
    (tmp_path / "folder.npz").mkdir()
    assert_refused_untouched(tmp_path / "folder.npz", "cannot be read")


def test_damaged_array_data_is_refused(tmp_path):
    good = one_param_checkpoint(tmp_path / "good.npz")
    data = bytearray(good.read_bytes())
    i = data.index(np.arange(3.0).tobytes())      # stored uncompressed: corrupt the values
    data[i] ^= 0xFF
    (tmp_path / "flipped.npz").write_bytes(bytes(data))
    assert_refused_untouched(tmp_path / "flipped.npz", "BadZipFile.*CRC")


def test_array_too_big_for_memory_is_a_checkpoint_error(tmp_path, monkeypatch):
    good = one_param_checkpoint(tmp_path / "good.npz")

    def no_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate")
    monkeypatch.setattr(checkpoint.np, "empty", no_memory)
    with pytest.raises(checkpoint.CheckpointError, match="the metadata needs .* bytes of memory"):
        checkpoint.read(good)


BAD_META = [
    (lambda m: [1, 2], "metadata is a JSON list"),
    (lambda m: m.update(format="other/2"), "has format 'other/2'"),
    (lambda m: m.__delitem__("tensors"), "'tensors' is missing"),
    (lambda m: m.update(step="seven"), "'step' must be an int >= 0, got 'seven'"),
    (lambda m: m.update(step=-1), "'step' must be an int >= 0, got -1"),
    (lambda m: m.update(step=2.5), "'step' must be an int"),
    (lambda m: m.update(step=True), "'step' must be an int"),
    (lambda m: m.update(rng_state="x"), "'rng_state' must be an object or null"),
    (lambda m: m.update(rng_state={"bit_generator": "os.system"}), "unknown bit generator"),
    (lambda m: m["rng_state"].update(state="x"), "unusable 'rng_state'"),
    (lambda m: m.update(extra=[1]), "'extra' must be an object"),
    (lambda m: m.update(tensors="t0"), "'tensors' must be a list"),
    (lambda m: m.update(tensors=[1]), r"tensors\[0\] must be an object"),
    (lambda m: m["tensors"][0].update(key=1), r"tensors\[0\]\.key must be a string"),
    (lambda m: m["tensors"][0].__delitem__("name"), r"tensors\[0\]\.name must be a string"),
    (lambda m: m["tensors"].append(dict(m["tensors"][0])), "two tensors have the key 'p'"),
    (lambda m: m["tensors"][0].update(array="t9"), "names array 't9', which is not in the file"),
    (lambda m: m["tensors"][0].update(array="__meta__"), "names array '__meta__'"),
    (lambda m: m["tensors"][0].update(shape="3"), "has shape '3'; expected a list of ints"),
    (lambda m: m["tensors"][0].update(shape=[-3]), "has shape \\[-3\\]"),
    (lambda m: m["tensors"][0].update(dtype="|O"), "has dtype '|O'; expected a bool, int or float"),
    (lambda m: m["tensors"][0].update(dtype="<U3"), "has dtype '<U3'"),
    (lambda m: m["tensors"][0].update(dtype="no such dtype"), "has dtype 'no such dtype'"),
    (lambda m: m["tensors"][0].update(shape=[4]), r"array 'p' is damaged \(it has shape \(3,\), the metadata "
                                                 r"says \(4,\)\)"),
    (lambda m: m["tensors"][0].update(dtype="<f4"), "array 'p' is damaged .*holds <f8 data, the metadata says <f4"),
]


@pytest.mark.parametrize("change, match", BAD_META)
def test_crafted_metadata_is_refused_before_anything_is_assigned(change, match, tmp_path):
    good = one_param_checkpoint(tmp_path / "good.npz")
    assert_refused_untouched(rewrite(good, tmp_path / "crafted.npz", change), match)


def test_metadata_that_is_not_json_or_not_bytes(tmp_path):
    good = one_param_checkpoint(tmp_path / "good.npz")
    bad = rewrite(good, tmp_path / "a.npz")
    arrays = arrays_of(bad)
    np.savez(bad, **{**arrays, "__meta__": np.frombuffer(b"{not json", np.uint8)})
    assert_refused_untouched(bad, "metadata is not JSON")
    np.savez(bad, **{**arrays, "__meta__": np.frombuffer(b"[" * 100000 + b"]" * 100000, np.uint8)})
    assert_refused_untouched(bad, "metadata is not JSON")
    np.savez(bad, **{**arrays, "__meta__": np.zeros((2, 2), np.uint8)})
    assert_refused_untouched(bad, "metadata is not a byte string")


def test_pickled_objects_in_the_file_never_run(tmp_path):
    Marker.path = tmp_path / "code_ran"
    good = one_param_checkpoint(tmp_path / "good.npz")
    evil = np.array([Marker()], dtype=object)
    # an object array where a tensor's data belongs, declared as floats, or declared as objects
    assert_refused_untouched(rewrite(good, tmp_path / "a.npz", t0=evil), "damaged .*holds \\|O data")
    assert_refused_untouched(rewrite(good, tmp_path / "b.npz", lambda m: m["tensors"][0].update(dtype="|O"),
                                     t0=evil), "has dtype '\\|O'")
    # pickled metadata
    arrays = arrays_of(good)
    np.savez(tmp_path / "c.npz", **{**arrays, "__meta__": evil})
    assert_refused_untouched(tmp_path / "c.npz", "the metadata is damaged")
    # a pickle file
    import pickle
    (tmp_path / "d.npz").write_bytes(pickle.dumps(Marker()))
    assert_refused_untouched(tmp_path / "d.npz", "not a readable bpc checkpoint")
    assert not Marker.path.exists()


def test_checkpoint_of_another_architecture_changes_nothing(tmp_path):
    model, opt = with_state(*build(hidden=8))
    checkpoint.save(tmp_path / "ck.npz", model)
    deeper = nn.Sequential([nn.Dense(4, 8, "relu", seed=5, name="h"), nn.Dense(8, 8, seed=6, name="h2"),
                            nn.Dense(8, 3, seed=7, name="out")])
    before = {k: t.value.copy() for k, t in checkpoint.named_tensors(deeper).items()}
    with pytest.raises(checkpoint.CheckpointError, match=r"'model\.1\.W' \(h2_W\) is not in the checkpoint.*"
                       r"the checkpoint has 'model\.1\.counter' \(drop_counter\), which is not being loaded"):
        checkpoint.load(tmp_path / "ck.npz", deeper)
    for k, t in checkpoint.named_tensors(deeper).items():
        assert np.array_equal(t.value, before[k]), k


def test_save_checks_its_arguments_before_writing(tmp_path):
    p = bpc.param("p", np.arange(3.0))
    path = tmp_path / "ck.npz"
    for step, error in (("seven", TypeError), (2.5, TypeError), (True, TypeError), (-1, ValueError)):
        with pytest.raises(error, match="step"):
            checkpoint.save(path, [p], step=step)
    with pytest.raises(TypeError, match="extra must be a dict"):
        checkpoint.save(path, [p], extra=[1, 2])
    with pytest.raises(ValueError, match="unusable rng_state"):
        checkpoint.save(path, [p], rng_state={"bit_generator": "PCG64", "state": "x"})
    assert not os.listdir(tmp_path)
    checkpoint.save(path, [p], step=np.int64(5))           # numpy ints are ints
    assert checkpoint.read(path).step == 5


def test_big_endian_and_fortran_arrays_load(tmp_path):
    """Written by another NumPy (another machine): converted on reading."""
    good = one_param_checkpoint(tmp_path / "good.npz")
    data = np.asfortranarray(np.arange(6.0).reshape(2, 3)).astype(">f8")
    crafted = rewrite(good, tmp_path / "be.npz",
                      lambda m: m["tensors"][0].update(shape=[2, 3], dtype=">f8"), t0=data)
    target = bpc.param("p", np.zeros((2, 3)))
    checkpoint.load(crafted, [target])
    assert np.array_equal(target.value, np.arange(6.0).reshape(2, 3))


# ----- resuming fit from a crafted checkpoint -----------------------------------------------------

@pytest.fixture(scope="module")
def fit_checkpoint(tmp_path_factory):
    """A checkpoint fit wrote after 1 epoch (with early stopping)."""
    path = tmp_path_factory.mktemp("fit") / "ck.npz"
    X, Y = blobs()
    model, opt = build()
    bpc.fit(model, X, Y, epochs=1, batch_size=32, optimizer=opt, target="interpret", progress=False,
            checkpoint=path, early_stopping=3)
    return path


def resume(path, hidden=8, epochs=2):
    """fit(resume=path) on a fresh model; returns (model, its values before, error or None)."""
    X, Y = blobs()
    model, opt = build(hidden)
    before = {k: t.value.copy() for k, t in checkpoint.named_tensors(model).items()}
    try:
        bpc.fit(model, X, Y, epochs=epochs, batch_size=32, optimizer=opt, target="interpret", progress=False,
                early_stopping=3, resume=path)
    except checkpoint.CheckpointError as e:
        return model, before, e
    return model, before, None


BAD_FIT_STATE = [
    (lambda m: m["extra"].update(epoch=-5), "'epoch' must be an int >= 0, got -5"),
    (lambda m: m["extra"].update(epoch="1"), "'epoch' must be an int >= 0, got '1'"),
    (lambda m: m["extra"].update(epoch=1.0), "'epoch' must be an int"),
    (lambda m: m["extra"].update(history="x"), "'history' must be an object, got 'x'"),
    (lambda m: m["extra"].update(history={"loss": 1.0}), "history 'loss' must be a list of at most 1 numbers"),
    (lambda m: m["extra"]["history"]["loss"].append(0.5), "history 'loss' must be a list of at most 1"),
    (lambda m: m["extra"]["history"]["loss"].__setitem__(0, "low"), "history 'loss' must be a list"),
    (lambda m: m["extra"].update(early_stopping=[1]), "'early_stopping' must be an object"),
    (lambda m: m["extra"]["early_stopping"].update(patience=0), "'early_stopping' must be an object with best"),
    (lambda m: m["extra"]["early_stopping"].update(wait=-1), "early_stopping.wait must be an int >= 0"),
    (lambda m: m["extra"]["early_stopping"].update(best_epoch=7), r"best_epoch must be an int in \[-1, 1\)"),
    (lambda m: m["extra"]["early_stopping"].update(best="low"), "early_stopping.best must be a number"),
    (lambda m: m.update(rng_state=None), "holds no RNG state"),
]


@pytest.mark.parametrize("change, match", BAD_FIT_STATE)
def test_resume_refuses_a_bad_training_state_before_assigning(change, match, fit_checkpoint, tmp_path):
    model, before, error = resume(rewrite(fit_checkpoint, tmp_path / "crafted.npz", change))
    assert error is not None and str(tmp_path / "crafted.npz") in str(error)
    assert re.search(match, str(error)), str(error)
    for k, t in checkpoint.named_tensors(model).items():
        assert np.array_equal(t.value, before[k]), k


def test_resume_from_another_architecture_changes_nothing(fit_checkpoint):
    model, before, error = resume(fit_checkpoint, hidden=9)
    assert "does not match" in str(error)
    for k, t in checkpoint.named_tensors(model).items():
        assert np.array_equal(t.value, before[k]), k


def test_resume_with_no_epoch_left_restores_the_weights(fit_checkpoint):
    model, before, error = resume(fit_checkpoint, epochs=1)   # nothing left to train
    assert error is None
    assert not np.array_equal(model.params[0].value, before["model.0.W"])   # the checkpoint's weights


# ----- leftovers of killed saves -------------------------------------------------------------------

def temp_files(folder):
    return sorted(n for n in os.listdir(folder) if n.startswith(".tmp-"))


def age(path, seconds=3600):
    t = time.time() - seconds
    os.utime(path, (t, t))


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs kill -9")
def test_save_killed_midway_leaves_the_old_file_and_the_next_save_cleans_up(tmp_path):
    path = tmp_path / "ck.npz"
    one_param_checkpoint(path, step=1)
    killed = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import os, signal, sys
        import numpy as np
        import bpc
        os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)     # die with the data half on disk
        bpc.save_checkpoint(sys.argv[1], [bpc.param("p", np.zeros(3))], step=2)
    """), str(path)], capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    leftover, = temp_files(tmp_path)
    assert checkpoint.read(path).step == 1                     # the old checkpoint is intact

    one_param_checkpoint(path, step=3)                         # a recent leftover may be a save starting now
    assert temp_files(tmp_path) == [leftover]
    age(tmp_path / leftover)
    one_param_checkpoint(path, step=4)
    assert temp_files(tmp_path) == [] and checkpoint.read(path).step == 4


@pytest.mark.skipif(bpc.io.fcntl is None, reason="Windows protects open files by refusing to delete them")
def test_a_temp_file_being_written_is_never_removed(tmp_path):
    """Another process writing the same target holds a lock on its file."""
    fd, writing = bpc.io._create_temp(str(tmp_path), "ck.npz")
    try:
        age(writing)                                           # even when not modified for an hour
        one_param_checkpoint(tmp_path / "ck.npz")
        assert os.path.exists(writing)
    finally:
        os.close(fd)                                           # the writer is gone: its lock with it
    one_param_checkpoint(tmp_path / "ck.npz")
    assert not os.path.exists(writing) and temp_files(tmp_path) == []


def test_only_this_targets_temp_files_are_removed(tmp_path):
    keep = [".tmp-abcdefghother.npz", ".tmp-abcdefghxck.npz", ".tmp-abcdefgck.npz", ".tmp-abcdefghck.npz.bak",
            "tmp-abcdefghck.npz", ".tmp-ABCDEFGHck.npz"]
    for name in keep:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / ".tmp-abcdefg1ck.npz").mkdir()                 # the right name, but a folder
    stale = tmp_path / ".tmp-abcdefg2ck.npz"
    stale.write_bytes(b"x")
    for name in keep + [".tmp-abcdefg1ck.npz", stale.name]:
        age(tmp_path / name)
    one_param_checkpoint(tmp_path / "ck.npz")
    assert temp_files(tmp_path) == sorted(n for n in keep + [".tmp-abcdefg1ck.npz"] if n.startswith(".tmp-"))
    assert (tmp_path / "tmp-abcdefghck.npz").exists()


@pytest.mark.skipif(bpc.io.fcntl is None, reason="needs flock")
def test_concurrent_saves_of_one_target_never_remove_each_others_files(tmp_path):
    """Every other process's temporary file is a cleanup candidate here (no
    age guard), so only the writers' locks keep the saves from failing."""
    script = textwrap.dedent("""
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("bpc_io", sys.argv[1])   # bpc.io alone: starts fast
        io = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(io)
        io.STALE_AFTER_S = 0.0
        for i in range(400):
            io.atomic_write_text(sys.argv[2], f"{sys.argv[3]} {i}\\n")
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, bpc.io.__file__, str(tmp_path / "out.txt"), str(k)],
                              stderr=subprocess.PIPE, text=True) for k in range(3)]
    errors = [p.communicate()[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    assert os.listdir(tmp_path) == ["out.txt"]
    assert (tmp_path / "out.txt").read_text().split()[1] == "399"
