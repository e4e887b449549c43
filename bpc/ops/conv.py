"""2-d convolution (NCHW input, OIHW weights, as PyTorch lays them out)
and its two gradients, as three ops that are each other's derivatives:

    y  = conv2d(x, w)                      (N, C, H, W) * (O, C/groups, kh, kw) -> (N, O, OH, OW)
    dx = conv2d_grad_input(g, w)           the transposed convolution of g: the gradient for x
    dw = conv2d_grad_weight(x, g)          the correlation of x with g: the gradient for w

All three are linear in each operand, so the gradient of each is made of
the three again (for example, the gradient of `conv2d_grad_input(g, w)`
for g is `conv2d(c, w)`): gradients of any order are bpc graphs that
print, check and differentiate like any other.

Attributes: `stride`, `padding`, `dilation` (pairs) and `groups`; the
gradient for x also records the input's spatial size (a strided
convolution maps several input sizes to one output size), the gradient
for w the kernel's.

The NumPy references loop over the kh*kw kernel offsets, each a tensor
contraction of a strided window of the padded input.
"""
import numpy as np

from ..errors import ShapeError
from ..graph.tensor import Tensor, format_shape
from .core import Op, checking, lift, require_float


def _pair(value, what):
    if isinstance(value, (int, np.integer)):
        value = (int(value), int(value))
    value = tuple(value)
    if len(value) != 2 or not all(isinstance(v, (int, np.integer)) for v in value):
        raise ShapeError(f"{what} must be an int or a pair of ints, got {value!r}")
    return tuple(int(v) for v in value)


def _out_size(size, k, stride, pad, dilation):
    return (size + 2 * pad - dilation * (k - 1) - 1) // stride + 1


def _geometry(attrs):
    return attrs["stride"], attrs["padding"], attrs["dilation"], attrs["groups"]


def _window(xp, i, j, attrs, oh, ow):
    """The elements of padded input xp that kernel offset (i, j) meets, for
    every output position: a strided view of shape (..., oh, ow)."""
    (sh, sw), _, (dh, dw), _ = _geometry(attrs)
    return xp[..., i * dh:i * dh + sh * (oh - 1) + 1:sh, j * dw:j * dw + sw * (ow - 1) + 1:sw]


def _groups(attrs, channels, outputs):
    """(slice of input channels, slice of output channels) of each group."""
    G = attrs["groups"]
    c, o = channels // G, outputs // G
    return [(slice(k * c, (k + 1) * c), slice(k * o, (k + 1) * o)) for k in range(G)]


def _conv_np(attrs, shape, x, w):
    _, (ph, pw), _, _ = _geometry(attrs)
    kh, kw = w.shape[2:]
    oh, ow = shape[2:]
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    y = np.zeros((x.shape[0],) + tuple(shape[1:]), dtype=x.dtype)
    for cs, os_ in _groups(attrs, x.shape[1], w.shape[0]):
        for i in range(kh):
            for j in range(kw):
                y[:, os_] += np.einsum("nchw,oc->nohw", _window(xp[:, cs], i, j, attrs, oh, ow), w[os_, :, i, j])
    return y


def _grad_input_np(attrs, shape, g, w):
    _, (ph, pw), _, _ = _geometry(attrs)
    H, W = attrs["input_hw"]
    kh, kw = w.shape[2:]
    oh, ow = g.shape[2:]
    channels = w.shape[1] * attrs["groups"]
    dxp = np.zeros((g.shape[0], channels, H + 2 * ph, W + 2 * pw), dtype=g.dtype)
    for cs, os_ in _groups(attrs, channels, w.shape[0]):
        for i in range(kh):
            for j in range(kw):
                _window(dxp[:, cs], i, j, attrs, oh, ow)[...] += np.einsum("nohw,oc->nchw", g[:, os_],
                                                                            w[os_, :, i, j])
    return dxp[:, :, ph:ph + H, pw:pw + W]


def _grad_weight_np(attrs, shape, x, g):
    _, (ph, pw), _, _ = _geometry(attrs)
    kh, kw = attrs["kernel_hw"]
    oh, ow = g.shape[2:]
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    dw = np.zeros(tuple(shape), dtype=x.dtype)
    for cs, os_ in _groups(attrs, x.shape[1], g.shape[1]):
        for i in range(kh):
            for j in range(kw):
                dw[os_, :, i, j] = np.einsum("nohw,nchw->oc", g[:, os_], _window(xp[:, cs], i, j, attrs, oh, ow))
    return dw


