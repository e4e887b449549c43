"""Errors bpc raises, and where in the user's code a node was built."""
import os
import sys

_PKG_DIR = os.path.dirname(os.path.abspath(__file__))


class ShapeError(ValueError):
    """A shape or dtype mismatch found while building a graph."""


class GraphError(ValueError):
    """A malformed program: an input that is not fed, an update of something
    that is not a param, a param updated twice, outputs that are not tensors."""


class CallError(ValueError):
    """A compiled or interpreted function was called with bad arguments."""


class CompileError(RuntimeError):
    """A target could not compile a graph."""


class CheckError(RuntimeError):
    """A compiled target disagreed with the interpreter (`function(..., check=True)`)."""


def user_location():
    """Return "file:line" of the innermost stack frame outside the bpc package.

    Every node records it so that errors (at construction, call and run time)
    point at the user's line rather than at bpc internals.
    """
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not os.path.abspath(filename).startswith(_PKG_DIR + os.sep):
            return f"{_short(filename)}:{frame.f_lineno}"
        frame = frame.f_back
    return "<bpc>"


def _short(path):
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return path
    return path if rel.startswith(".." + os.sep + "..") else rel
