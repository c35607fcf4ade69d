"""The RL loop (rl.py), supervised fine-tuning (sft.py), evaluation, metrics.

Imports are lazy: `megatron_rl.trainer.rl` pulls in Megatron; the CLI imports it only to train.
"""
