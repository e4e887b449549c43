"""Losses, each defined once, and the "model + loss" graph built from one.

A `Loss` names a bpc loss function `(output, target) -> scalar tensor` and
says what targets it expects, which decides

- the target input: integer class labels, or real values shaped like the
  output (`Loss.prepare` checks and converts a user's Y; `Loss.target_input`
  declares the input when there is no data, e.g. for drawings);
- how metrics read a batch: class predictions from outputs
  (`Loss.predictions`) and true classes from targets (`Loss.labels`);
- random targets for benchmarks (`Loss.sample_targets`).

`build_graph` turns a model and a loss into a `ModelGraph`: the input and
target tensors, the output, the loss, and on request the inference-mode
output and loss, an L2 penalty, and the gradients. `bpc.fit`
(`bpc.train.build_training_graph`) and the command line's models
(`bpc.models.ModelSpec.graph`) both build their graphs here, so a loss name
means the same thing to both.
"""
from dataclasses import dataclass

import numpy as np

from . import ops
from .autodiff import grad
from .graph.tensor import Tensor, format_shape, input as input_tensor
from .nn import l2_penalty


class Loss:
    """A named loss function and the targets it expects.

    targets: "classes" (integer labels or class probabilities; argmax
    predictions), "binary" (0/1 targets shaped like the output; predicted 1
    where the logit is > 0), "values" (real targets shaped like the output;
    no class predictions) or "custom" (a user's callable: targets are taken
    as given, no class predictions)."""

    def __init__(self, name, fn, targets):
        self.name, self.fn, self.targets = name, fn, targets

    def __repr__(self):
        return f"<bpc Loss {self.name!r}: {self.targets} targets>"

    def prepare(self, Y, out, dtype):
        """Y as the array fed to the step: dtype and shape checked against the
        model output `out` (a tensor)."""
        Y = np.asarray(Y)
        if Y.dtype.kind not in "biuf":
            raise ValueError(f"loss '{self.name}': Y must hold numbers, got {Y.dtype}")
        if self.targets == "custom":
            return np.ascontiguousarray(Y, dtype=np.int64 if Y.dtype.kind in "biu" else dtype)
        if self.targets == "classes" and Y.dtype.kind in "biu":
            Y, want, what = Y.astype(np.int64), out.shape[1:-1], "integer class labels"
        else:
            what = "class probabilities" if self.targets == "classes" else "targets"
            Y = Y.astype(dtype)
            if Y.ndim == 1 and out.shape[1:] == (1,):
                Y = Y[:, None]     # (n,) targets for a (batch, 1) output
            want = out.shape[1:]
        if Y.shape[1:] != want:
            raise ValueError(f"loss '{self.name}': the model's output has shape {format_shape(out.shape)}, "
                             f"so {what} need rows of shape {want}, but Y has shape {Y.shape}")
        return np.ascontiguousarray(Y)

    def target_input(self, out, dtype):
        """The target input tensor for the output `out` when no data says
        its shape: class labels (int64) or values shaped like the output."""
        if self.targets == "custom":
            raise ValueError(f"loss '{self.name}' is a custom loss: its targets' shape comes from Y")
        if self.targets == "classes":
            return input_tensor("y", out.shape[:-1], dtype="int64")
        return input_tensor("y", out.shape, dtype=dtype)

    def sample_targets(self, rng, shape, classes, dtype):
        """Random targets of `shape` drawn from `rng` (benchmarks and
        drawings need no dataset); `classes` is the output's last size."""
        if self.targets == "classes":
            return rng.integers(0, classes, shape).astype(np.int64)
        if self.targets == "binary":
            return rng.integers(0, 2, shape).astype(dtype)
        if self.targets == "values":
            return rng.normal(size=shape).astype(dtype)
        raise ValueError(f"loss '{self.name}' is a custom loss: bpc cannot draw targets for it")

    @property
    def has_predictions(self):
        return self.targets in ("classes", "binary")

    def predictions(self, out):
        """Class predictions from output values (NumPy)."""
        return np.argmax(out, axis=-1) if self.targets == "classes" else (out > 0).astype(np.int64)

    def labels(self, Y):
        """True class labels from prepared targets (NumPy)."""
        if self.targets == "classes":
            return Y if Y.dtype.kind in "iu" else np.argmax(Y, axis=-1)
        return (Y >= 0.5).astype(np.int64)


