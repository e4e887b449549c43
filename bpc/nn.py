"""Layers built on bpc's graph API: Dense, Conv2d, MaxPool2d, AvgPool2d,
Flatten, Dropout, Embedding, LayerNorm, recurrent cells and layers
(RNNCell, LSTMCell, GRUCell; SimpleRNN, LSTM, GRU over sequences with
`bpc.scan`), Sequential.

A layer (a `Module`) holds parameters and builds graph nodes when called:
`layer(x, training)` returns the output tensor for input tensor `x`.
Calling a model with `training=False` builds its inference graph (dropout is
the identity) and with `training=True` its training graph; both share the
same parameters. `model.predict(X)` compiles the inference graph once per
target and runs it on NumPy data.

    model = bpc.nn.Sequential([
        bpc.nn.Dense(64, 64, "relu", seed=0),
        bpc.nn.Dropout(0.1, seed=1),
        bpc.nn.Dense(64, 10, seed=2),
    ])
    logits = model(x, training=True)
"""

import math

import numpy as np

from . import ops
from .errors import ShapeError
from .data import check_int, check_number
from .function import function
from .graph.tensor import Tensor, input, param, state, format_shape
from .optim import global_square_norm

ACTIVATIONS = {
    None: None, "linear": None,
    "relu": ops.relu, "tanh": ops.tanh, "sigmoid": ops.sigmoid, "leaky_relu": ops.leaky_relu,
    "softplus": ops.softplus, "softmax": ops.softmax, "log_softmax": ops.log_softmax,
}

_counters = {}


def _default_name(prefix):
    _counters[prefix] = _counters.get(prefix, 0) + 1
    return f"{prefix}_{_counters[prefix]}"


def _check_name(name, prefix):
    if name is None:
        return _default_name(prefix)
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"{prefix}: name must be a Python identifier (it prefixes parameter names), "
                         f"got {name!r}")
    return name


class Module:
    """Base class of layers and models.

    Subclasses implement `__call__(x, training=False) -> Tensor` and, when
    they hold tensors, `named_params()` / `named_state()`: dicts keyed by a
    name that is stable across rebuilds of the same architecture (used by
    checkpoints)."""

    name = "module"

    def __call__(self, x, training=False):
        raise NotImplementedError

    def logits(self, x, training=False):
        """The model's output for input tensor `x`: its training graph when
        `training`, else its inference graph (what a loss takes: logits for
        the classification losses)."""
        return self(x, training=training)

    def named_params(self):
        """Trainable parameters keyed by a stable name."""
        return {}

    def _layer(self):
        """How errors name the layer: "Dense 'fc1'"."""
        return f"{type(self).__name__} '{self.name}'"

    def _expect_tensors(self, *xs):
        for x in xs:
            if not isinstance(x, Tensor):
                raise TypeError(f"{self._layer()}: expected a bpc tensor, got {type(x).__name__}")

    def named_state(self):
        """Non-trainable `bpc.state` buffers (dropout counters) keyed by a stable name."""
        return {}

    @property
    def params(self):
        """The trainable parameters (`bpc.param` tensors), in a fixed order."""
        return list(self.named_params().values())

    @property
    def state(self):
        """The non-trainable state buffers the model's training graph updates."""
        return list(self.named_state().values())

    @property
    def dtype(self):
        """The float dtype of the parameters (float32 if there are none)."""
        ps = self.params
        return ps[0].dtype if ps else np.dtype("float32")

    @property
    def input_dtype(self):
        """The dtype of the inputs the model takes: its float dtype, or
        int64 for models that start with an Embedding (token ids)."""
        return self.dtype

    def predict(self, X, batch_size=1024, target=None):
        """The inference-mode output for NumPy inputs `X`, computed in chunks
        of `batch_size` rows by a function compiled once per target."""
        X = np.asarray(X)
        if X.ndim < 1 or len(X) == 0:
            raise ValueError(f"{self.name}.predict: X must have at least one row, got shape {X.shape}")
        check_int(batch_size, f"{self.name}.predict: batch_size")
        cache = self.__dict__.setdefault("_predict_fns", {})
        key = (target, X.shape[1:])
        if key not in cache:
            x = input("x", (None,) + X.shape[1:], dtype=self.input_dtype)
            cache[key] = function([x], self(x, training=False), target=target, name="predict")
        fn = cache[key]
        X = X.astype(self.input_dtype, copy=False)
        return np.concatenate([fn(X[i:i + batch_size]) for i in range(0, len(X), batch_size)])

    def __repr__(self):
        return f"<bpc.nn.{type(self).__name__} {self.name}>"


