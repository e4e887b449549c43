"""Atomic file writes: bpc never leaves a half-written file behind.

A write goes to a temporary file `.tmp-<8 random characters><name>` in the
target's folder, which is renamed over the target once it is complete and
flushed to disk. A process killed mid-write (kill -9, power loss) leaves
its temporary file behind; the next write of the same target removes such
leftovers. Another process may be writing the same target at that moment,
so a temporary file is removed only when no one is writing it: the writer
holds an exclusive lock (`flock`) on it from its creation until the rename
(a writer whose new file a cleaner took before the lock starts over with
another name), and a file is taken as abandoned only when it can be locked
and, as a second guard for file systems whose locks other machines do not
see, has not been modified for `STALE_AFTER_S` seconds. On Windows, which
has no `flock`, an open file cannot be deleted, which protects a file being
written in the same way; there the age is the only guard for the instant
between closing the file and renaming it.
"""
import os
import re
import secrets
import stat
import time

try:
    import fcntl
except ImportError:          # Windows
    fcntl = None

TMP_PREFIX = ".tmp-"
STALE_AFTER_S = 60.0
_RANDOM_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_"
_RANDOM_LEN = 8
_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0) \
    | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOINHERIT", 0)


def _temp_pattern(name):
    """The names of bpc's temporary files for target `name` (the length of
    the random part tells `ck.npz`'s files from `xck.npz`'s)."""
    return re.compile(re.escape(TMP_PREFIX) + "[%s]{%d}" % (_RANDOM_CHARS, _RANDOM_LEN) + re.escape(name) + r"\Z")


def _create_temp(folder, name):
    """(fd, path) of a new temporary file for target `name`, locked when the
    file system supports it."""
    for _ in range(100):
        random = "".join(secrets.choice(_RANDOM_CHARS) for _ in range(_RANDOM_LEN))
        tmp = os.path.join(folder, TMP_PREFIX + random + name)
        try:
            fd = os.open(tmp, _FLAGS, 0o600)
        except FileExistsError:
            continue
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)     # waits while a cleaner looks at it
            except OSError:
                return fd, tmp    # no locks on this file system: cleaners cannot lock it either
            try:
                ours = os.path.samestat(os.stat(tmp, follow_symlinks=False), os.fstat(fd))
            except FileNotFoundError:
                ours = False
            if not ours:          # a cleaner locked and removed it before we did: take another name
                os.close(fd)
                continue
        return fd, tmp
    raise FileExistsError(f"no unused temporary file name for '{name}' in '{folder}'")


def _remove_if_abandoned(path, st):
    """Delete the temporary file `path` (lstat `st`) unless someone is writing it."""
    if fcntl is None:
        os.unlink(path)       # fails on Windows while the writer has it open
        return True
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False      # locked: being written right now (or locks unsupported: keep it)
        now = os.fstat(fd)
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            return False      # replaced since it was listed
        os.unlink(path)
        return True
    finally:
        os.close(fd)          # releases the lock


def remove_stale_temp_files(path):
    """Remove the temporary files that killed writes of `path` left behind
    (see the module docstring); returns the paths removed. Best effort: a
    file that cannot be checked or removed is left alone."""
    path = os.fspath(path)
    folder, name = os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    pattern, removed = _temp_pattern(name), []
    try:
        entries = [e for e in os.scandir(folder) if pattern.match(e.name)]
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        try:
            st = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode) or not now - st.st_mtime >= STALE_AFTER_S:
                continue
            if _remove_if_abandoned(entry.path, st):
                removed.append(entry.path)
        except OSError:
            continue
    return removed


def atomic_write_text(path, data, binary=False):
    """Write `data` (bytes with `binary`, else text, UTF-8) to a temporary
    file in the same folder, flush it to disk, then rename it over `path`
    (rename is atomic on POSIX and Windows). Leftovers of earlier killed
    writes of `path` are removed first."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    remove_stale_temp_files(path)
    fd, tmp = _create_temp(folder, os.path.basename(path))
    try:
        with os.fdopen(fd, "wb" if binary else "w", closefd=False,
                       **({} if binary else {"encoding": "utf-8"})) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if os.name == "nt":       # Windows cannot rename an open file
            os.close(fd)
            fd = None
        os.replace(tmp, path)     # on POSIX still locked, so no cleaner takes it meanwhile
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    finally:
        if fd is not None:
            os.close(fd)
