import torch


def assert_values(t, expected, atol=1e-12):
    """Compare a tensor with nested Python numbers at the tensor's dtype."""
    torch.testing.assert_close(t, torch.tensor(expected, dtype=t.dtype), atol=atol, rtol=0)
