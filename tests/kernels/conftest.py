"""Kernel tests run the Triton kernels on CUDA when present, else on CPU under the interpreter
(TRITON_INTERPRET is set for the whole session in tests/conftest.py, before any module imports triton).
"""
import os
import random

import pytest
import torch


@pytest.fixture
def gen():
    """A torch.Generator with a fresh seed each run; the seed is printed (shown on failure) and
    KERNELS_TEST_SEED=<seed> replays it."""
    seed = int(os.environ.get("KERNELS_TEST_SEED") or random.SystemRandom().randrange(2**31))
    print(f"seed={seed} (replay with KERNELS_TEST_SEED={seed})")
    return torch.Generator().manual_seed(seed)
