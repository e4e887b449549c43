"""Launch configurations, chosen from the shapes of each call.

`Limits` holds the only fixed sizes: threads per block (a power of two;
also the shared-memory size of reduction kernels), the matmul tile edge,
a cap on blocks per grid (kernels loop grid-stride over the rest), and the
two thresholds that pick a strategy from the shapes:

* reductions: each output gets `rn` cooperating threads, about one per
  `lane_work` reduced elements (a power of two, at most `block`); short
  reductions (softmax over 10 classes) get one thread per output and no
  barrier, long ones (a bias gradient over the batch, a mean loss) a
  shared-memory tree;
* matrix products: the tiled shared-memory kernel from `tiled_min_work`
  multiply-adds on (and when the output spans at least one tile), one
  thread per output element below (tiny products, where tiles would be
  mostly padding).

The Numba CUDA simulator runs each simulated thread as a Python thread and
polls them at every barrier, so its defaults are tiny (2 threads per block,
one block) and its matmuls skip tiles; tests/test_cuda.py forces the tree
and tiled paths with other limits and non-power-of-two sizes.
"""
from dataclasses import dataclass

import numpy as np

from ...ops.core import resolve


@dataclass(frozen=True)
class Limits:
    block: int          # threads per 1-d block and per reduction block (power of two)
    tile: int           # matmul tile edge: tile x tile threads per block
    max_blocks: int     # blocks per grid dimension; grid-stride loops cover the rest
    warp: int = 32      # outputs along x in column reductions (coalesced reads)
    lane_work: int = 32          # reduced elements per cooperating thread
    tiled_min_work: int = 1 << 15   # multiply-adds from which matmul uses tiles

    def __post_init__(self):
        for name in ("block", "tile", "max_blocks", "warp", "lane_work"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"cuda launch limit {name} must be a positive int, got {v!r}")
        if self.block & (self.block - 1):
            raise ValueError(f"cuda launch limit block must be a power of two, got {self.block}")
        if self.tile * self.tile > 1024:
            raise ValueError(f"cuda matmul tile {self.tile} needs more than 1024 threads per block")


def default_limits(simulator, **overrides):
    """The limits for a GPU (from its multiprocessor count) or the
    simulator, with `overrides` (any `Limits` field) applied."""
    if simulator:
        base = dict(block=2, tile=2, max_blocks=1, warp=2, lane_work=8, tiled_min_work=1 << 62)
    else:
        from numba import cuda
        sms = cuda.get_current_device().MULTIPROCESSOR_COUNT
        base = dict(block=256, tile=16, max_blocks=32 * sms, warp=32, lane_work=32, tiled_min_work=1 << 15)
    unknown = set(overrides) - set(base)
    if unknown:
        raise TypeError(f"unknown cuda option(s) {', '.join(sorted(unknown))}; expected {', '.join(base)}")
    base.update({k: v for k, v in overrides.items() if v is not None})
    base["warp"] = min(base["warp"], base["block"])
    return Limits(**base)


def _size(shape, batch):
    return int(np.prod(resolve(tuple(shape), batch), dtype=np.int64))


def _pow2(n):
    return 1 << max(0, int(n) - 1).bit_length()


def _blocks(n, per):
    return max(1, (n + per - 1) // per)


def configure(spec, batch, limits):
    """(grid, block, dynamic shared-memory bytes, scalar arguments) of one
    kernel for a batch size."""
    L = limits
    if spec.form == "reduce":
        outer, inner = _size(spec.launch["outer"], batch), _size(spec.launch["inner"], batch)
        want = min(L.block, _pow2(_blocks(inner, L.lane_work)))   # cooperating threads per output
        if spec.launch["rows"]:
            rn = want
            on = min(L.block // rn, _pow2(outer))
            block = (rn, on)
        else:   # a warp's worth of neighbouring outputs along x, for coalesced reads
            on = min(_pow2(outer), max(L.warp, L.block // want))
            rn = min(want, L.block // on)
            block = (on, rn)
        grid = min(_blocks(outer, on), L.max_blocks)
        shared = 8 * rn * on * spec.launch["slots"] if rn > 1 else 0
        return grid, block, shared, {"rlog": rn.bit_length() - 1}
    if spec.form == "matmul":
        rows, inner, cols = (_size((spec.launch[k],), batch) for k in ("rows", "inner", "cols"))
        outer = _size(spec.launch["outer"], batch)   # matrices in the (unsummed) batch
        if rows * inner * cols >= L.tiled_min_work and min(rows, cols) >= L.tile:
            grid = (min(_blocks(cols, L.tile), L.max_blocks), min(_blocks(rows, L.tile), L.max_blocks),
                    max(1, min(outer, L.max_blocks)))
            return grid, (L.tile, L.tile), 2 * L.tile * L.tile * spec.launch["itemsize"], {"tiled": 1}
        total = outer * rows * cols
        threads = min(L.block, total)
        return min(_blocks(total, threads), L.max_blocks), threads, 0, {"tiled": 0}
    total = _size(spec.launch["total"], batch)
    threads = min(L.block, max(1, total))
    return min(_blocks(total, threads), L.max_blocks), threads, 0, {}
