"""`math` for kernels run by the Numba CUDA simulator.

The simulator executes kernels as Python, where `math.log(-1.0)` raises
ValueError and `math.exp(1000.0)` OverflowError; on a GPU they give NaN
and Inf, and bpc's NaN checks rely on that. Under the simulator the
generated module imports this stand-in, which computes with NumPy (keeping
float32 as float32) and returns IEEE results. GPU builds import `math`.
"""
import math as _math

import numpy as _np


class _IEEEMath:
    nan, inf, pi, e = _math.nan, _math.inf, _math.pi, _math.e

    @staticmethod
    def _call(fn, x):
        with _np.errstate(all="ignore"):
            return fn(x)

    def exp(self, x):
        return self._call(_np.exp, x)

    def log(self, x):
        return self._call(_np.log, x)

    def log1p(self, x):
        return self._call(_np.log1p, x)

    def expm1(self, x):
        return self._call(_np.expm1, x)

    def sqrt(self, x):
        return self._call(_np.sqrt, x)

    def tanh(self, x):
        return self._call(_np.tanh, x)

    def __getattr__(self, name):   # anything else behaves as in `math`
        return getattr(_math, name)


math = _IEEEMath()