class Dense(Module):
    """A fully connected layer: activation(x @ W + b), over the last axis
    of x, so a (batch, T, in) input gives (batch, T, out) (one product over
    all rows on cpu).

    `activation` is None (linear), a name in `bpc.nn.ACTIVATIONS` or a
    callable on tensors. `init` names the weight initializer (default:
    "he_normal" for relu-like activations, "glorot_uniform" otherwise); the
    bias starts at zero. Parameters are named `<name>_W` and `<name>_b`."""

    def __init__(self, in_features, out_features, activation=None, init=None, bias=True, seed=None,
                 name=None, dtype="float32"):
        self.in_features = check_int(in_features, "Dense: in_features")
        self.out_features = check_int(out_features, "Dense: out_features")
        self.name = _check_name(name, "dense")
        self.activation = self._activation(activation)
        if init is None:
            init = "he_normal" if activation in ("relu", "leaky_relu") else "glorot_uniform"
        self.W = param(f"{self.name}_W", (self.in_features, self.out_features), init=init, seed=seed,
                       dtype=dtype)
        self.b = param(f"{self.name}_b", (self.out_features,), init="zeros", dtype=dtype) if bias else None

    def _activation(self, activation):
        return _activation(activation, f"Dense '{self.name}'")

    def __call__(self, x, training=False):
        self._expect_tensors(x)
        if x.ndim < 2 or x.shape[-1] != self.in_features:
            raise ShapeError(f"Dense '{self.name}' expects a (batch, {self.in_features}) input (or (batch, ..., "
                             f"{self.in_features}): each position), got '{x.name}' of shape {format_shape(x.shape)}")
        out = x @ self.W
        if self.b is not None:
            out = out + self.b
        return out if self.activation is None else self.activation(out)

    def named_params(self):
        return {"W": self.W} if self.b is None else {"W": self.W, "b": self.b}


def _activation(activation, layer):
    if callable(activation):
        return activation
    if isinstance(activation, str) or activation is None:
        if activation in ACTIVATIONS:
            return ACTIVATIONS[activation]
    names = ", ".join(repr(k) for k in ACTIVATIONS if k is not None)
    raise ValueError(f"{layer}: unknown activation {activation!r}; expected None, one of {names}, or a callable")


def _check_image(module, x, channels=None):
    """x must be an NCHW bpc tensor (with `channels` channels)."""
    module._expect_tensors(x)
    layer = module._layer()
    if x.ndim != 4 or (channels is not None and x.shape[1] != channels):
        want = f"(batch, {channels}, height, width)" if channels is not None else "(batch, channels, height, width)"
        raise ShapeError(f"{layer} expects a {want} input, got '{x.name}' of shape {format_shape(x.shape)}")


