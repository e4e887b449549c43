"""Compiling a step's new kernels in helper processes, in parallel.

Numba compiles one function at a time per process (a global lock). So when
a step has many kernels that no cache holds yet, helper processes compile
some of them at the same time: every process, this one included, claims
the next kernel nobody has claimed (an exclusive file create in a private
folder; this process from the front of the list, helpers from the back)
and compiles it into the shared on-disk cache, then says so (a `done`
file). This process waits only for the kernels helpers claimed, then loads
them from the cache after checking them against the hashes the helpers
recorded (`cache.verify_compiled`). A helper that fails or dies only means
this process compiles what it had claimed; a helper that starts too late
to claim anything just exits.

Helpers start only where they pay: at least `MIN_NEW_KERNELS` kernels to
compile, more than one CPU for this process, and a usable cache folder (a
helper's start, ~0.8 s to import Numba and warm it up, overlaps with the
kernels this process compiles meanwhile). `BPC_COMPILE_WORKERS` sets the
number of helpers (0: never).
"""
import atexit
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time

log = logging.getLogger("bpc")

MIN_NEW_KERNELS = 6


def helper_count(new_kernels):
    """How many helper processes to start for this many new kernels."""
    env = os.environ.get("BPC_COMPILE_WORKERS", "").strip()
    if env:
        try:
            wanted = max(0, int(env))
        except ValueError:
            log.warning("bpc: BPC_COMPILE_WORKERS=%r is not a number; compiling without helpers", env)
            return 0
    else:
        try:
            cpus = len(os.sched_getaffinity(0))
        except AttributeError:
            cpus = os.cpu_count() or 1
        wanted = cpus - 1
    if new_kernels < MIN_NEW_KERNELS or wanted == 0:
        return 0
    from ..cache import cache_status
    if cache_status().folder is None:   # helpers could not share what they compile
        return 0
    return min(wanted, new_kernels // (MIN_NEW_KERNELS // 2))


def claim(folder, index):
    """Claim kernel `index` for this process; False if another process has
    (or the claims are over: the folder is gone)."""
    try:
        os.close(os.open(os.path.join(folder, f"claim_{index}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        return True
    except (FileExistsError, FileNotFoundError):
        return False


_running = []   # helpers that may still be exiting: reaped later, or at exit


def _reap(wait=False):
    for p in list(_running):
        if wait and p.poll() is None:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if p.poll() is not None:
            _running.remove(p)


atexit.register(_reap, True)


class Helpers:
    """Helper processes compiling kernels [(index, module source)] from the
    back of the list while this process compiles from the front."""

    def __init__(self, count, variant, kernels, prefix):
        from ..cache import cache_status
        _reap()
        self.claims = tempfile.mkdtemp(prefix="bpc-claims-")
        request = json.dumps({"variant": variant, "claims": self.claims, "prefix": prefix,
                              "kernels": [[i, src] for i, src in reversed(kernels)]})
        env = dict(os.environ, BPC_CACHE_DIR=cache_status().folder, BPC_COMPILE_WORKERS="0")
        self.procs = []
        for _ in range(count):
            p = subprocess.Popen([sys.executable, "-c", "from bpc.backends.cpu.workers import helper_main; "
                                  "helper_main()"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, env=env, text=True)
            try:
                p.stdin.write(request)
                p.stdin.close()
            except OSError:   # it died at once: this process compiles everything
                p.kill()
            self.procs.append(p)
            _running.append(p)

    def claim(self, index):
        return claim(self.claims, index)

    def finish(self, indexes):
        """Wait until the helpers have compiled `indexes` (those this process
        could not claim); returns the ones they did. Ends the claims: a helper
        still starting finds nothing left and exits."""
        pending = set(indexes)
        done = set()
        while pending:
            for i in list(pending):
                if os.path.exists(os.path.join(self.claims, f"done_{i}")):
                    done.add(i)
                    pending.discard(i)
            if pending and all(p.poll() is not None for p in self.procs):
                break   # helpers died with claims unfinished: this process compiles those
            time.sleep(0.005)
        shutil.rmtree(self.claims, ignore_errors=True)
        return done


def helper_main():
    """A helper process: read the request from stdin, compile what it claims,
    report each kernel it compiled on stdout."""
    from ..cache import load_module
    from . import kernel
    request = json.loads(sys.stdin.read())
    for index, source in request["kernels"]:
        if not claim(request["claims"], index):
            continue
        module, path, _ = load_module(source, prefix=request["prefix"])
        kernel(module, path, request["variant"])
        try:
            open(os.path.join(request["claims"], f"done_{index}"), "x").close()
        except FileNotFoundError:   # the main process stopped waiting
            return
