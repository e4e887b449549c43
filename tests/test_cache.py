"""The on-disk cache of generated modules trusts only a private folder of
this user, runs uncached (with one warning) when it cannot use it, and
rebuilds whatever is damaged in it.

Each compiled function below has its own constant, so its module is not
already imported by another test; tests that need no Numba compile load a
plain module through the same path."""
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

import bpc
from bpc.backends import cache
from bpc.errors import CompileError

HAVE_UIDS = hasattr(os, "geteuid")


@pytest.fixture
def root(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("BPC_CACHE_DIR", str(folder))
    return folder


@pytest.fixture
def warnings_(caplog):
    caplog.set_level(logging.WARNING, logger="bpc")
    return lambda: [r.getMessage() for r in caplog.records if r.name == "bpc" and r.levelno == logging.WARNING]


def plain_module(tag):
    """A module source unique to `tag` (no Numba in it)."""
    return f"# {tag}\nVALUE = {len(str(tag))}\n"


def reload(source):
    """load_module as a new process would see it: not yet imported here."""
    sys.modules.pop(f"bpc_step_{cache.module_key(source)[:24]}", None)
    return cache.load_module(source)


def compiled(scale):
    x = bpc.input("x", (None, 3))
    return bpc.function([x], bpc.sum(x * scale), target="cpu")


def kernel_path(f):
    """The file of the (one) kernel module of a `compiled` function."""
    (_, path), = f.backend.kernel_modules
    return path


def forget(f):
    """Make this process forget f's kernels, as a new process would."""
    from bpc.backends import cpu
    for module, _ in f.backend.kernel_modules:
        sys.modules.pop(module.__name__, None)
        for variant in ("serial", "parallel"):
            cpu._kernels.pop((module.__name__, variant), None)


def check_runs(f, scale):
    x = np.arange(6.0).reshape(2, 3)
    np.testing.assert_allclose(f(x), 15.0 * scale)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def assert_uncached(path, root):
    folder = os.path.dirname(path)
    assert not os.path.abspath(path).startswith(str(root) + os.sep)
    assert mode(folder) == 0o700 and mode(os.path.dirname(folder)) == 0o700
    assert cache.cache_status().folder is None


def test_folders_are_created_private_whatever_the_umask(root):
    old = os.umask(0o022)
    try:
        module, path, _ = cache.load_module(plain_module(root))
    finally:
        os.umask(old)
    assert module.VALUE == len(str(root))
    shard = os.path.dirname(path)   # root/cpu/<two hex digits of the module's key>
    assert os.path.dirname(shard) == str(root / "cpu") and len(os.path.basename(shard)) == 2
    for folder in (root, root / "cpu", shard, os.path.join(shard, "__pycache__")):
        assert mode(folder) == 0o700, folder
    assert cache.cache_status() == (str(root), None)


def test_folder_others_can_write_is_refused_once_and_the_function_runs_uncached(root, warnings_):
    root.mkdir()
    os.chmod(root, 0o770)
    f = compiled(1.25)
    check_runs(f, 1.25)
    assert_uncached(kernel_path(f), root)
    cache.load_module(plain_module(root))   # another module: no second warning
    status = cache.cache_status()
    assert "written by others" in status.reason
    refused = [m for m in warnings_() if str(root) in m]
    assert len(refused) == 1 and "uncached" in refused[0]
    assert os.listdir(root) == []


@pytest.mark.skipif(not HAVE_UIDS or os.geteuid() != 0, reason="giving a folder away needs root")
def test_folder_owned_by_another_user_is_refused(root, warnings_):
    root.mkdir(mode=0o700)
    os.chown(root, os.geteuid() + 4242, -1)
    module, path, _ = cache.load_module(plain_module(root))
    assert module.VALUE == len(str(root))
    assert_uncached(path, root)
    assert "owned by another user" in cache.cache_status().reason
    assert any("owned by another user" in m for m in warnings_())


def test_folder_that_cannot_be_created_runs_a_compiled_step_uncached(tmp_path, monkeypatch, warnings_):
    # A regular file as parent: creation fails for every user, root included.
    (tmp_path / "file").write_text("")
    root = tmp_path / "file" / "cache"
    monkeypatch.setenv("BPC_CACHE_DIR", str(root))
    f = compiled(1.5)
    check_runs(f, 1.5)
    check_runs(f, 1.5)
    assert_uncached(kernel_path(f), root)
    assert os.path.isfile(kernel_path(f))
    assert any("cannot create the cache folder" in m for m in warnings_())


def test_unwritable_home_runs_uncached(tmp_path, monkeypatch, warnings_):
    (tmp_path / "file").write_text("")
    monkeypatch.delenv("BPC_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "file" / "home"))
    module, path, _ = cache.load_module(plain_module(tmp_path))
    assert module.VALUE == len(str(tmp_path))
    assert_uncached(path, tmp_path)
    assert any("cannot create the cache folder" in m for m in warnings_())


@pytest.mark.skipif(not os.path.isdir("/proc/self/fdinfo"), reason="needs Linux /proc")
def test_folder_that_cannot_be_written_runs_uncached(monkeypatch, warnings_):
    # Owned by this process's user, not writable by anyone (root included,
    # although os.access says root may write it).
    root = "/proc/self/fdinfo"
    monkeypatch.setenv("BPC_CACHE_DIR", root)
    module, path, _ = cache.load_module(plain_module("read-only folder"))
    assert module.VALUE == len("read-only folder")
    assert_uncached(path, root)
    assert any(root in m and "uncached" in m for m in warnings_())


def _junk_module(path, manifest, folder):
    with open(path, "wb") as f:
        f.write(b"\xff\xfe raise SystemExit('never run')\n")   # not even UTF-8


def _folder_as_module(path, manifest, folder):
    os.unlink(path)
    os.makedirs(os.path.join(path, "inside"))


def _folder_as_manifest(path, manifest, folder):
    os.makedirs(os.path.join(manifest, "inside"))


def _unparsable_manifest(path, manifest, folder):
    with open(manifest, "w") as f:
        f.write("[" * 100000)


def _file_as_pycache(path, manifest, folder):
    os.rmdir(folder / "__pycache__")
    (folder / "__pycache__").write_text("junk")


def _file_as_target_folder(path, manifest, folder):
    shutil.rmtree(folder.parent)   # root/cpu
    folder.parent.write_text("junk")


@pytest.mark.parametrize("damage", [_junk_module, _folder_as_module, _folder_as_manifest, _unparsable_manifest,
                                    _file_as_pycache, _file_as_target_folder])
def test_damaged_files_and_folders_are_rebuilt(root, damage):
    source = plain_module(f"{root} {damage.__name__}")
    _, path, _ = cache.load_module(source)
    folder, manifest = Path(path).parent, cache._manifest_path(path)   # root/cpu/<shard>
    damage(path, manifest, folder)
    module, again, _ = reload(source)
    assert again == path and module.VALUE == len(f"{root} {damage.__name__}")
    with open(path, encoding="utf-8") as f:
        assert f.read() == source
    cache.verify_compiled(path)
    cache.record_compiled(path)
    with open(manifest, encoding="utf-8") as f:
        assert json.load(f) == {}
    for sub in (folder, folder / "__pycache__"):
        assert sub.is_dir() and mode(sub) == 0o700


def test_damaged_compiled_cache_is_discarded_and_recompiled(root, warnings_):
    f = compiled(1.75)
    check_runs(f, 1.75)
    path = kernel_path(f)
    pycache = os.path.join(os.path.dirname(path), "__pycache__")
    stem = os.path.splitext(os.path.basename(path))[0]
    files = sorted(n for n in os.listdir(pycache) if n.startswith(stem + "."))
    assert any(n.endswith(".nbi") for n in files) and any(n.endswith(".nbc") for n in files)
    with open(cache._manifest_path(path), encoding="utf-8") as fh:
        assert sorted(json.load(fh)) == files

    # As the next process finds it: a truncated data file, a folder in place
    # of the index, and a folder in place of the manifest.
    for name in files:
        full = os.path.join(pycache, name)
        if name.endswith(".nbc"):
            with open(full, "r+b") as fh:
                fh.truncate(10)
        else:
            os.unlink(full)
            os.makedirs(os.path.join(full, "inside"))
    os.unlink(cache._manifest_path(path))
    os.makedirs(cache._manifest_path(path))
    forget(f)

    again = compiled(1.75)
    assert any("discarding" in m for m in warnings_())
    check_runs(again, 1.75)
    assert [c.how for c in again.backend.compiles["serial"]] == ["compiled"]
    with open(cache._manifest_path(path), encoding="utf-8") as fh:
        recorded = json.load(fh)
    assert recorded and sorted(recorded) == sorted(n for n in os.listdir(pycache) if n.startswith(stem + "."))
    for name, digest in recorded.items():
        assert os.path.isfile(os.path.join(pycache, name))
        assert cache._digest(os.path.join(pycache, name)) == digest


def test_uncached_modules_live_in_a_private_folder_removed_at_exit(tmp_path):
    (tmp_path / "file").write_text("")
    code = ("from bpc.backends import cache\n"
            "module, path, _ = cache.load_module('VALUE = 7\\n')\n"
            "print(module.VALUE, path)\n")
    env = dict(os.environ, BPC_CACHE_DIR=str(tmp_path / "file" / "cache"))
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    value, path = run.stdout.split()
    assert value == "7" and "running uncached" in run.stderr
    assert not os.path.exists(path) and not os.path.exists(os.path.dirname(os.path.dirname(path)))


def test_no_writable_folder_at_all_is_a_clear_error(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("BPC_CACHE_DIR", str(tmp_path / "file" / "cache"))
    monkeypatch.setattr(cache, "_temp_root", None)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "file" / "tmp"))
    with pytest.raises(CompileError, match="BPC_CACHE_DIR"):
        cache.load_module(plain_module(tmp_path))
