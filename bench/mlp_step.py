"""Training-step benchmark: one SGD step of an MLP, interpreted vs compiled.

The benchmark lives in the installed package (`bpc.bench.mlp_step`); this
script runs it with the same options, as do `python -m bpc.bench.mlp_step`
and `bpc bench --no-scaling`. See bench/README.md for what it measures.

    python bench/mlp_step.py                       # tiny, medium, large
    python bench/mlp_step.py --model tiny --quick  # a short run
"""
from bpc.bench.mlp_step import main

if __name__ == "__main__":
    main()