class Conv2d(Module):
    """A 2-d convolution layer: activation(conv2d(x, W) + b) on NCHW inputs,
    weights (out_channels, in_channels / groups, kh, kw) as in PyTorch.
    `kernel_size`, `stride`, `dilation`: an int or a pair; `padding` also
    "same" or "valid". `init` names the weight initializer (default:
    "he_normal" for relu-like activations, "glorot_uniform" otherwise, with
    fan-in in_channels/groups*kh*kw); the bias starts at zero. Parameters
    are named `<name>_W` and `<name>_b`."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 activation=None, init=None, bias=True, seed=None, name=None, dtype="float32"):
        self.in_channels = check_int(in_channels, "Conv2d: in_channels")
        self.out_channels = check_int(out_channels, "Conv2d: out_channels")
        self.groups = check_int(groups, "Conv2d: groups")
        self.name = _check_name(name, "conv")
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(f"Conv2d '{self.name}': groups={groups} must divide in_channels ({in_channels}) "
                             f"and out_channels ({out_channels})")
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, (int, np.integer)) else tuple(kernel_size)
        self.kernel_size = (check_int(kh, "Conv2d: kernel_size"), check_int(kw, "Conv2d: kernel_size"))
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.activation = _activation(activation, f"Conv2d '{self.name}'")
        if init is None:
            init = "he_normal" if activation in ("relu", "leaky_relu") else "glorot_uniform"
        self.W = param(f"{self.name}_W", (self.out_channels, self.in_channels // self.groups) + self.kernel_size,
                       init=init, seed=seed, dtype=dtype)
        self.b = param(f"{self.name}_b", (self.out_channels,), init="zeros", dtype=dtype) if bias else None

    def __call__(self, x, training=False):
        _check_image(self, x, self.in_channels)
        out = ops.conv2d(x, self.W, stride=self.stride, padding=self.padding, dilation=self.dilation,
                         groups=self.groups)
        if self.b is not None:
            out = out + ops.reshape(self.b, (self.out_channels, 1, 1))
        return out if self.activation is None else self.activation(out)

    def named_params(self):
        return {"W": self.W} if self.b is None else {"W": self.W, "b": self.b}


class _Pool2d(Module):
    pool = None   # the op: bpc.max_pool2d or bpc.avg_pool2d

    def __init__(self, size, stride=None, padding=0, name=None):
        self.size, self.stride, self.padding = size, stride, padding
        self.name = _check_name(name, type(self).__name__.lower())

    def __call__(self, x, training=False):
        _check_image(self, x)
        return type(self).pool(x, self.size, self.stride, self.padding)


class MaxPool2d(_Pool2d):
    """Max pooling over `size` windows moved by `stride` (default: `size`)."""
    pool = ops.max_pool2d


class AvgPool2d(_Pool2d):
    """Average pooling over `size` windows moved by `stride` (default: `size`)."""
    pool = ops.avg_pool2d


class Embedding(Module):
    """Rows of a (vocab, dim) table for integer token ids: (batch, T) ids
    give (batch, T, dim) vectors (`bpc.take`). `weights`: the initial table
    (pretrained word vectors, say), else N(0, 1) entries as in PyTorch;
    `trainable=False` keeps it a constant. An id outside [0, vocab) in the
    input is an error at call time. Its parameter is `<name>_table`."""

    def __init__(self, vocab, dim, weights=None, trainable=True, seed=None, name=None, dtype="float32"):
        self.vocab = check_int(vocab, "Embedding: vocab")
        self.dim = check_int(dim, "Embedding: dim")
        self.name = _check_name(name, "embedding")
        if weights is None:
            value = np.random.default_rng(seed).standard_normal((self.vocab, self.dim))
        else:
            value = np.asarray(weights)
            if value.shape != (self.vocab, self.dim):
                raise ShapeError(f"Embedding '{self.name}': weights have shape {value.shape}, expected "
                                 f"({self.vocab}, {self.dim})")
        value = value.astype(dtype)
        self.trainable = bool(trainable)
        self.table = param(f"{self.name}_table", value) if self.trainable else ops.lift(value)
        self._dtype = np.dtype(dtype)

    @property
    def dtype(self):
        return self._dtype

    @property
    def input_dtype(self):
        return np.dtype("int64")

    def __call__(self, ids, training=False):
        self._expect_tensors(ids)
        if ids.dtype.kind not in "iu":
            raise ShapeError(f"Embedding '{self.name}' expects integer token ids, got '{ids.name}' of dtype "
                             f"{ids.dtype.name}")
        return ops.take(self.table, ids)

    def named_params(self):
        return {"table": self.table} if self.trainable else {}


class LayerNorm(Module):
    """Normalizes each example over its last axis: (x - mean) / sqrt(var +
    eps) * gain + bias, as PyTorch's LayerNorm over one trailing dimension
    (biased variance; gain starts at 1, bias at 0). Parameters are
    `<name>_gain` and `<name>_bias`."""

    def __init__(self, dim, eps=1e-5, name=None, dtype="float32"):
        self.dim = check_int(dim, "LayerNorm: dim")
        self.eps = check_number(eps, "LayerNorm: eps", 0.0, low_open=True)
        self.name = _check_name(name, "layernorm")
        self.gain = param(f"{self.name}_gain", np.ones(self.dim, dtype=dtype))
        self.bias = param(f"{self.name}_bias", np.zeros(self.dim, dtype=dtype))

    def __call__(self, x, training=False):
        self._expect_tensors(x)
        if x.ndim < 1 or x.shape[-1] != self.dim:
            raise ShapeError(f"LayerNorm '{self.name}' normalizes a last axis of {self.dim}, got '{x.name}' of "
                             f"shape {format_shape(x.shape)}")
        centered = x - ops.mean(x, axis=-1, keepdims=True)
        var = ops.mean(centered * centered, axis=-1, keepdims=True)
        return centered / ops.sqrt(var + self.eps) * self.gain + self.bias

    def named_params(self):
        return {"gain": self.gain, "bias": self.bias}


class _RecurrentCell(Module):
    """One time step of a recurrent layer, with PyTorch's parameter layout:
    `<name>_weight_ih` (gates*hidden, input), `<name>_weight_hh` (gates*hidden,
    hidden) and biases `<name>_bias_ih`, `<name>_bias_hh` (gates*hidden),
    the gates stacked in PyTorch's order, all drawn from U(-1/sqrt(hidden),
    1/sqrt(hidden)) as PyTorch does. `cell(x, state)` maps an input
    (batch, input) and the state to the next state."""

    gates = 1

    def __init__(self, input_size, hidden_size, seed=None, name=None, dtype="float32"):
        self.input_size = check_int(input_size, f"{type(self).__name__}: input_size")
        self.hidden_size = check_int(hidden_size, f"{type(self).__name__}: hidden_size")
        self.name = _check_name(name, type(self).__name__.lower())
        rng = np.random.default_rng(seed)
        bound = 1.0 / math.sqrt(self.hidden_size)
        rows = self.gates * self.hidden_size

        def draw(key, shape):
            return param(f"{self.name}_{key}", rng.uniform(-bound, bound, shape).astype(dtype))
        self.weight_ih = draw("weight_ih", (rows, self.input_size))
        self.weight_hh = draw("weight_hh", (rows, self.hidden_size))
        self.bias_ih = draw("bias_ih", (rows,))
        self.bias_hh = draw("bias_hh", (rows,))

    def named_params(self):
        return {"weight_ih": self.weight_ih, "weight_hh": self.weight_hh, "bias_ih": self.bias_ih,
                "bias_hh": self.bias_hh}

    def _check(self, x, *states):
        self._expect_tensors(x, *states)
        for t, width, what in [(x, self.input_size, "input")] + [(h, self.hidden_size, "state") for h in states]:
            if t.ndim != 2 or t.shape[1] != width:
                raise ShapeError(f"{self._layer()} expects a (batch, {width}) {what}, got "
                                 f"'{t.name}' of shape {format_shape(t.shape)}")

    def __call__(self, x, state, training=False):
        """The next state from an input (batch, input) and the state."""
        self._check(x, *(state if isinstance(state, (tuple, list)) else (state,)))
        return self.step(x @ self.weight_ih.T + self.bias_ih, state)

    def step(self, xi, state):
        """The next state from the input's projection x W_ihᵀ + b_ih (which a
        layer computes for every time step in one product) and the state."""
        raise NotImplementedError

    def _hidden(self, h, xi):
        """h W_hhᵀ + b_hh, and xi, each split into the gates."""
        hh = h @ self.weight_hh.T + self.bias_hh
        return (ops.split(xi, self.gates, axis=-1), ops.split(hh, self.gates, axis=-1)) if self.gates > 1 \
            else (xi, hh)


class RNNCell(_RecurrentCell):
    """h' = tanh(x W_ihᵀ + b_ih + h W_hhᵀ + b_hh) (PyTorch's `nn.RNNCell`)."""

    def step(self, xi, h):
        xi, hh = self._hidden(h, xi)
        return ops.tanh(xi + hh)


class LSTMCell(_RecurrentCell):
    """PyTorch's `nn.LSTMCell`, gates in its order (input, forget, cell,
    output): `cell(x, (h, c)) -> (h', c')` with c' = f*c + i*g and
    h' = o*tanh(c')."""

    gates = 4

    def step(self, xi, state):
        h, c = state
        # The gates' pre-activations summed before the split: one buffer cut
        # into four, rather than eight slices added pairwise.
        i, f, g, o = ops.split(xi + h @ self.weight_hh.T + self.bias_hh, 4, axis=-1)
        c_next = ops.sigmoid(f) * c + ops.sigmoid(i) * ops.tanh(g)
        return ops.sigmoid(o) * ops.tanh(c_next), c_next


class GRUCell(_RecurrentCell):
    """PyTorch's `nn.GRUCell`, gates in its order (reset, update, new):
    n = tanh(x W_inᵀ + b_in + r * (h W_hnᵀ + b_hn)), h' = (1 - z) * n + z * h."""

    gates = 3

    def step(self, xi, h):
        (xr, xz, xn), (hr, hz, hn) = self._hidden(h, xi)
        r, z = ops.sigmoid(xr + hr), ops.sigmoid(xz + hz)
        n = ops.tanh(xn + r * hn)
        return (1.0 - z) * n + z * h


