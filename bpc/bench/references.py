"""Reference implementations of the benchmark's training step in other
frameworks: a hand-written NumPy step, PyTorch eager and JAX jit.

Each builds the same step as `bpc.bench.steps.sgd_step` on a built-in ReLU
MLP (layer sizes `layers`; mean softmax cross-entropy; plain SGD with
`LR`; He-normal weights, zero biases) or on the built-in `lenet` and
`lstm:T-D-H` (PyTorch and JAX only), and returns a function that runs one step. PyTorch and JAX are optional: `available(name)` says whether one is
installed, and a missing one is skipped by the benchmark with a note. Each
runs in its own process (`bpc.bench.child`), with the thread settings of
`threads` and the environment of `environment`.
"""
import importlib.util
import os

import numpy as np

from .steps import LR

NAMES = ("numpy", "torch", "jax")


def init_params(layers, rng):
    """He-normal float32 weights and zero biases of an MLP with these sizes."""
    Ws = [(rng.normal(size=(a, b)) * np.sqrt(2.0 / a)).astype(np.float32) for a, b in zip(layers[:-1], layers[1:])]
    bs = [np.zeros(b, np.float32) for b in layers[1:]]
    return Ws, bs


def numpy_step(layers, X, Y, lr=LR):
    """A hand-written NumPy SGD step of the ReLU MLP (forward, backward, update)."""
    Ws, bs = init_params(layers, np.random.default_rng(0))
    rows = np.arange(len(X))
    lr = np.float32(lr)

    def step():
        acts = [X]
        h = X
        for i, (W, b) in enumerate(zip(Ws, bs)):
            z = h @ W
            z += b
            h = np.maximum(z, 0, out=z) if i < len(Ws) - 1 else z
            acts.append(h)
        z = acts[-1]
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        loss = -np.log(p[rows, Y]).mean()
        d = p
        d[rows, Y] -= 1
        d /= np.float32(len(X))
        for i in range(len(Ws) - 1, -1, -1):
            gW = acts[i].T @ d
            gb = d.sum(axis=0)
            if i > 0:
                d = (d @ Ws[i].T) * (acts[i] > 0)
            Ws[i] -= lr * gW
            bs[i] -= lr * gb
        return loss
    return step


def torch_step(layers, X, Y, lr=LR):
    """PyTorch eager: autograd, `F.cross_entropy`, in-place SGD under `no_grad`."""
    import torch
    import torch.nn.functional as F
    Ws, bs = init_params(layers, np.random.default_rng(0))
    params = [torch.tensor(a, requires_grad=True) for pair in zip(Ws, bs) for a in pair]
    x, y = torch.from_numpy(X), torch.from_numpy(Y)

    return lambda: _torch_sgd(params, F.cross_entropy(_dense_relu(x, params, torch.relu), y), lr)


def _dense_relu(h, params, relu):
    """h through dense layers (params: W, b, W, b, ...), ReLU between them."""
    for i in range(0, len(params), 2):
        h = h @ params[i] + params[i + 1]
        if i < len(params) - 2:
            h = relu(h)
    return h


def _torch_sgd(params, loss, lr):
    """Backpropagate `loss` and update `params` in place."""
    import torch
    loss.backward()
    with torch.no_grad():
        for p in params:
            p -= lr * p.grad
            p.grad = None
    return loss


def jax_step(layers, X, Y, lr=LR):
    """`jax.jit` of `value_and_grad` + SGD, `block_until_ready` per step."""
    import jax
    import jax.numpy as jnp
    Ws, bs = init_params(layers, np.random.default_rng(0))
    state = [[jnp.asarray(w), jnp.asarray(b)] for w, b in zip(Ws, bs)]
    x, y = jnp.asarray(X), jnp.asarray(Y)

    def loss_fn(params, x, y):
        h = _dense_relu(x, [a for pair in params for a in pair], jax.nn.relu)
        logp = jax.nn.log_softmax(h)
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    @jax.jit
    def update(params, x, y):
        loss, g = jax.value_and_grad(loss_fn)(params, x, y)
        return jax.tree_util.tree_map(lambda p, d: p - lr * d, params, g), loss

    box = [state]

    def step():
        box[0], loss = update(box[0], x, y)
        return loss.block_until_ready()
    return step


