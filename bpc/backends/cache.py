"""On-disk cache of generated modules, shared by the compiled targets.

A module's file name is a hash of its source together with the versions of
bpc, Numba, NumPy and Python, so the key covers the graph's structure, the
specialized dtypes and ranks, and everything that generated it (helpers are
inlined in the source, so no change elsewhere can go unnoticed). Numba's own
cache (`cache=True`) stores the machine code next to it, in `__pycache__`
(or under $NUMBA_CACHE_DIR when that is set).

The cache folder ($BPC_CACHE_DIR, else the user cache folder) and bpc's
folders inside it are created 0700 whatever the umask. bpc uses the cache
folder only if it is a folder owned by the current user that neither group
nor others can write; otherwise, or when it cannot be created or written,
bpc logs one warning per process and runs uncached: modules go to a private
temporary folder that is removed when the process exits, so every process
compiles again. `cache_status()` says which.

Writes are atomic (temp file + rename). bpc imports a module by compiling
the source it generated, never the file on disk (nor any `.pyc`); a module
file whose contents differ is rewritten. Numba's cache files are pickles:
after Numba compiles, bpc records their SHA-256 in a JSON manifest, and
before Numba may load them it deletes them all unless each matches (Numba
then recompiles). The SHA-256 manifest lives beside the files it checks, so
it detects corruption, not tampering. Anything damaged in bpc's folders (a
folder or junk in place of a file, a corrupt manifest, truncated cache
files) is removed and rebuilt. Two processes compiling the same graph write
equivalent files; at worst a mismatch costs one recompile.
"""
import atexit
import glob
import hashlib
import importlib.util
import json
import logging
import os
import platform
import shutil
import stat
import sys
import tempfile
import threading
from collections import namedtuple

import numba
import numpy as np

from ..errors import CompileError
from ..io import atomic_write_text

log = logging.getLogger("bpc")

CacheStatus = namedtuple("CacheStatus", "folder reason")
CacheStatus.__doc__ = """folder: the cache folder in use, or None when bpc runs uncached;
reason: None, or why the cache folder is not used."""

_lock = threading.RLock()
_warned = set()
_temp_root = None


def cache_dir():
    """$BPC_CACHE_DIR, else the user cache folder (~/.cache/bpc on Linux)."""
    env = os.environ.get("BPC_CACHE_DIR")
    if env:
        return os.path.abspath(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.abspath(os.path.join(base, "bpc"))


def module_key(source):
    from .. import __version__
    h = hashlib.sha256()
    for part in (source, __version__, numba.__version__, np.__version__, sys.version, platform.machine()):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def module_name(source, prefix="bpc_step"):
    """The name (and file stem) of the module for `source`."""
    return f"{prefix}_{module_key(source)[:24]}"


def cache_status():
    """Whether generated modules are cached on disk, checked now: creates
    the cache folder if it is missing, as compiling would."""
    root, reason = _usable_root()
    return CacheStatus(root, reason)


def load_module(source, target="cpu", prefix="bpc_step"):
    """Write (if needed) and import the module for `source` in the target's
    folder (a private temporary one when the cache cannot be used). Returns
    the module, its path and its key."""
    key = module_key(source)
    name = module_name(source, prefix)
    data = source.encode("utf-8")
    with _lock:
        module = sys.modules.get(name)
        if module is not None:  # already imported by this process
            return module, module.__file__, key
        path = None
        root, _ = _usable_root()
        if root is not None:
            try:
                path = _write_module(root, target, name, data)
            except OSError as e:
                _warn_once(f"cannot write to the cache folder {root} ({_why(e)}); running uncached")
        if path is None:
            temp = _uncached_root()
            try:
                path = _write_module(temp, target, name, data)
            except OSError as e:
                raise CompileError(f"bpc cannot write generated code to its temporary folder {temp} "
                                   f"({_why(e)}); set BPC_CACHE_DIR to a private folder you can write") from None
        verify_compiled(path)
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        # Run the source bpc generated, not whatever the file (or a .pyc) holds now;
        # its file name is what Numba's cache locates.
        code = compile(source, path, "exec")
        # Numba's cache locates functions through sys.modules: register first.
        sys.modules[name] = module
        try:
            exec(code, module.__dict__)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        return module, path, key


def record_compiled(path):
    """After Numba compiled (and cached) a module's functions, record the
    hashes of its cache files. A failure only costs a recompile later."""
    try:
        entries = {}
        for f in _compiled_files(path):
            digest = _digest(f)
            if digest is not None:
                entries[os.path.basename(f)] = digest
        _write_file(_manifest_path(path), json.dumps(entries, indent=1, sort_keys=True).encode())
    except OSError as e:
        _warn_once(f"cannot record the compiled-cache hashes of {os.path.basename(path)} ({_why(e)}); "
                   "the next process recompiles it")


def has_compiled(path, function):
    """Whether Numba's cache holds an index for `function` of the module at
    `path` (a hint: its entries are checked when loaded)."""
    stem = os.path.splitext(os.path.basename(path))[0]
    return any(os.path.basename(f).startswith(f"{stem}.{function}-") and f.endswith(".nbi")
               for f in _compiled_files(path))


def verify_compiled(path):
    """Delete the module's Numba cache files unless each matches the hash bpc
    recorded for it (a corrupt, truncated or unrecorded file, or something
    that is not a regular file), so Numba recompiles instead of loading it."""
    try:
        with open(_manifest_path(path), "rb") as f:
            known = json.loads(f.read().decode("utf-8"))
        if not isinstance(known, dict):
            known = {}
    except (OSError, ValueError, RecursionError):
        known = {}
    files = _compiled_files(path)
    digests = {f: _digest(f) for f in files}
    bad = [f for f, d in digests.items() if d is None or known.get(os.path.basename(f)) != d]
    if bad:
        log.warning("bpc: discarding %d unverified compiled-cache file(s) of %s; recompiling",
                    len(bad), os.path.basename(path))
        for f in files:  # an index and its data go together
            try:
                _remove(f)
            except OSError:
                pass


# ----- folders ---------------------------------------------------------------------

def _usable_root():
    """(cache folder, None) when it may be used, else (None, why not), after
    warning once per process about that reason."""
    root = cache_dir()
    reason = _check_root(root)
    if reason is None:
        return root, None
    _warn_once(f"{reason}; running uncached (set BPC_CACHE_DIR to a private folder to cache compiled code)")
    return None, reason


def _check_root(root):
    """None if `root` is a private folder of this user that bpc can write
    (creating it 0700 if missing), else why not."""
    try:
        _make_private(root, parents=True)
        st = os.stat(root)
    except OSError as e:
        return f"cannot create the cache folder {root} ({_why(e)})"
    if not stat.S_ISDIR(st.st_mode):
        return f"the cache folder {root} is not a folder"
    if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
        # Whoever owns it can replace what bpc would load from it.
        return f"the cache folder {root} is owned by another user (uid {st.st_uid})"
    if os.name == "posix" and st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return (f"the cache folder {root} can be written by others (mode {stat.S_IMODE(st.st_mode):o}; "
                f"'chmod 700' it to use it)")
    try:
        # os.access does not tell (root ignores permission bits; read-only mounts): try it.
        tempfile.TemporaryFile(dir=root).close()
    except OSError as e:
        return f"cannot write to the cache folder {root} ({_why(e)})"
    return None


def _make_private(path, parents=False):
    """Create folder `path` with mode 0700 (os.mkdir's mode is masked by the
    umask, so set it again). Leaves an existing `path` alone."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        return
    except FileNotFoundError:
        if not parents:
            raise
        # Parents (e.g. ~/.cache) are ordinary folders, made with the user's umask.
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            return
    os.chmod(path, 0o700)


def _repair_folder(path):
    """Make `path`, a folder bpc owns inside a private folder, a private
    folder of this user again, replacing whatever else is there."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None and not (stat.S_ISDIR(st.st_mode)
                               and (not hasattr(os, "geteuid") or st.st_uid == os.geteuid())):
        log.warning("bpc: replacing %s (not a folder of this user)", path)
        _remove(path)
        st = None
    if st is None:
        _make_private(path)
    elif stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)


