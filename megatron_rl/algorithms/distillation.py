"""On-policy distillation: the per-token reward of imitating a teacher on the student's own samples.

    r_t = log p_teacher(y_t | y_<t) - log p_student(y_t | y_<t)

summed over a response this is minus a one-sample estimate of the reverse KL(student || teacher),
so maximising it pulls the student toward the teacher on the states the student visits. Used as a
per-token advantage (no discount: each token is credited with its own term only), alone or added
to the advantages of the task reward.
"""
from __future__ import annotations

import torch

from .masked import as_float, masked_mean


def distillation_advantages(student_logprob: torch.Tensor, teacher_logprob: torch.Tensor,
                            response_mask: torch.Tensor, coef: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(coef * (teacher - student) on response tokens, 0 elsewhere [B, L]; the mean per-token
    reverse-KL estimate student - teacher over response tokens). Both detached."""
    with torch.no_grad():
        student, teacher = as_float(student_logprob), as_float(teacher_logprob)
        mask = response_mask.to(student.dtype)
        gap = torch.where(mask.bool(), teacher - student, 0.0)  # padding may hold anything
        return coef * gap * mask, masked_mean(-gap, mask)
