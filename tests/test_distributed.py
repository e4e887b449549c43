"""Data-parallel training over MPI (`bpc.distributed`): two ranks training
on shards of each global batch take the same steps as one process on the
whole batch, and a missing MPI says what to install."""
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import bpc

SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import bpc
    from bpc import distributed as dist
    out, dtype = sys.argv[1], sys.argv[2]
    model = bpc.nn.Sequential([bpc.nn.Dense(8, 16, "tanh", seed=0, dtype=dtype),
                               bpc.nn.Dense(16, 3, seed=1, dtype=dtype)])
    x, y = bpc.input("x", (None, 8), dtype), bpc.input("y", (None,), "int64")
    loss = bpc.softmax_cross_entropy(model(x), y)
    step = dist.DataParallel([x, y], loss, model.params, bpc.optim.Adam(0.01), target="cpu")
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(6):                  # global batches of 37 rows: shards of 18 and 19
        X, Y = rng.normal(size=(37, 8)).astype(dtype), rng.integers(0, 3, 37)
        losses.append(step(*dist.shard(X, Y))[0])
    if dist.rank() == 0:
        np.savez(out, losses=np.array(losses), size=dist.size(), **{p.name: p.value for p in model.params})
""")


def _mpiexec():
    pytest.importorskip("mpi4py")
    runner = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    if runner is None:
        pytest.skip("no mpiexec (pip install 'bpc[mpi]')")
    return runner


@pytest.mark.parametrize("dtype, rtol", [("float32", 1e-5), ("float64", 1e-12)])
def test_two_ranks_take_the_steps_of_one_process(tmp_path, dtype, rtol):
    runner = _mpiexec()
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, BPC_CACHE_DIR=str(tmp_path / "cache"))
    results = {}
    for n in (1, 2):
        out = tmp_path / f"ranks{n}.npz"
        done = subprocess.run([runner, "-n", str(n), sys.executable, str(script), str(out), dtype], env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        results[n] = np.load(out)
    one, two = results[1], results[2]
    assert int(one["size"]) == 1 and int(two["size"]) == 2
    for key in one.files:
        if key != "size":
            np.testing.assert_allclose(two[key], one[key], rtol=rtol, atol=rtol * 1e-2, err_msg=key)
    assert one["losses"][-1] < one["losses"][0]


FAILING = textwrap.dedent("""
    import os, signal, sys, time
    import numpy as np
    import bpc
    from bpc import distributed as dist
    x, y = bpc.input("x", (None, 4)), bpc.input("y", (None,), "int64")
    model = bpc.nn.Dense(4, 3, seed=0)
    step = dist.DataParallel([x, y], bpc.softmax_cross_entropy(model(x), y), model.params, bpc.optim.SGD(0.1),
                             target="interpret")
    rng = np.random.default_rng(0)
    for i in range(100000):
        if i == 3 and dist.rank() == 1:
            if sys.argv[1] == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError("rank 1 failed on purpose")
        step(*dist.shard(rng.normal(size=(8, 4)), rng.integers(0, 3, 8)))
        time.sleep(0.01)
""")


@pytest.mark.parametrize("how", ["raise", "kill"])
def test_a_failing_rank_ends_every_rank(tmp_path, how):
    """A rank that raises (bpc aborts the communicator) or is killed
    (mpiexec ends the job) does not leave the other waiting in its next
    Allreduce: the whole run ends with an error, well within 30 s."""
    runner = _mpiexec()
    script = tmp_path / "failing.py"
    script.write_text(FAILING)
    done = subprocess.run([runner, "-n", "2", sys.executable, str(script), how], capture_output=True, text=True,
                          timeout=30, env=dict(os.environ, BPC_CACHE_DIR=str(tmp_path / "cache")))
    assert done.returncode != 0
    if how == "raise":
        assert "rank 1 failed on purpose" in done.stderr and "aborting all 2 ranks" in done.stderr


def test_shards_cover_the_batch_in_rank_order():
    pytest.importorskip("mpi4py")

    class Comm:   # a stand-in communicator of 3 ranks
        def __init__(self, r):
            self.r = r

        def Get_rank(self):
            return self.r

        def Get_size(self):
            return 3
    X = np.arange(10)
    parts = [bpc.distributed.shard(X, comm=Comm(r)) for r in range(3)]
    assert [len(p) for p in parts] == [3, 3, 4]
    np.testing.assert_array_equal(np.concatenate(parts), X)


def test_without_mpi_the_error_says_what_to_install_and_run(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)    # import mpi4py now fails
    with pytest.raises(RuntimeError, match=r"pip install 'bpc\[mpi\]'.*mpiexec -n 2 python"):
        bpc.distributed.rank()
