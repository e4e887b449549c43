"""Atomic file writes: bpc never leaves a half-written file behind."""
import os
import tempfile


def atomic_write_text(path, data, binary=False):
    """Write to a temporary file in the same folder, flush it to disk, then
    rename it over `path` (rename is atomic on POSIX and Windows)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
