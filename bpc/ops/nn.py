"""Neural-network ops: softmax family, labels, losses, dropout.

Most are compositions of the primitive ops, so their gradients follow from
the primitives' rules and their loops fuse like any other elementwise chain
and reduction. Only the random numbers of dropout need a primitive.
"""
import numpy as np

from ..errors import ShapeError
from ..graph.tensor import state, as_dtype, format_shape
from .core import Op, checking, lift, require_float
from .elementwise import exp, log, equal, greater_equal, greater, where, softplus, stop_gradient, _cast
from .structural import sum, mean, max, reshape


def log_softmax(x, axis=-1):
    """log(softmax(x)), computed stably by subtracting the row maximum (a
    constant shift: softmax is invariant to it, so no gradient flows there)."""
    x = lift(x)
    with checking("log_softmax", x):
        require_float([x], "log_softmax")
    z = x - stop_gradient(max(x, axis, keepdims=True))
    return z - log(sum(exp(z), axis, keepdims=True))


def softmax(x, axis=-1):
    """exp(x) / sum(exp(x)) along `axis`, computed stably."""
    x = lift(x)
    with checking("softmax", x):
        require_float([x], "softmax")
    e = exp(x - stop_gradient(max(x, axis, keepdims=True)))
    return e / sum(e, axis, keepdims=True)


def one_hot(labels, depth, dtype="float32"):
    """Rows of 0/1 with a 1 at each integer label: shape labels.shape + (depth,).

    A label outside [0, depth) gives an all-zero row; when `labels` is an
    input, a function whose graph holds this one_hot checks the range of
    that argument first and raises instead (the requirement is recorded on
    the cast node built here, `label_depth`, never on the input itself).
    """
    labels = lift(labels)
    if labels.dtype.kind not in "iu":
        with checking("one_hot", labels):
            raise ShapeError(f"labels must be integers, '{labels.name}' is {labels.dtype.name}")
    dt = as_dtype(dtype)
    column = reshape(_cast(labels, dtype=dt.name, label_depth=int(depth)), labels.shape + (1,))
    return equal(column, lift(np.arange(depth, dtype=dt)))


def _label_targets(logits, labels):
    labels = lift(labels)
    with checking("softmax_cross_entropy", logits, labels):
        if labels.dtype.kind in "iu":
            if labels.shape != logits.shape[:-1]:
                raise ShapeError(f"integer labels must have shape {format_shape(logits.shape[:-1])} "
                                 f"(logits without the class axis), got {format_shape(labels.shape)}")
            return one_hot(labels, logits.shape[-1], logits.dtype)
        if labels.shape != logits.shape:
            raise ShapeError(f"probability targets must have the logits' shape "
                             f"{format_shape(logits.shape)}, got {format_shape(labels.shape)}")
    return labels


def softmax_cross_entropy(logits, labels):
    """Mean over the batch of -log softmax(logits)[label].

    `labels` are integer class indices (shape logits.shape[:-1]) or target
    probabilities (the logits' shape)."""
    logits = lift(logits)
    targets = _label_targets(logits, labels)
    return -mean(sum(targets * log_softmax(logits), axis=-1))


def binary_cross_entropy_with_logits(logits, targets):
    """Mean of -t log sigmoid(x) - (1-t) log(1-sigmoid(x)), written stably as
    softplus(x) - x t."""
    logits = lift(logits)
    targets = lift(targets, logits)
    return mean(softplus(logits) - logits * targets)


def mse(prediction, target):
    """Mean squared error."""
    prediction = lift(prediction)
    diff = prediction - lift(target, prediction)
    return mean(diff * diff)


def kl_div(p, q, axis=-1):
    """KL(p || q) = sum p (log p - log q) along `axis`, averaged over the other
    axes. p and q are probabilities; terms with p = 0 count as 0."""
    p = lift(p)
    q = lift(q, p)
    present = greater(p, 0.0)
    safe_p = where(present, p, 1.0)  # log(1) = 0 where p = 0, and no NaN gradient
    return mean(sum(p * log(safe_p) - p * log(q), axis))


# ----- dropout -------------------------------------------------------------------

_M31 = 0x7FFFFFFF


def uniform_hash(seed, counter, index):
    """Counter-based random numbers in [0, 1): a pure function of (seed,
    counter, element index), so every target draws the same mask whatever
    its threading, and no generator state travels between steps. Written
    with int64 operations that never overflow (each product < 2**62); it runs
    on NumPy arrays and, compiled, on scalars."""
    h = ((seed & _M31) * 1103515245 + 12345) & _M31
    h = ((h ^ (counter & _M31)) * 73244475) & _M31
    h = ((h ^ (h >> 16) ^ (index & _M31)) * 73244475) & _M31
    h = ((h ^ (h >> 16)) * 73244475) & _M31
    h = h ^ (h >> 16)
    return h * (1.0 / 2147483648.0)


def _uniform_np(attrs, shape, counter):
    index = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)
    return uniform_hash(np.int64(attrs["seed"]), np.int64(counter), index).astype(attrs["dtype"])


random_uniform = Op(
    "random_uniform", "other",
    lambda inputs, attrs: (attrs["shape"], np.dtype(attrs["dtype"])),
    _uniform_np, lambda n, g: (None,),
    doc="Uniform [0, 1) numbers of a given shape from (seed, counter, index).", kernel="random", pure=False)


def dropout(x, rate=0.5, seed=0, training=True, counter=None):
    """Zero each element with probability `rate` and scale the rest by
    1/(1-rate) when training; the identity otherwise.

    The mask comes from a counter-based generator: `counter` is a state
    made with `bpc.state(name, 0, counter=True)` (one is made when None is
    given), which every function that runs this graph advances after each
    call, so each step draws a new mask, and the sequence is the same on
    every target for a seed. Pass a counter you own to checkpoint it."""
    x = lift(x)
    with checking("dropout", x):
        require_float([x], "dropout")
        if not 0.0 <= rate < 1.0:
            raise ShapeError(f"rate must be in [0, 1), got {rate}")
    if not training or rate == 0.0:
        return x
    if counter is None:
        counter = state(f"dropout_counter_{x.name}", np.int64(0), counter=True)
    elif not getattr(counter, "counter", False) or counter.shape != ():
        with checking("dropout", x):
            raise ShapeError(f"counter must be a scalar bpc.state made with counter=True, got {counter!r}")
    u = random_uniform(counter, shape=x.shape, seed=int(seed), dtype=x.dtype.name)
    return x * (greater_equal(u, rate) * (1.0 / (1.0 - rate)))
