"""Session-wide test setup.

Without CUDA the Triton kernels run under the interpreter, which triton chooses when a kernel is
decorated and may cache from its first look at the environment. Any test module can import triton
indirectly at collection time (sglang's client modules do), so TRITON_INTERPRET is set here, before
any test module is imported, not in tests/kernels.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