def _uncached_root():
    """This process's private temporary folder (0700, removed at exit)."""
    global _temp_root
    with _lock:
        if _temp_root is None or not os.path.isdir(_temp_root):
            try:
                _temp_root = tempfile.mkdtemp(prefix="bpc-uncached-")
            except OSError as e:
                raise CompileError(
                    f"bpc cannot write generated code: the cache folder {cache_dir()} is not usable "
                    f"and no temporary folder can be created ({_why(e)}); set BPC_CACHE_DIR to a private "
                    "folder you can write") from None
            atexit.register(shutil.rmtree, _temp_root, True)
        return _temp_root


def _write_module(root, target, name, data):
    """Put the module's source in root/target/<first two hex digits of its
    key> (rebuilding what is damaged there) and return its path. The shard
    keeps each folder small: bpc lists a module's compiled files before
    loading and after compiling, and a single folder of a cache holding
    thousands of kernels took milliseconds per listing."""
    _repair_folder(os.path.join(root, target))
    folder = os.path.join(root, target, name[-24:][:2])
    _repair_folder(folder)
    if _numba_cache_folder(folder) == os.path.join(folder, "__pycache__"):
        # Numba would create it with the umask; and if it cannot, it caches in a
        # user-wide folder that bpc does not check.
        _repair_folder(os.path.join(folder, "__pycache__"))
    path = os.path.join(folder, name + ".py")
    if _read_file(path) != data:
        _write_file(path, data)
    return path


# ----- files -----------------------------------------------------------------------

def _read_file(path):
    """The bytes of regular file `path`, or None (missing, unreadable, or a
    folder, link or other thing in its place)."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return None
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def _write_file(path, data):
    """Atomically write `data` to `path`, replacing a folder or other thing
    that a rename cannot replace."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        _remove(path)
    atomic_write_text(path, data, binary=True)


def _remove(path):
    try:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except FileNotFoundError:  # another process removed it first
        pass


def _numba_cache_folder(folder):
    """Where Numba caches the functions of a module in `folder`: its
    __pycache__, or a folder under $NUMBA_CACHE_DIR when that is set."""
    from numba.core import caching, config
    if config.CACHE_DIR:
        locator = getattr(caching, "UserProvidedCacheLocator", None) or caching._UserProvidedCacheLocator
        return os.path.join(config.CACHE_DIR, locator.get_suitable_cache_subpath(os.path.join(folder, "x.py")))
    return os.path.join(folder, "__pycache__")


def _compiled_files(path):
    folder, name = os.path.split(path)
    stem = os.path.splitext(name)[0]
    return sorted(glob.glob(os.path.join(glob.escape(_numba_cache_folder(folder)), stem + ".*.nb[ic]")))


def _digest(file):
    """SHA-256 of regular file `file`, or None."""
    data = _read_file(file)
    return None if data is None else hashlib.sha256(data).hexdigest()


def _manifest_path(path):
    return os.path.splitext(path)[0] + ".manifest.json"


def _why(error):
    return getattr(error, "strerror", None) or str(error)


def _warn_once(message):
    with _lock:
        if message in _warned:
            return
        _warned.add(message)
    log.warning("bpc: %s", message)
