import os
import tempfile

import numpy as np
import pytest

# Deterministic, single-threaded numerics keep the suite stable on small CI machines.
os.environ.setdefault("OMP_NUM_THREADS", "2")
# Rendered evaluation sets are cached for the session only, never in the user's cache.
os.environ["HDME_CACHE_DIR"] = tempfile.mkdtemp(prefix="hdme-test-cache-")


@pytest.fixture
def rng():
    return np.random.default_rng(0)
