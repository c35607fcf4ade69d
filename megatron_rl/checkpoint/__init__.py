"""Checkpoints: Megatron distributed checkpoints for training state, HF export for models."""
from .dist_ckpt import find_latest, list_checkpoints, load_checkpoint, resolve_checkpoint, save_checkpoint

__all__ = ["find_latest", "list_checkpoints", "load_checkpoint", "resolve_checkpoint", "save_checkpoint"]
