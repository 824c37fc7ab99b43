import os

import numpy as np
import pytest

# Deterministic, single-threaded numerics keep the suite stable on small CI machines.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture
def rng():
    return np.random.default_rng(0)
