"""Kernel tests run the Triton kernels on CUDA when present, else on CPU under the interpreter.

TRITON_INTERPRET must be set before the kernels are defined (the @triton.jit decorators read it),
so it is set here, at import time, before any test module imports megatron_rl.kernels' Triton code.
"""
import os
import random

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def gen():
    """A torch.Generator with a fresh seed each run; the seed is printed (shown on failure) and
    KERNELS_TEST_SEED=<seed> replays it."""
    seed = int(os.environ.get("KERNELS_TEST_SEED") or random.SystemRandom().randrange(2**31))
    print(f"seed={seed} (replay with KERNELS_TEST_SEED={seed})")
    return torch.Generator().manual_seed(seed)
