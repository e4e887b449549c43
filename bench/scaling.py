"""Scaling study: compiled vs interpreted training-step time as the batch
grows (1 to 4096) and as the width grows (16 to 2048).

The study lives in the installed package (`bpc.bench.scaling`); this script
runs it with the same options, as does `python -m bpc.bench.scaling`.
See bench/README.md for what it measures.

    python bench/scaling.py [--threads 1] [--quick] [--out DIR]
"""
from bpc.bench.scaling import main

if __name__ == "__main__":
    main()
