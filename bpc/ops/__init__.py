"""Every op bpc knows, each defined once (see `core.Op`)."""
from .core import OPS, Op, apply, lift, broadcast_shapes, resolve
from .elementwise import (add, sub, mul, div, neg, pow, exp, log, sqrt, abs, square, tanh, sigmoid,
                          relu, leaky_relu, softplus, sign, stop_gradient, maximum, minimum, clip,
                          where, equal, not_equal, less, less_equal, greater, greater_equal, cast)
from .structural import (sum, mean, max, argmax, size_of, transpose, reshape, broadcast_to, sum_to,
                         matmul, matrix_transpose)
from .nn import (log_softmax, softmax, one_hot, softmax_cross_entropy, binary_cross_entropy_with_logits,
                 mse, kl_div, dropout, random_uniform, uniform_hash)
from .conv import conv2d, max_pool2d, avg_pool2d, flatten, pad
from .indexing import getitem, concat, stack, split, take
from .scan import scan, materialize as scan_materialize
