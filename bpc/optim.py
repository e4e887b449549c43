"""Optimizers as symbolic updates, and learning-rate schedules.

An optimizer turns gradients into an `updates` dict for `bpc.function`:
new-value expressions for the parameters and for its own state (momenta,
moments, a step counter), which are `bpc.state` buffers. Forward, backward,
clipping and the update therefore compile into one step:

    opt = bpc.optim.Adam(lr=1e-3, clip_norm=1.0)
    step = bpc.function([x, y], loss, updates=opt.updates(loss, params))

The learning rate is a `bpc.state` scalar too (`opt.lr`), so a schedule
changes it between steps (`opt.lr.value = 0.01`) without recompiling.
Every optimizer also takes `clip_value=`, `clip_norm=` (gradient clipping
inside the step) and `name=` (prefix of its state buffers' names).

Update rules follow the published algorithms (the PyTorch conventions where
papers leave a choice): SGD with momentum `v = mu v + g; p -= lr v`
(Nesterov: `p -= lr (g + mu v)`), AdaGrad (Duchi et al. 2011), RMSProp
(Hinton's lecture 6e), Adam (Kingma & Ba 2015, Algorithm 1, bias-corrected
with the step counter) and AdamW (Loshchilov & Hutter 2019, decoupled decay).
"""
import math

import numpy as np

from . import ops
from .autodiff import grad
from .data import check_int, check_number
from .errors import ShapeError
from .graph.tensor import Tensor, state


class Optimizer:
    """Base class: clipping, the step counter, the learning-rate state and
    per-parameter slots. Subclasses define `slot_names` and `rule`.

    `clip_value` limits every gradient element to [-clip_value, clip_value];
    `clip_norm` rescales all gradients together so that their global L2 norm
    is at most `clip_norm` (TensorFlow's `clip_by_global_norm`:
    g * clip_norm / max(norm, clip_norm)). With both, values are clipped
    first. Both happen inside the compiled step.
    """

    slot_names = ()

    def __init__(self, lr, clip_value=None, clip_norm=None, name=None):
        owner = type(self).__name__
        self.name = name or owner.lower()
        self.base_lr = check_number(lr, f"{owner}: lr", 0.0)
        self.clip_value, self.clip_norm = (
            None if v is None else check_number(v, f"{owner}: {label}", 0.0, low_open=True)
            for label, v in (("clip_value", clip_value), ("clip_norm", clip_norm)))
        # float64 so that a schedule's value is kept exactly; cast to each
        # parameter's dtype inside the graph.
        self.lr = state(f"{self.name}_lr", np.float64(self.base_lr))
        self.step_count = state(f"{self.name}_step", np.int64(0))
        self._params = []     # in the order first seen, for checkpoint keys
        self._slots = {}      # param id -> {slot name: state buffer}

    # ----- the public protocol -------------------------------------------------
    def updates(self, loss, params):
        """`{param or state: new value}` for one step on `loss`: computes the
        gradients with `bpc.grad`, clips them and applies the update rule."""
        params = self._check_params(params)
        return self.apply_gradients(params, grad(loss, params))

    def apply_gradients(self, params, grads):
        """The updates for given gradients (one per param, same shapes)."""
        params = self._check_params(params)
        grads = list(grads)
        if len(grads) != len(params):
            raise ValueError(f"{self.name}: got {len(grads)} gradients for {len(params)} params")
        for p, g in zip(params, grads):
            if not isinstance(g, Tensor) or g.shape != p.shape:
                raise ShapeError(f"{self.name}: the gradient for '{p.name}' must be a tensor of shape "
                                 f"{p.shape}, got {getattr(g, 'shape', type(g).__name__)}")
        grads = self.clip(grads)
        t_new = self.step_count + 1
        t = ops.cast(t_new, "float64")
        new = {self.step_count: t_new}
        for p, g in zip(params, grads):
            slots = self._slots_for(p)
            lr = ops.cast(self.lr, p.dtype)
            new_p, new_slots = self.rule(p, g, slots, lr, t)
            new[p] = new_p
            for key, value in new_slots.items():
                new[slots[key]] = value
        return new

    def rule(self, p, g, slots, lr, t):
        """(new param, {slot name: new slot value}) for one parameter.
        `lr` has the param's dtype; `t` is the (1-based, float64) step."""
        raise NotImplementedError

    def clip(self, grads):
        """Gradients after value and global-norm clipping (graph nodes)."""
        if self.clip_value is not None:
            grads = [ops.clip(g, -self.clip_value, self.clip_value) for g in grads]
        if self.clip_norm is not None and grads:
            norm = ops.sqrt(global_square_norm(grads))
            scale = self.clip_norm / ops.maximum(norm, self.clip_norm)
            grads = [g * ops.cast(scale, g.dtype) for g in grads]
        return grads

    @property
    def state(self):
        """Every `bpc.state` buffer of this optimizer: learning rate, step
        counter and the per-parameter slots."""
        return list(self.named_state().values())

    def named_state(self):
        """Buffers keyed by role and parameter position ("m.0", "step"), so a
        checkpoint maps onto a freshly built optimizer."""
        named = {"lr": self.lr, "step": self.step_count}
        for i, p in enumerate(self._params):
            for slot, buf in self._slots[p.id].items():
                named[f"{slot}.{i}"] = buf
        return named

    # ----- helpers ---------------------------------------------------------------
    def _check_params(self, params):
        params = [params] if isinstance(params, Tensor) else list(params)
        if not params:
            raise ValueError(f"{self.name}: no parameters to optimize")
        for p in params:
            if not isinstance(p, Tensor) or p.kind != "param":
                raise ShapeError(f"{self.name}: expected bpc.param tensors, got {p!r}")
        if len({p.id for p in params}) != len(params):
            raise ValueError(f"{self.name}: a parameter appears twice in the list")
        return params

    def _slots_for(self, p):
        if p.id not in self._slots:
            self._params.append(p)
            self._slots[p.id] = {s: state(f"{p.name}_{s}", np.zeros(p.shape, p.dtype))
                                 for s in self.slot_names}
        return self._slots[p.id]

    def __repr__(self):
        return f"<bpc.optim.{type(self).__name__} lr={float(self.lr.value):g}>"