def _check_operands(a, b, names):
    require_float((a, b), "conv2d")
    if a.ndim != 4 or b.ndim != 4:
        raise ShapeError(f"expects 4-d {names[0]} and {names[1]} (NCHW and OIHW), got "
                         f"{format_shape(a.shape)} and {format_shape(b.shape)}")
    if a.dtype != b.dtype:
        raise ShapeError(f"operands have different dtypes {a.dtype.name} and {b.dtype.name}")


def _conv_infer(inputs, attrs):
    x, w = inputs
    _check_operands(x, w, ("input", "weight"))
    (sh, sw), (ph, pw), (dh, dw), G = _geometry(attrs)
    N, C, H, W = x.shape
    O, Cg, kh, kw = w.shape
    if None in (C, H, W) or None in w.shape:
        raise ShapeError("only the batch (first) dimension of the input may be None")
    if C % G or O % G:
        raise ShapeError(f"groups={G} must divide the input channels ({C}) and the output channels ({O})")
    if Cg != C // G:
        raise ShapeError(f"weight has {Cg} input channels per group; the input's {C} channels in {G} "
                         f"group(s) need {C // G}")
    oh, ow = _out_size(H, kh, sh, ph, dh), _out_size(W, kw, sw, pw, dw)
    if oh < 1 or ow < 1:
        raise ShapeError(f"a {kh}x{kw} kernel (dilation {dh}x{dw}) does not fit the {H}x{W} input "
                         f"padded by {ph}x{pw}")
    return (N, O, oh, ow), x.dtype


def _grad_input_infer(inputs, attrs):
    g, w = inputs
    _check_operands(g, w, ("gradient", "weight"))
    H, W = attrs["input_hw"]
    return (g.shape[0], w.shape[1] * attrs["groups"], H, W), g.dtype


