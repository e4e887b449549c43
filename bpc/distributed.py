"""Data-parallel training over MPI: the same training step on N processes.

Each process (rank) computes the gradients of its shard of a global batch;
one `Allreduce` of a single flat buffer (every gradient, weighted by the
shard's rows, plus the row count and the loss) sums them; every rank then
applies the same update to the same parameters. So N ranks training on
shards of a global batch B take the steps one process takes on B (up to
the order of float additions).

    step = bpc.distributed.DataParallel([x, y], loss, model.params, bpc.optim.SGD(0.1))
    for X, Y in batches:                       # the same global batches on every rank
        step(*bpc.distributed.shard(X, Y))     # this rank's rows

Run it with `mpiexec -n 2 python train.py` (`pip install 'bpc[mpi]'`
brings mpi4py and an MPI runtime). On several machines, list them in a host
file: `mpiexec -n 4 -f hosts python train.py` (MPICH), every machine with
the same Python environment and script.
"""
import sys

import numpy as np

from .graph.tensor import Tensor, input as new_input

INSTALL = ("bpc.distributed needs mpi4py and an MPI runtime: pip install 'bpc[mpi]' (mpi4py and mpich), "
           "then start the script under MPI, e.g. `mpiexec -n 2 python train.py`")


def mpi():
    """The `mpi4py.MPI` module, or a RuntimeError saying what to install."""
    try:
        from mpi4py import MPI
    except ImportError:
        raise RuntimeError(INSTALL) from None
    return MPI


def rank(comm=None):
    """This process's rank (0 when MPI runs one process)."""
    return (comm or mpi().COMM_WORLD).Get_rank()


def size(comm=None):
    """The number of processes."""
    return (comm or mpi().COMM_WORLD).Get_size()


def shard(*arrays, comm=None):
    """This rank's contiguous share of the rows of each array (a global
    batch): ranks get sizes differing by at most one row, in rank order."""
    comm = comm or mpi().COMM_WORLD
    n = len(arrays[0])
    r, k = comm.Get_rank(), comm.Get_size()
    lo, hi = r * n // k, (r + 1) * n // k
    out = tuple(np.asarray(a)[lo:hi] for a in arrays)
    return out if len(out) > 1 else out[0]


def abort_on_uncaught_exceptions(comm=None):
    """Make an exception that ends this rank abort every rank: the others
    would otherwise wait in their next Allreduce forever. (A rank that is
    killed outright is ended for all by `mpiexec` itself.)"""
    comm = comm or mpi().COMM_WORLD
    previous = sys.excepthook
    if getattr(previous, "bpc_aborts", False) or comm.Get_size() == 1:
        return

    def hook(kind, value, tb):
        previous(kind, value, tb)
        sys.stderr.write(f"bpc.distributed: rank {comm.Get_rank()} failed; aborting all {comm.Get_size()} ranks\n")
        sys.stderr.flush()
        comm.Abort(1)
    hook.bpc_aborts = True
    sys.excepthook = hook


def broadcast(tensors, root=0, comm=None):
    """Give every rank the values of params/state `tensors` on rank `root`."""
    comm = comm or mpi().COMM_WORLD
    for t in tensors:
        value = np.array(t.value, order="C")   # a copy that keeps 0-d values 0-d
        comm.Bcast(value.reshape(-1), root=root)
        t.value = value


class DataParallel:
    """A training step split around one Allreduce.

    inputs: the step's input tensors (a shard of the global batch is fed);
    loss: the scalar mean loss over the fed rows; params: the trained
    params; optimizer: a `bpc.optim` optimizer. Two compiled functions
    (target as in `bpc.function`): the loss and every gradient written into
    one flat buffer, then the optimizer's update from the summed buffer.
    Building it broadcasts the params and the optimizer's state from rank 0,
    so every rank starts from the same values, and makes an uncaught exception
    on any rank abort them all (`abort_on_uncaught_exceptions`). `step(*shard)` returns the
    global batch's mean loss (the same on every rank) and the extra
    `outputs` of this rank's rows."""

    def __init__(self, inputs, loss, params, optimizer, outputs=(), target=None, comm=None):
        from . import function, grad, ops
        self.comm = comm or mpi().COMM_WORLD
        self.params = list(params)
        if not isinstance(loss, Tensor) or loss.shape != ():
            raise ValueError(f"DataParallel: loss must be a scalar tensor (a mean over the fed rows), got {loss!r}")
        grads = grad(loss, self.params)
        dtype = loss.dtype
        flat = ops.concat([ops.reshape(ops.cast(g, dtype) if g.dtype != dtype else g, (-1,)) for g in grads], axis=0)
        self.size = flat.shape[0]
        self._gradients = function(list(inputs), [loss, flat, *outputs], target=target, name="gradients")
        summed = new_input("summed_gradients", (self.size,), dtype=dtype)
        parts, start = [], 0
        for p in self.params:
            count = int(np.prod(p.shape, dtype=np.int64))
            part = ops.reshape(summed[start:start + count], p.shape)
            parts.append(ops.cast(part, p.dtype) if p.dtype != dtype else part)
            start += count
        updates = optimizer.apply_gradients(self.params, parts)
        self._update = function([summed], [], updates=updates, target=target, name="update")
        # One message per step: the gradients times the shard's rows, the rows, the loss times the rows.
        self._buffer = np.empty(self.size + 2, dtype=dtype)
        state = [t for t, _ in updates.items() if t.kind == "state"] if isinstance(updates, dict) else []
        broadcast(self.params + state, comm=self.comm)
        abort_on_uncaught_exceptions(self.comm)

    def __call__(self, *shard_arrays):
        MPI = mpi()
        rows = len(shard_arrays[0])
        loss, flat, *outputs = self._gradients(*shard_arrays)
        buf = self._buffer
        buf[:self.size] = flat
        buf[:self.size] *= rows
        buf[self.size] = rows
        buf[self.size + 1] = float(loss) * rows
        self.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        total = buf[self.size]
        buf /= total                      # the mean gradient and the mean loss, in place
        self._update(buf[:self.size])
        return (buf[self.size + 1], *outputs)


__all__ = ["DataParallel", "mpi", "rank", "size", "shard", "broadcast", "abort_on_uncaught_exceptions", "INSTALL"]