def global_square_norm(tensors):
    """The sum of squares of every element of every tensor (a scalar node)."""
    total = None
    for t in tensors:
        s = ops.sum(ops.square(t))
        total = s if total is None else total + s
    return total


class SGD(Optimizer):
    """Stochastic gradient descent, with optional momentum, Nesterov momentum
    and (coupled) weight decay: g += weight_decay * p; v = momentum v + g;
    p -= lr v (Nesterov: p -= lr (g + momentum v))."""

    def __init__(self, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0, **kw):
        super().__init__(lr, **kw)
        self.momentum = check_number(momentum, "SGD: momentum", 0.0, 1.0, high_open=True)
        self.weight_decay = check_number(weight_decay, "SGD: weight_decay", 0.0)
        if nesterov and self.momentum == 0.0:
            raise ValueError("SGD: nesterov=True needs momentum > 0")
        self.nesterov = bool(nesterov)
        self.slot_names = ("velocity",) if self.momentum else ()

    def rule(self, p, g, slots, lr, t):
        if self.weight_decay:
            g = g + self.weight_decay * p
        if not self.momentum:
            return p - lr * g, {}
        v = self.momentum * slots["velocity"] + g
        direction = g + self.momentum * v if self.nesterov else v
        return p - lr * direction, {"velocity": v}


class AdaGrad(Optimizer):
    """AdaGrad: G += g^2; p -= lr g / (sqrt(G) + eps)."""

    slot_names = ("sum_sq",)

    def __init__(self, lr=0.01, eps=1e-10, **kw):
        super().__init__(lr, **kw)
        self.eps = check_number(eps, "AdaGrad: eps", 0.0)

    def rule(self, p, g, slots, lr, t):
        acc = slots["sum_sq"] + ops.square(g)
        return p - lr * g / (ops.sqrt(acc) + self.eps), {"sum_sq": acc}


class RMSProp(Optimizer):
    """RMSProp: E = rho E + (1 - rho) g^2; p -= lr g / (sqrt(E) + eps)."""

    slot_names = ("mean_sq",)

    def __init__(self, lr=0.001, rho=0.9, eps=1e-8, **kw):
        super().__init__(lr, **kw)
        self.rho = check_number(rho, "RMSProp: rho", 0.0, 1.0, high_open=True)
        self.eps = check_number(eps, "RMSProp: eps", 0.0)

    def rule(self, p, g, slots, lr, t):
        ms = self.rho * slots["mean_sq"] + (1.0 - self.rho) * ops.square(g)
        return p - lr * g / (ops.sqrt(ms) + self.eps), {"mean_sq": ms}


