"""Vocab-parallel TP=2 and TP=4 over gloo: sharded logits (and lm_head weight) give the unsharded
fp64 values, and each rank's gradient slice equals the slice of the unsharded gradient, for the
Triton kernels and the reference, including a rank whose slice is all vocab padding. One spawn of
4 ranks runs every check (kernels_tp_worker.py)."""
import os
import random

import torch.multiprocessing as mp

import kernels_tp_worker
from kernels_testlib import DEVICE


def test_vocab_parallel_tp2_and_tp4(tmp_path):
    seed = int(os.environ.get("KERNELS_TEST_SEED") or random.SystemRandom().randrange(2**31))
    print(f"seed={seed} (replay with KERNELS_TEST_SEED={seed})")
    mp.spawn(kernels_tp_worker.run, args=(4, str(tmp_path / "init"), seed, DEVICE), nprocs=4, join=True)