STEPS = {"numpy": numpy_step, "torch": torch_step, "jax": jax_step}


# ----- LeNet (the built-in `lenet` model) --------------------------------------------------------
# conv 5x5 (1 -> 6, padding 2) - ReLU - max pool 2 - conv 5x5 (6 -> 16) - ReLU - max pool 2 -
# dense 400 -> 120 - ReLU - dense 120 -> 84 - ReLU - dense 84 -> 10; input (N, 1, 28, 28).

def lenet_params(rng):
    """He-normal conv (OIHW) and dense weights, zero biases, in layer order."""
    shapes = [(6, 1, 5, 5), (16, 6, 5, 5), (400, 120), (120, 84), (84, 10)]
    params = []
    for shape in shapes:
        fan_in = int(np.prod(shape[1:])) if len(shape) == 4 else shape[0]
        params += [(rng.normal(size=shape) * np.sqrt(2.0 / fan_in)).astype(np.float32),
                   np.zeros(shape[0] if len(shape) == 4 else shape[1], np.float32)]
    return params


def torch_lenet_step(X, Y, lr=LR):
    """PyTorch eager LeNet: autograd, `F.cross_entropy`, in-place SGD."""
    import torch
    import torch.nn.functional as F
    params = [torch.tensor(a, requires_grad=True) for a in lenet_params(np.random.default_rng(0))]
    x, y = torch.from_numpy(X), torch.from_numpy(Y)

    def step():
        c1, b1, c2, b2, *dense = params
        h = F.max_pool2d(torch.relu(F.conv2d(x, c1, b1, padding=2)), 2)
        h = F.max_pool2d(torch.relu(F.conv2d(h, c2, b2)), 2).reshape(len(X), -1)
        return _torch_sgd(params, F.cross_entropy(_dense_relu(h, dense, torch.relu), y), lr)
    return step


def jax_lenet_step(X, Y, lr=LR):
    """`jax.jit` of the LeNet loss's `value_and_grad` + SGD."""
    import jax
    import jax.numpy as jnp
    x, y = jnp.asarray(X), jnp.asarray(Y)

    def conv(h, w, b, pad):
        return jax.lax.conv_general_dilated(h, w, (1, 1), [(pad, pad), (pad, pad)]) + b[None, :, None, None]

    def pool(h):
        return jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")

    def loss_fn(params, x, y):
        c1, b1, c2, b2, *dense = params
        h = pool(jax.nn.relu(conv(x, c1, b1, 2)))
        h = pool(jax.nn.relu(conv(h, c2, b2, 0))).reshape(x.shape[0], -1)
        logp = jax.nn.log_softmax(_dense_relu(h, dense, jax.nn.relu))
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    @jax.jit
    def update(params, x, y):
        loss, g = jax.value_and_grad(loss_fn)(params, x, y)
        return [p - lr * d for p, d in zip(params, g)], loss

    box = [[jnp.asarray(a) for a in lenet_params(np.random.default_rng(0))]]

    def step():
        box[0], loss = update(box[0], x, y)
        return loss.block_until_ready()
    return step


LENET_STEPS = {"torch": torch_lenet_step, "jax": jax_lenet_step}


# ----- LSTM (the built-in `lstm:T-D-H` model) ----------------------------------------------------
# An LSTM (PyTorch's layout and gate order) over (N, T, D) sequences, its final hidden state
# through dense H -> 2; mean softmax cross-entropy; SGD.

def lstm_params(features, hidden, rng):
    """W_ih (4H, D), W_hh (4H, H), b_ih, b_hh drawn from U(-1/sqrt(H), 1/sqrt(H)), then dense W, b."""
    k = 1.0 / np.sqrt(hidden)
    shapes = [(4 * hidden, features), (4 * hidden, hidden), (4 * hidden,), (4 * hidden,), (hidden, 2), (2,)]
    return [rng.uniform(-k, k, shape).astype(np.float32) for shape in shapes]


