"""bpc's benchmarks, part of the installed package (`bpc bench` runs the
first two).

Three studies, each runnable as a module:

  mlp_step    one SGD training step of an MLP: interpreted vs compiled, cold
              compile, warm start, GEMM-only bound, and NumPy / PyTorch /
              JAX references (`python -m bpc.bench.mlp_step`)
  scaling     interpreted, compiled and GEMM-only step time as the batch and
              the width grow, with the crossovers where BLAS takes over
              (`python -m bpc.bench.scaling`)
  compile_time  cold and warm start of the first step: deep MLPs, long
              chains, many params, an unrolled LSTM
              (`python -m bpc.bench.compile_time`)

built from, in reading order:

  harness     timing rounds, round-robin pairing, medians and quartiles,
              fresh processes for cold compile, warm start and references
  steps       bpc's SGD step and its GEMM-only bound
  references  the same step in NumPy, PyTorch and JAX (each optional)
  machine     CPU, versions, load average, Numba and BLAS threads
  report      tables, JSON, CSV and PNG plots (matplotlib optional)
  child       what runs inside a fresh process

The source checkout's bench/ folder holds thin scripts that call these
modules, and bench/README.md, which explains how to read the numbers.
"""
