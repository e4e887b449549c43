"""bpc: a backprop compiler.

Declare a network as a symbolic graph, derive its gradients as another
graph (`grad`), look at both (`to_dot`, `to_text`), check them
(`check_grad`) and compile training steps (`function`) for the
interpreter, the CPU (Numba, parallel) or CUDA.
"""
__version__ = "0.1.0"

from .errors import ShapeError, GraphError, CallError, CompileError, CheckError
from .graph.tensor import Tensor, input, param, constant, state
from .ops import (add, sub, mul, div, neg, pow, exp, log, sqrt, abs, square, tanh, sigmoid, relu,
                  leaky_relu, softplus, sign, stop_gradient, maximum, minimum, clip, where, equal,
                  not_equal, less, less_equal, greater, greater_equal, cast, sum, mean, max, argmax,
                  transpose, matrix_transpose, reshape, broadcast_to, matmul, log_softmax, softmax, one_hot,
                  softmax_cross_entropy, binary_cross_entropy_with_logits, mse, kl_div, dropout, conv2d,
                  max_pool2d, avg_pool2d, flatten, pad, concat, stack, split, take, scan)
from .autodiff import grad
from .function import function, Function, TARGETS
from .dot import to_dot, to_text
from .check import check_grad
from .backends.threads import set_num_threads, get_num_threads
from . import optim, nn, data, metrics, checkpoint, distributed
from .train import fit, plot_history
from .checkpoint import save as save_checkpoint, load as load_checkpoint