def torch_lstm_step(X, Y, hidden, lr=LR):
    """PyTorch eager: `nn.LSTM` (its fused CPU kernels), `nn.Linear`, autograd, in-place SGD."""
    import torch
    import torch.nn.functional as F
    lstm = torch.nn.LSTM(X.shape[2], hidden, batch_first=True)
    out = torch.nn.Linear(hidden, 2)
    w_ih, w_hh, b_ih, b_hh, W, b = lstm_params(X.shape[2], hidden, np.random.default_rng(0))
    with torch.no_grad():
        for t, a in ((lstm.weight_ih_l0, w_ih), (lstm.weight_hh_l0, w_hh), (lstm.bias_ih_l0, b_ih),
                     (lstm.bias_hh_l0, b_hh), (out.weight, W.T), (out.bias, b)):
            t.copy_(torch.from_numpy(np.ascontiguousarray(a)))
    params = list(lstm.parameters()) + list(out.parameters())
    x, y = torch.from_numpy(X), torch.from_numpy(Y)

    def step():
        _, (h, _) = lstm(x)
        return _torch_sgd(params, F.cross_entropy(out(h[0]), y), lr)
    return step


def jax_lstm_step(X, Y, hidden, lr=LR):
    """`jax.jit` of `value_and_grad` of an LSTM written with `lax.scan` + SGD."""
    import jax
    import jax.numpy as jnp
    x, y = jnp.asarray(np.ascontiguousarray(X.transpose(1, 0, 2))), jnp.asarray(Y)   # time-major for scan

    def loss_fn(params, x, y):
        w_ih, w_hh, b_ih, b_hh, W, b = params
        projected = x @ w_ih.T + b_ih          # every step's input projection in one product

        def cell(carry, xi):
            h, c = carry
            i, f, g, o = jnp.split(xi + h @ w_hh.T + b_hh, 4, axis=-1)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (h, c), None
        zeros = jnp.zeros((x.shape[1], hidden), x.dtype)
        (h, _), _ = jax.lax.scan(cell, (zeros, zeros), projected)
        logp = jax.nn.log_softmax(h @ W + b)
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    @jax.jit
    def update(params, x, y):
        loss, g = jax.value_and_grad(loss_fn)(params, x, y)
        return [p - lr * d for p, d in zip(params, g)], loss

    box = [[jnp.asarray(a) for a in lstm_params(X.shape[2], hidden, np.random.default_rng(0))]]

    def step():
        box[0], loss = update(box[0], x, y)
        return loss.block_until_ready()
    return step


LSTM_STEPS = {"torch": torch_lstm_step, "jax": jax_lstm_step}


def available(name):
    """Whether the framework `name` is installed (NumPy always is)."""
    return name == "numpy" or importlib.util.find_spec(name) is not None


def threads(name, n):
    """Apply n threads (when given) in a comparison process; returns the
    thread settings it runs with."""
    if name == "torch":
        import torch
        if n:
            torch.set_num_threads(n)
        return {"torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads()}
    if name == "jax":
        import jax
        return {"jax_devices": [str(d) for d in jax.devices()], "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")}
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
    except ImportError:   # optional: OPENBLAS_NUM_THREADS, set for the process, still applies
        return {"blas_threads": "threadpoolctl not installed"}
    if n:
        threadpool_limits(n, user_api="blas")
    return {"blas_threads": [p["num_threads"] for p in threadpool_info()]}


def environment(name, env, threads=None):
    """Set in `env` (a child's environment) what framework `name` needs:
    JAX on the CPU, and XLA's single-thread flags for one thread."""
    if name == "jax":
        env.setdefault("JAX_PLATFORMS", "cpu")
        if threads == 1:
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                                " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1").strip()
    return env