class Adam(Optimizer):
    """Adam: m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
    p -= lr m_hat / (sqrt(v_hat) + eps) with m_hat = m / (1 - b1^t) and
    v_hat = v / (1 - b2^t), t the 1-based step (the step counter state)."""

    slot_names = ("m", "v")

    def __init__(self, lr=0.001, beta1=0.9, beta2=0.999, eps=1e-8, **kw):
        super().__init__(lr, **kw)
        owner = type(self).__name__
        self.beta1 = check_number(beta1, f"{owner}: beta1", 0.0, 1.0, high_open=True)
        self.beta2 = check_number(beta2, f"{owner}: beta2", 0.0, 1.0, high_open=True)
        self.eps = check_number(eps, f"{owner}: eps", 0.0)

    def adam_direction(self, g, slots, t):
        """(m_hat / (sqrt(v_hat) + eps), new slots), shared with AdamW."""
        m = self.beta1 * slots["m"] + (1.0 - self.beta1) * g
        v = self.beta2 * slots["v"] + (1.0 - self.beta2) * ops.square(g)
        bc1 = ops.cast(1.0 - self.beta1 ** t, g.dtype)
        bc2 = ops.cast(1.0 - self.beta2 ** t, g.dtype)
        return (m / bc1) / (ops.sqrt(v / bc2) + self.eps), {"m": m, "v": v}

    def rule(self, p, g, slots, lr, t):
        direction, new_slots = self.adam_direction(g, slots, t)
        return p - lr * direction, new_slots


class AdamW(Adam):
    """Adam with decoupled weight decay:
    p -= lr (m_hat / (sqrt(v_hat) + eps) + weight_decay p)."""

    def __init__(self, lr=0.001, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01, **kw):
        super().__init__(lr, beta1, beta2, eps, **kw)
        self.weight_decay = check_number(weight_decay, "AdamW: weight_decay", 0.0)

    def rule(self, p, g, slots, lr, t):
        direction, new_slots = self.adam_direction(g, slots, t)
        return p - lr * (direction + self.weight_decay * p), new_slots


OPTIMIZERS = {"sgd": SGD, "adagrad": AdaGrad, "rmsprop": RMSProp, "adam": Adam, "adamw": AdamW}


def get(optimizer):
    """An optimizer instance from an instance or a name ("adam", "sgd", ...)
    with default hyperparameters."""
    if isinstance(optimizer, Optimizer):
        return optimizer
    if isinstance(optimizer, str) and optimizer.lower() in OPTIMIZERS:
        return OPTIMIZERS[optimizer.lower()]()
    raise ValueError(f"unknown optimizer {optimizer!r}; expected a bpc.optim optimizer or one of "
                     f"{', '.join(repr(k) for k in OPTIMIZERS)}")


# ----- learning-rate schedules ------------------------------------------------------

class Schedule:
    """A learning rate per epoch: `schedule(epoch, base_lr) -> lr` (epoch is
    0-based). `apply(optimizer, epoch)` writes it into `optimizer.lr`, which
    compiled steps read at every call, so nothing recompiles."""

    def __call__(self, epoch, base_lr):
        epoch = check_int(epoch, f"{type(self).__name__}: epoch", low=0)
        return float(self.factor(epoch) * base_lr)

    def factor(self, epoch):
        raise NotImplementedError

    def apply(self, optimizer, epoch):
        optimizer.lr.value = self(epoch, optimizer.base_lr)
        return float(optimizer.lr.value)


class StepLR(Schedule):
    """lr = base_lr * gamma ** (epoch // step_size)."""

    def __init__(self, step_size, gamma=0.1):
        self.step_size = check_int(step_size, "StepLR: step_size")
        self.gamma = check_number(gamma, "StepLR: gamma", 0.0)

    def factor(self, epoch):
        return self.gamma ** (epoch // self.step_size)


class ExponentialLR(Schedule):
    """lr = base_lr * gamma ** epoch."""

    def __init__(self, gamma):
        self.gamma = check_number(gamma, "ExponentialLR: gamma", 0.0)

    def factor(self, epoch):
        return self.gamma ** epoch


class CosineLR(Schedule):
    """Cosine annealing from base_lr to min_lr over `t_max` epochs, then
    min_lr: lr = min_lr + (base_lr - min_lr) (1 + cos(pi e / t_max)) / 2."""

    def __init__(self, t_max, min_lr=0.0):
        self.t_max = check_int(t_max, "CosineLR: t_max")
        self.min_lr = check_number(min_lr, "CosineLR: min_lr", 0.0)

    def __call__(self, epoch, base_lr):
        cos = super().__call__(epoch, 1.0)
        return float(self.min_lr + (base_lr - self.min_lr) * cos)

    def factor(self, epoch):
        return 0.5 * (1.0 + math.cos(math.pi * min(epoch, self.t_max) / self.t_max))
