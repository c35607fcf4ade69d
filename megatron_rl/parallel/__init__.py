"""Process-group topology (Megatron parallel_state) and the CPU backend for development and tests."""
from .topology import destroy_parallel, device, init_parallel

__all__ = ["destroy_parallel", "device", "init_parallel"]
