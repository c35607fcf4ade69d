"""Masked reductions over [batch, response_len] tensors with a 0/1 response mask."""
from __future__ import annotations

import torch


def as_float(x: torch.Tensor) -> torch.Tensor:
    """Compute in fp32 (fp64 stays fp64): bf16/fp16 counts and exp() round or overflow."""
    return x if x.dtype == torch.float64 else x.float()


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    # where(), not x * mask: a NaN or inf at a masked position must not leak into the sum
    x = torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device)) * mask
    return x.sum() if dim is None else x.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    """Mean over the positions where mask is 1; 0 where there are none (never NaN)."""
    count = mask.sum() if dim is None else mask.sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    mean = masked_mean(x, mask)
    count = mask.sum()
    var = masked_sum((x - mean) ** 2, mask) / count.clamp(min=1)
    if unbiased:
        # Bessel's correction, as torch.var; a single element has no spread.
        var = var * count / (count - 1).clamp(min=1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) with statistics over masked positions only (unbiased variance)."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    return whitened if shift_mean else whitened + mean


def group_ids(group_index, device=None) -> tuple[torch.Tensor, int]:
    """Map arbitrary group labels (tensor of ints or a sequence of hashables) to 0..G-1."""
    if torch.is_tensor(group_index):
        _, ids = torch.unique(group_index, return_inverse=True)
        ids = ids.to(device) if device is not None else ids
        return ids, int(ids.max()) + 1 if ids.numel() else 0
    table: dict = {}
    ids = torch.tensor([table.setdefault(g, len(table)) for g in group_index], dtype=torch.long, device=device)
    return ids, len(table)