def _grad_weight_infer(inputs, attrs):
    x, g = inputs
    _check_operands(x, g, ("input", "gradient"))
    kh, kw = attrs["kernel_hw"]
    return (g.shape[1], x.shape[1] // attrs["groups"], kh, kw), x.dtype


def _geometry_attrs(n):
    return {k: n.attrs[k] for k in ("stride", "padding", "dilation", "groups")}


_conv2d = Op("conv2d", "other", _conv_infer, _conv_np,
             lambda n, g: (_grad_input(g, n.inputs[1], input_hw=n.inputs[0].shape[2:], **_geometry_attrs(n)),
                           _grad_weight(n.inputs[0], g, kernel_hw=n.inputs[1].shape[2:], **_geometry_attrs(n))),
             doc="2-d convolution (cross-correlation, as in PyTorch) of an NCHW input with OIHW weights.")
_grad_input = Op("conv2d_grad_input", "other", _grad_input_infer, _grad_input_np,
                 lambda n, c: (_conv2d(c, n.inputs[1], **_geometry_attrs(n)),
                               _grad_weight(c, n.inputs[0], kernel_hw=n.inputs[1].shape[2:], **_geometry_attrs(n))),
                 doc="The gradient of conv2d for its input: the transposed convolution of g with w.")
_grad_weight = Op("conv2d_grad_weight", "other", _grad_weight_infer, _grad_weight_np,
                  lambda n, c: (_grad_input(n.inputs[1], c, input_hw=n.inputs[0].shape[2:], **_geometry_attrs(n)),
                                _conv2d(n.inputs[0], c, **_geometry_attrs(n))),
                  doc="The gradient of conv2d for its weights: the correlation of x with g.")


def conv2d(x, w, stride=1, padding=0, dilation=1, groups=1):
    """2-d convolution of `x` (N, C, H, W) with weights `w` (O, C/groups,
    kh, kw) -> (N, O, OH, OW), as `torch.nn.functional.conv2d` (no bias:
    add one with broadcasting, `y + reshape(b, (O, 1, 1))`). `stride`,
    `dilation`: an int or a pair; `padding`: an int, a pair, "valid" (0) or
    "same" (the output keeps the input's size; stride 1, and an even total
    padding per axis); `groups` splits the channels into independent groups."""
    x = lift(x, w if isinstance(w, Tensor) else None)
    w = lift(w, x)
    with checking("conv2d", x, w):
        stride, dilation = _pair(stride, "stride"), _pair(dilation, "dilation")
        if min(stride) < 1 or min(dilation) < 1:
            raise ShapeError(f"stride and dilation must be positive, got {stride} and {dilation}")
        if not isinstance(groups, (int, np.integer)) or groups < 1:
            raise ShapeError(f"groups must be a positive int, got {groups!r}")
        if isinstance(padding, str):
            if padding == "valid":
                padding = (0, 0)
            elif padding == "same":
                if stride != (1, 1):
                    raise ShapeError(f"padding='same' needs stride 1, got {stride}")
                if w.ndim != 4:
                    raise ShapeError(f"expects a 4-d weight (OIHW), got {format_shape(w.shape)}")
                total = [d * (k - 1) for d, k in zip(dilation, w.shape[2:])]
                if any(t % 2 for t in total):
                    raise ShapeError(f"padding='same' with a {w.shape[2]}x{w.shape[3]} kernel (dilation "
                                     f"{dilation}) needs uneven padding; pad explicitly")
                padding = tuple(t // 2 for t in total)
            else:
                raise ShapeError(f"padding must be an int, a pair, 'same' or 'valid', got {padding!r}")
        padding = _pair(padding, "padding")
        if min(padding) < 0:
            raise ShapeError(f"padding must be >= 0, got {padding}")
    return _conv2d(x, w, stride=stride, padding=padding, dilation=dilation, groups=int(groups))


# ----- pooling -------------------------------------------------------------------------------
#
# Max pooling is two ops: `max_pool2d(x, v)` takes, in every window, the
# element of v at the position of x's maximum (the first one, NaN counting
# as the maximum, as np.argmax), so the pooling of x is max_pool2d(x, x);
# `max_pool2d_grad(x, g)` adds each g to the position its window chose.
# They are each other's gradients for their second operand; the choice of
# position has no gradient. Average pooling is a depthwise convolution with
# constant weights.

def _pool_positions(attrs, x):
    """Per window, the flat kernel offset of x's maximum, (N, C, OH, OW):
    the first maximum among the positions inside the image (NaN counts as
    the maximum, as np.argmax)."""
    _, (ph, pw), _, _ = _geometry(attrs)
    kh, kw = attrs["kernel_hw"]
    oh, ow = attrs["out_hw"]
    pads = ((0, 0), (0, 0), (ph, ph), (pw, pw))

    def windows(a):
        return np.stack([_window(a, i, j, attrs, oh, ow) for i in range(kh) for j in range(kw)], axis=-1)
    values = windows(np.pad(x, pads, constant_values=-np.inf))
    inside = windows(np.pad(np.ones(x.shape, bool), pads))
    pos = np.argmax(values, axis=-1)[..., None]
    # A window whose inside values are all -inf: its first inside position.
    padded = ~np.take_along_axis(inside, pos, axis=-1)
    pos = np.where(padded, np.argmax(inside, axis=-1)[..., None], pos)
    return pos[..., 0]


def _max_pool_np(attrs, shape, x, v):
    _, (ph, pw), _, _ = _geometry(attrs)
    kh, kw = attrs["kernel_hw"]
    oh, ow = attrs["out_hw"]
    pos = _pool_positions(attrs, x)
    vp = np.pad(v, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    values = np.stack([_window(vp, i, j, attrs, oh, ow) for i in range(kh) for j in range(kw)], axis=-1)
    return np.take_along_axis(values, pos[..., None], axis=-1)[..., 0]


def _max_pool_grad_np(attrs, shape, x, g):
    _, (ph, pw), _, _ = _geometry(attrs)
    kh, kw = attrs["kernel_hw"]
    oh, ow = attrs["out_hw"]
    pos = _pool_positions(attrs, x)
    N, C, H, W = x.shape
    dxp = np.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=g.dtype)
    for i in range(kh):
        for j in range(kw):
            _window(dxp, i, j, attrs, oh, ow)[...] += np.where(pos == i * kw + j, g, 0)
    return dxp[:, :, ph:ph + H, pw:pw + W]


def _max_pool_infer(inputs, attrs):
    x, v = inputs
    _check_operands(x, v, ("input", "values"))
    return x.shape[:2] + tuple(attrs["out_hw"]), v.dtype


def _max_pool_grad_infer(inputs, attrs):
    x, g = inputs
    _check_operands(x, g, ("input", "gradient"))
    return x.shape, g.dtype


def _pool_attrs(n):
    return {k: n.attrs[k] for k in ("stride", "padding", "dilation", "groups", "kernel_hw", "out_hw")}


_max_pool2d = Op("max_pool2d", "other", _max_pool_infer, _max_pool_np,
                 lambda n, g: (None, _max_pool_grad(n.inputs[0], g, **_pool_attrs(n))),
                 doc="In each window, the element of v where x is largest (max pooling of x: v = x).")
_max_pool_grad = Op("max_pool2d_grad", "other", _max_pool_grad_infer, _max_pool_grad_np,
                    lambda n, c: (None, _max_pool2d(n.inputs[0], c, **_pool_attrs(n))),
                    doc="The gradient of max pooling: each g added where its window's maximum of x is.")


def _pool_geometry(x, size, stride, padding):
    size = _pair(size, "size")
    stride = size if stride is None else _pair(stride, "stride")
    padding = _pair(padding, "padding")
    if min(size) < 1 or min(stride) < 1 or min(padding) < 0:
        raise ShapeError(f"size and stride must be positive and padding >= 0, got {size}, {stride}, {padding}")
    if any(2 * p > k for p, k in zip(padding, size)):
        raise ShapeError(f"padding {padding} must be at most half the window {size}")
    if x.ndim != 4 or None in x.shape[1:]:
        raise ShapeError(f"expects a 4-d NCHW input with only the batch dimension None, got "
                         f"{format_shape(x.shape)}")
    out = tuple(_out_size(d, k, s, p, 1) for d, k, s, p in zip(x.shape[2:], size, stride, padding))
    if min(out) < 1:
        raise ShapeError(f"a {size[0]}x{size[1]} window does not fit the {x.shape[2]}x{x.shape[3]} input "
                         f"padded by {padding[0]}x{padding[1]}")
    return size, stride, padding, out


def max_pool2d(x, size, stride=None, padding=0):
    """Max pooling over `size` windows (an int or a pair) of an NCHW input,
    moved by `stride` (default: the window size), the input padded by
    `padding` (which no window takes as its maximum), as
    `torch.nn.functional.max_pool2d`."""
    x = lift(x)
    with checking("max_pool2d", x):
        require_float((x,), "max_pool2d")
        size, stride, padding, out = _pool_geometry(x, size, stride, padding)
    return _max_pool2d(x, x, stride=stride, padding=padding, dilation=(1, 1), groups=1, kernel_hw=size,
                       out_hw=out)


def avg_pool2d(x, size, stride=None, padding=0):
    """Average pooling over `size` windows of an NCHW input (padded zeros
    count, as PyTorch's default `count_include_pad=True`): a depthwise
    convolution with weights 1/(window area)."""
    x = lift(x)
    with checking("avg_pool2d", x):
        require_float((x,), "avg_pool2d")
        size, stride, padding, _ = _pool_geometry(x, size, stride, padding)
    C = x.shape[1]
    weights = np.full((C, 1) + size, 1.0 / (size[0] * size[1]), dtype=x.dtype)
    return conv2d(x, weights, stride=stride, padding=padding, groups=C)


def flatten(x):
    """(N, d1, d2, ...) -> (N, d1*d2*...): what a Dense layer after
    convolutions takes."""
    from .structural import reshape
    x = lift(x)
    return reshape(x, (x.shape[0], int(np.prod(x.shape[1:]))))


def pad(x, padding):
    """Pad the two last (spatial) axes of an NCHW input with `padding` zeros
    on each side (an int or a pair): a depthwise convolution with a 1x1
    identity kernel and that padding (its gradient crops)."""
    x = lift(x)
    with checking("pad", x):
        if x.ndim != 4:
            raise ShapeError(f"expects a 4-d NCHW input, got {format_shape(x.shape)}")
        padding = _pair(padding, "padding")
    C = x.shape[1]
    return conv2d(x, np.ones((C, 1, 1, 1), dtype=x.dtype), padding=padding, groups=C)
