"""Fused kernels for the RL hot path, installed as `megatron_rl.kernels`.

Logprob/entropy over (vocab-parallel) logits, the clipped-ratio policy loss and the fused lm_head
land here with their eager references (see the kernels issue and docs/).
"""
