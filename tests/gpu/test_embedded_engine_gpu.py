"""GPU only (skipped without CUDA): colocated memory release and resume of the embedded engine."""
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "distributed"))
from hf_models import make_hf_model, model_config  # noqa: E402

from megatron_rl.rollout import EmbeddedEngine, SamplingParams  # noqa: E402


def test_release_frees_gpu_memory_and_resume_restores_generation(tmp_path):
    make_hf_model("qwen2", seed=1).save_pretrained(tmp_path, safe_serialization=True)
    engine = EmbeddedEngine(model_config("qwen2"), hf_path=str(tmp_path), device="cuda")
    params = SamplingParams(temperature=0.0, max_new_tokens=8)
    before = engine.generate([[1, 2, 3]], params).samples[0].response_ids
    held = torch.cuda.memory_allocated()
    engine.release_memory()
    assert torch.cuda.memory_allocated() < held
    engine.resume_memory()
    assert engine.generate([[1, 2, 3]], params).samples[0].response_ids == before
