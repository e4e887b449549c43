"""Graph passes, run before every target (the interpreter included)."""
from .simplify import (optimize, fold_constants, simplify, eliminate_common_subexpressions,
                       eliminate_dead_code, PIPELINE)