class _Recurrent(Module):
    """A recurrent layer over sequences (batch, time, input): its cell run by
    `bpc.scan`, so the loop compiles once whatever the length. The input's
    projection x W_ihᵀ + b_ih is one product over every step, before the
    loop; each step computes h W_hhᵀ + b_hh and the gates. Parameters are
    the cell's (PyTorch's layout: `layer.cell.weight_ih`, ...).

    `layer(x, mask=None, state=None)`: `mask` (batch, time), 1 at real
    steps and 0 at padding, freezes the state over padded steps (so the
    final state is that of each sequence's last real step, as with
    PyTorch's packed sequences) and zeroes their outputs; `state` is the
    initial state (zeros by default). Returns the outputs of every step
    (batch, time, hidden) with `return_sequences`, else the final hidden
    state (batch, hidden); with `return_state`, also the final state."""

    cell_class = None

    def __init__(self, input_size, hidden_size, return_sequences=False, return_state=False, reverse=False,
                 seed=None, name=None, dtype="float32"):
        self.name = _check_name(name, type(self).__name__.lower())
        self.cell = self.cell_class(input_size, hidden_size, seed=seed, name=self.name, dtype=dtype)
        self.input_size, self.hidden_size = self.cell.input_size, self.cell.hidden_size
        self.return_sequences, self.return_state = bool(return_sequences), bool(return_state)
        self.reverse = bool(reverse)

    def named_params(self):
        return self.cell.named_params()

    def _zero_state(self, x):
        zero = ops.broadcast_to(ops.lift(np.zeros((), x.dtype)), (x.shape[0], self.hidden_size))
        return (zero, zero) if self.cell.gates == 4 else zero

    def __call__(self, x, mask=None, state=None, training=False):
        self._expect_tensors(x)
        if x.ndim != 3 or x.shape[2] != self.input_size:
            raise ShapeError(f"{self._layer()} expects sequences (batch, time, {self.input_size}), got "
                             f"'{x.name}' of shape {format_shape(x.shape)}")
        # Time-major (time, batch, ...) from here on: the input's projection
        # is one product over all steps, written where the scan reads each
        # step's slice, and the weight's gradient one product over the
        # steps' rows, all contiguous.
        steps = ops.scan_materialize(ops.transpose(x, (1, 0, 2)))
        xs = [ops.matmul(steps, self.cell.weight_ih.T) + self.cell.bias_ih]
        if mask is not None:
            self._expect_tensors(mask)
            if mask.shape != x.shape[:2]:
                raise ShapeError(f"{self._layer()}: the mask must be (batch, time) = {format_shape(x.shape[:2])}, "
                                 f"got '{mask.name}' of shape {format_shape(mask.shape)}")
            xs.append(ops.reshape(ops.transpose(ops.cast(mask, x.dtype)), (x.shape[1], x.shape[0], 1)))
        init = self._zero_state(x) if state is None else state
        cell = self.cell

        def step(carry, inputs):
            new = cell.step(inputs[0], carry)
            h = new[0] if isinstance(new, tuple) else new
            if mask is None:
                return new, h
            m = inputs[1]
            keep = lambda a, b: m * a + (1.0 - m) * b
            frozen = tuple(keep(a, b) for a, b in zip(new, carry)) if isinstance(new, tuple) else keep(new, carry)
            return frozen, m * h
        final, ys = ops.scan(step, init, xs, axis=0, reverse=self.reverse)
        out = ops.transpose(ys, (1, 0, 2)) if self.return_sequences else \
            (final[0] if isinstance(final, tuple) else final)
        return (out, final) if self.return_state else out


