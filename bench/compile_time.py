"""Compile-time study: cold (empty cache) and warm start of the first step,
for deep MLPs, long elementwise chains, many params and an unrolled LSTM.

The study lives in the installed package (`bpc.bench.compile_time`); this
script runs it with the same options, as does
`python -m bpc.bench.compile_time`. See bench/README.md.

    python bench/compile_time.py [--case mlp:16 ...] [--out DIR]
"""
from bpc.bench.compile_time import main

if __name__ == "__main__":
    main()
