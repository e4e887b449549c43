"""Named, seeded parameter initializers.

Fan-in/fan-out follow the usual convention for a (fan_in, fan_out) weight
matrix; a 4-d shape is a convolution's OIHW weights (fan_in = I*kh*kw,
fan_out = O*kh*kw, as PyTorch counts them); for other ranks, fan_in is
the product of all dims but the last.
"""
import numpy as np

from .errors import ShapeError


def _fans(shape):
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 4:   # (out channels, in channels, kh, kw)
        field = shape[2] * shape[3]
        return shape[1] * field, shape[0] * field
    fan_in = int(np.prod(shape[:-1]))
    return fan_in, shape[-1]


def _zeros(rng, shape): return np.zeros(shape)
def _ones(rng, shape): return np.ones(shape)
def _normal(rng, shape): return rng.normal(0.0, 0.01, shape)
def _uniform(rng, shape): return rng.uniform(-0.05, 0.05, shape)


def _glorot_uniform(rng, shape):
    fi, fo = _fans(shape)
    limit = np.sqrt(6.0 / (fi + fo))
    return rng.uniform(-limit, limit, shape)


def _glorot_normal(rng, shape):
    fi, fo = _fans(shape)
    return rng.normal(0.0, np.sqrt(2.0 / (fi + fo)), shape)


def _he_uniform(rng, shape):
    fi, _ = _fans(shape)
    limit = np.sqrt(6.0 / fi)
    return rng.uniform(-limit, limit, shape)


def _he_normal(rng, shape):
    fi, _ = _fans(shape)
    return rng.normal(0.0, np.sqrt(2.0 / fi), shape)


INITIALIZERS = {
    "zeros": _zeros, "ones": _ones, "normal": _normal, "uniform": _uniform,
    "glorot_uniform": _glorot_uniform, "xavier_uniform": _glorot_uniform,
    "glorot_normal": _glorot_normal, "xavier_normal": _glorot_normal,
    "he_uniform": _he_uniform, "kaiming_uniform": _he_uniform,
    "he_normal": _he_normal, "kaiming_normal": _he_normal,
}


def initialize(init, shape, dtype, seed, name="param"):
    """A new C-contiguous array for a parameter. `init` is a name from
    INITIALIZERS or a callable `(rng, shape) -> array`."""
    rng = np.random.default_rng(seed)
    if callable(init):
        fn = init
    else:
        try:
            fn = INITIALIZERS[init]
        except KeyError:
            raise ShapeError(f"param '{name}': unknown initializer {init!r}; expected one of "
                             f"{', '.join(sorted(INITIALIZERS))} or an array") from None
    value = np.asarray(fn(rng, tuple(shape)))
    if value.shape != tuple(shape):
        raise ShapeError(f"param '{name}': initializer returned shape {value.shape}, expected {tuple(shape)}")
    return np.array(value, dtype=dtype, order="C")
