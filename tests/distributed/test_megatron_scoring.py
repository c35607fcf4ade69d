"""Forward-only scoring: per-token logprobs and entropy from the Megatron path (vocab-parallel through
megatron_rl.kernels, reference and Triton-interpreter backends) equal log_softmax of transformers'
logits at the labels."""
import pytest
import torch

from dist_harness import run_ranks
from hf_models import make_hf_model, model_config


def _score_worker(hf_dir, arch, tp, pp, ids, backend, temperature):
    from megatron_rl.config.schema import ParallelConfig
    from megatron_rl.models.role import MegatronRole
    from megatron_rl.parallel import init_parallel

    parallel = ParallelConfig(tensor=tp, pipeline=pp)
    init_parallel(parallel, seed=1)
    model = model_config(arch).model_copy(update={"kernels": backend})
    actor = MegatronRole.build("reference", model, parallel, hf_path=hf_dir)
    return actor.score({"input_ids": ids}, micro_batch_size=2, temperature=temperature, with_entropy=True)


@pytest.mark.parametrize("arch,tp,pp,backend", [
    ("llama", 2, 1, "reference"),  # tied embeddings, vocab 97 padded to 98 over TP=2
    ("llama", 2, 1, "triton"),     # the same through the Triton kernels (interpreted on CPU)
    ("qwen2", 1, 2, "reference"),
])
def test_scored_logprobs_equal_transformers(tmp_path, monkeypatch, arch, tp, pp, backend):
    if backend == "triton" and not torch.cuda.is_available():
        monkeypatch.setenv("TRITON_INTERPRET", "1")  # inherited by the spawned ranks
    hf = make_hf_model(arch, seed=torch.randint(0, 2**31, ()).item())
    hf.save_pretrained(tmp_path / "hf", safe_serialization=True)
    ids = torch.randint(0, model_config(arch).vocab_size, (4, 9))
    temperature = 0.7
    with torch.no_grad():
        logp = torch.log_softmax(hf(ids).logits.double() / temperature, -1)
    expected_lp = logp[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
    expected_ent = -(logp.exp() * logp).sum(-1)[:, :-1]
    for out in run_ranks(_score_worker, 2, str(tmp_path / "hf"), arch, tp, pp, ids, backend, temperature):
        assert out["logprobs"].shape == ids.shape and torch.all(out["logprobs"][:, 0] == 0)
        assert torch.allclose(out["logprobs"][:, 1:].double(), expected_lp, atol=1e-4)
        assert torch.allclose(out["entropy"][:, 1:].double(), expected_ent, atol=1e-4)
