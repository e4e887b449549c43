"""Graph IR: nodes, leaves, traversal."""
from .tensor import Tensor, input, param, state, constant, as_dtype, as_shape, format_shape
from .traverse import topo_sort, rebuild, consumers
