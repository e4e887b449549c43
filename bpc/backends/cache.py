"""On-disk cache of generated modules, shared by the compiled targets.

A module's file name is a hash of its source together with the versions of
bpc, Numba, NumPy and Python, so the key covers the graph's structure, the
specialized dtypes and ranks, and everything that generated it (helpers are
inlined in the source, so no change elsewhere can go unnoticed). Numba's own
cache (`cache=True`) stores the machine code next to it, in `__pycache__`.

Writes are atomic (temp file + rename). A module file whose contents do not
match its source is rewritten, never trusted or imported. Numba's cache
files are pickles, so bpc records their SHA-256 in a JSON manifest after it
compiles and, before Numba may load them, deletes any whose hash does not
match (corrupt, truncated, or not written by bpc): Numba then recompiles.
Two processes compiling the same graph write equivalent files; at worst a
mismatch costs one recompile. The cache folder is created private (0700).
"""
import glob
import hashlib
import importlib.util
import json
import logging
import os
import platform
import sys

import numba
import numpy as np

from ..io import atomic_write_text

log = logging.getLogger("bpc")


def cache_dir():
    """$BPC_CACHE_DIR, else the user cache folder (~/.cache/bpc on Linux)."""
    env = os.environ.get("BPC_CACHE_DIR")
    if env:
        return os.path.abspath(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "bpc")


def module_key(source):
    from .. import __version__
    h = hashlib.sha256()
    for part in (source, __version__, numba.__version__, np.__version__, sys.version, platform.machine()):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def load_module(source, target="cpu", prefix="bpc_step"):
    """Write (if needed) and import the module for `source` in the target's
    folder. Returns the module, its path and its key."""
    key = module_key(source)
    name = f"{prefix}_{key[:24]}"
    folder = os.path.join(cache_dir(), target)
    os.makedirs(folder, mode=0o700, exist_ok=True)
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
    verify_compiled(path)
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


def _compiled_files(path):
    folder, name = os.path.split(path)
    stem = os.path.splitext(name)[0]
    return sorted(glob.glob(os.path.join(folder, "__pycache__", stem + ".*.nb[ic]")))


def _digest(file):
    with open(file, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _manifest_path(path):
    return os.path.splitext(path)[0] + ".manifest.json"


def record_compiled(path):
    """After Numba compiled (and cached) a module's functions, record the
    hashes of its cache files."""
    entries = {os.path.basename(f): _digest(f) for f in _compiled_files(path)}
    atomic_write_text(_manifest_path(path), json.dumps(entries, indent=1, sort_keys=True))


def verify_compiled(path):
    """Delete the module's Numba cache files unless each matches the hash bpc
    recorded for it, so that Numba never unpickles a file bpc did not write."""
    try:
        with open(_manifest_path(path), encoding="utf-8") as f:
            known = json.load(f)
        if not isinstance(known, dict):
            known = {}
    except (OSError, ValueError):
        known = {}
    files = _compiled_files(path)
    bad = [f for f in files if known.get(os.path.basename(f)) != _digest(f)]
    if bad:
        log.warning("bpc: discarding %d unverified compiled-cache file(s) of %s; recompiling",
                    len(bad), os.path.basename(path))
        for f in files:  # an index and its data go together
            try:
                os.unlink(f)
            except OSError:
                pass
