"""On-disk cache of generated modules.

A module's file name is a hash of its source together with the versions of
bpc, Numba, NumPy and Python, so the key covers the graph's structure, the
specialized dtypes and ranks, and everything that generated it (helpers are
inlined in the source, so no change elsewhere can go unnoticed). Numba's own
cache (`cache=True`) stores the machine code next to it, in `__pycache__`.

Writes are atomic (temp file + rename). A file whose contents do not match
its source is rewritten, never trusted; Numba rejects and rebuilds machine
code whose index does not match the module. Two processes compiling the same
graph write the same bytes, so whichever rename lands last is correct.
"""
import hashlib
import importlib.util
import os
import platform
import sys

import numba
import numpy as np

from ...io import atomic_write_text


def cache_dir():
    """$BPC_CACHE_DIR, else the user cache folder (~/.cache/bpc on Linux)."""
    env = os.environ.get("BPC_CACHE_DIR")
    if env:
        return os.path.abspath(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "bpc")


def module_key(source):
    from ... import __version__
    h = hashlib.sha256()
    for part in (source, __version__, numba.__version__, np.__version__, sys.version, platform.machine()):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def load_module(source):
    """Write (if needed) and import the module for `source`. Returns the
    module, its path and its key."""
    key = module_key(source)
    name = f"bpc_step_{key[:24]}"
    folder = os.path.join(cache_dir(), "cpu")
    path = os.path.join(folder, name + ".py")
    try:
        with open(path, encoding="utf-8") as f:
            current = f.read()
    except OSError:
        current = None
    if current != source:
        atomic_write_text(path, source)
    if name in sys.modules:
        return sys.modules[name], path, key
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    # Numba's cache locates functions through sys.modules: register first.
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module, path, key