class SimpleRNN(_Recurrent):
    """A tanh RNN over sequences (PyTorch's `nn.RNN`, one layer)."""
    cell_class = RNNCell


class LSTM(_Recurrent):
    """An LSTM over sequences (PyTorch's `nn.LSTM`, one layer); the state is (h, c)."""
    cell_class = LSTMCell


class GRU(_Recurrent):
    """A GRU over sequences (PyTorch's `nn.GRU`, one layer)."""
    cell_class = GRUCell


class Flatten(Module):
    """(batch, d1, d2, ...) -> (batch, d1*d2*...), before Dense layers."""

    def __init__(self, name=None):
        self.name = _check_name(name, "flatten")

    def __call__(self, x, training=False):
        self._expect_tensors(x)
        return ops.flatten(x)


class Dropout(Module):
    """Dropout (`bpc.dropout`): during training, zero each element with
    probability `rate` and scale the rest by 1/(1-rate); the identity at
    inference. Masks come from a counter-based generator seeded by `seed`;
    the counter advances after every call of a compiled training step, and
    the layer owns it, so a rebuilt training graph continues the same mask
    sequence and checkpoints save it (key "counter")."""

    def __init__(self, rate, seed=0, name=None):
        self.rate = check_number(rate, "Dropout: rate", 0.0, 1.0, high_open=True)
        self.seed = check_int(seed, "Dropout: seed", low=0)
        self.name = _check_name(name, "dropout")
        # The layer owns its mask counter, so checkpoints hold it and every
        # training graph built from the layer continues the same sequence.
        self._counter = state(f"{self.name}_counter", np.int64(0), counter=True)

    def __call__(self, x, training=False):
        return ops.dropout(x, self.rate, self.seed, training=training, counter=self._counter)

    def named_state(self):
        return {"counter": self._counter}


