"""On-disk cache of generated CUDA modules: the CPU target's scheme (file
named by a hash of its source and the tool versions, atomic writes, a
manifest of Numba's cache files checked before Numba may load them), in
its own folder. Numba CUDA caches the compiled kernels (`cache=True`) next
to the module, so a second process compiles nothing."""
import importlib.util
import os
import sys

from ...io import atomic_write_text
from ..cpu.cache import cache_dir, module_key, verify_compiled, record_compiled  # noqa: F401 (re-exported)


def load_module(source):
    """Write (if needed) and import the module for `source`; returns the
    module, its path and its key."""
    key = module_key(source)
    name = f"bpc_cuda_{key[:24]}"
    folder = os.path.join(cache_dir(), "cuda")
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
    sys.modules[name] = module   # Numba's cache locates functions through sys.modules
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module, path, key