LOSSES = {loss.name: loss for loss in (
    Loss("softmax_cross_entropy", ops.softmax_cross_entropy, "classes"),
    Loss("binary_cross_entropy_with_logits", ops.binary_cross_entropy_with_logits, "binary"),
    Loss("mse", ops.mse, "values"),
)}


def get_loss(loss):
    """A `Loss` from a name in LOSSES, a `Loss`, or a callable
    `(output tensor, target tensor) -> scalar tensor`."""
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, str) and loss in LOSSES:
        return LOSSES[loss]
    if callable(loss) and not isinstance(loss, str):
        return Loss(getattr(loss, "__name__", "custom"), loss, "custom")
    raise ValueError(f"unknown loss {loss!r}; expected one of {', '.join(repr(k) for k in LOSSES)} "
                     "or a callable (output, target) -> scalar tensor")


# ----- the model + loss graph -----------------------------------------------------------------

class ModelOutputError(ValueError):
    """A model or loss whose result cannot make a loss graph (not a tensor
    with a batch axis, or a loss that is not a scalar)."""


@dataclass
class ModelGraph:
    """The tensors of a model + loss graph (see `build_graph`). The fields
    after `params` are None unless asked for."""
    x: Tensor                 # input batch, shape (None, *input_shape)
    y: Tensor                 # targets
    output: Tensor            # the model's output (training mode unless asked otherwise)
    loss: Tensor              # scalar (with the L2 penalty, if any)
    params: list              # trainable parameters
    loss_spec: Loss = None
    eval_output: Tensor = None    # inference-mode output
    eval_loss: Tensor = None
    grads: list = None        # d loss / d param, symbolic
    grad_norms: list = None   # L2 norm of each gradient (scalars)
    Y: np.ndarray = None      # the targets given, prepared for y


def _check_output(t, what):
    if not isinstance(t, Tensor) or t.ndim == 0 or t.shape[0] is not None:
        raise ModelOutputError(f"the model's {what} must be a tensor with a leading batch axis, got {t!r}")


def build_graph(model, loss, input_shape, dtype, Y=None, training=True, eval_graph=False, l2=0.0,
                gradients=False):
    """The `ModelGraph` of `model` (a `bpc.nn` Module) under `loss` (see
    `get_loss`) for examples of `input_shape` and `dtype`.

    Y: targets; when given they are checked and prepared for the loss
        (`ModelGraph.Y`) and size the target input, else the loss's
        `target_input` does.
    training: the mode of `output` and `loss`; eval_graph adds the
        inference-mode `eval_output` and `eval_loss`.
    l2: adds `bpc.nn.l2_penalty` of the weight matrices (params with two or
        more axes) to both losses.
    gradients: adds `grads` and their norms.
    """
    spec = get_loss(loss)
    params = list(model.params)
    x = input_tensor("x", (None,) + tuple(input_shape), dtype=getattr(model, "input_dtype", dtype))
    out = model(x, training=training)
    eval_out = model(x, training=False) if eval_graph else None
    _check_output(out, "output")
    if eval_graph:
        _check_output(eval_out, "inference output")
    if Y is not None:
        Y = spec.prepare(Y, out, dtype)
        y = input_tensor("y", (None,) + Y.shape[1:], dtype=Y.dtype)
    else:
        y = spec.target_input(out, dtype)
    loss_t = spec.fn(out, y)
    eval_loss = spec.fn(eval_out, y) if eval_graph else None
    for t in (loss_t, eval_loss) if eval_graph else (loss_t,):
        if not isinstance(t, Tensor) or t.shape != ():
            raise ModelOutputError(f"loss '{spec.name}' must return a scalar tensor, got {t!r}")
    if l2:
        penalty = l2_penalty([p for p in params if p.ndim >= 2] or params, l2)
        loss_t = loss_t + penalty
        eval_loss = None if eval_loss is None else eval_loss + penalty
    g = ModelGraph(x, y, out, loss_t, params, spec, eval_out, eval_loss, Y=Y)
    if gradients:
        g.grads = grad(loss_t, params)
        g.grad_norms = [ops.sqrt(ops.sum(ops.square(d))) for d in g.grads]
    return g


__all__ = ["Loss", "LOSSES", "get_loss", "ModelGraph", "ModelOutputError", "build_graph"]