class Sequential(Module):
    """Layers applied in order. Items are Modules or plain functions of one
    tensor (e.g. `bpc.relu`). Parameter keys are "<index>.<key>"."""

    def __init__(self, layers, name=None):
        layers = list(layers)
        if not layers:
            raise ValueError("Sequential: needs at least one layer")
        for i, layer in enumerate(layers):
            if not callable(layer):
                raise TypeError(f"Sequential: layer {i} is a {type(layer).__name__}, not a Module or function")
        self.name = _check_name(name, "sequential")
        self.layers = layers

    def __call__(self, x, training=False):
        for layer in self.layers:
            x = layer(x, training=training) if isinstance(layer, Module) else layer(x)
        return x

    @property
    def input_dtype(self):
        first = self.layers[0]
        return first.input_dtype if isinstance(first, Module) else self.dtype

    def _named(self, method):
        return {f"{i}.{k}": t for i, layer in enumerate(self.layers) if isinstance(layer, Module)
                for k, t in getattr(layer, method)().items()}

    def named_params(self):
        return self._named("named_params")

    def named_state(self):
        return self._named("named_state")


def l2_penalty(params, coeff):
    """coeff * (sum of the squares of every parameter element): add it to a
    loss for L2 regularization (its gradient is 2 coeff p)."""
    params = [params] if isinstance(params, Tensor) else list(params)
    if not params:
        raise ValueError("l2_penalty: no parameters given")
    return check_number(coeff, "l2_penalty: coeff", 0.0) * global_square_norm(params)
