"""On-policy distillation's teacher: a frozen Megatron role beside the actor (DistillConfig).

    distill: {enabled: true, teacher_path: path/to/teacher_hf, coef: 1.0, mode: add}

The teacher is a Hugging Face *ForCausalLM that shares the policy's tokenizer (it reads the
student's token ids as they are); it may differ in size. It is built on every rank with the run's
TP/PP layout, scores each step's rows in the score phase beside the reference, and is not
checkpointed (it never changes: a resumed run loads it from teacher_path again). The per-token
advantage is algorithms.distillation_advantages.
"""
from __future__ import annotations

from typing import Optional


def build_teacher(cfg) -> Optional[object]:
    """The teacher role on this rank, or None when distillation is off; ConfigError in one line for
    a checkpoint that cannot be the teacher."""
    if not cfg.distill.enabled:
        return None
    from ..config.hf import side_model_config
    from ..data.prompts import check_same_tokenizer
    from ..models.role import MegatronRole

    key, path = "distill.teacher_path", cfg.distill.teacher_path
    model = side_model_config(path, cfg.model, cfg.parallel, key, what="teacher", classifier=False,
                              hint="point it at a Hugging Face *ForCausalLM checkpoint with the policy's tokenizer")
    check_same_tokenizer(path, cfg.data.tokenizer or cfg.model.hf_path, key, what="teacher")
    return MegatronRole.build("reference", model, cfg.parallel, hf_path=path)
