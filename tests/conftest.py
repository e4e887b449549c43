"""Shared test setup.

`TARGETS` lists every target the op and training suites run on; tests take
the `target` fixture so a new target is covered by adding it here.
"""
import os

import numpy as np
import pytest

TARGETS = ["interpret"]


@pytest.fixture(params=TARGETS)
def target(request):
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(0)
