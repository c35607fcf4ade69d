"""The resharding test: Megatron actor shards at TP=2 or TP=2 x PP=2 -> full HF tensors -> the embedded
engine; afterwards the engine's sampling logprobs equal the actor's scoring of the same tokens."""
import pytest
import torch

from dist_harness import run_ranks
from hf_models import make_hf_model, model_config

PROMPTS = [[5, 6, 7], [9, 10, 11, 12, 13]]


def _sync_worker(hf_dir, arch, tp, pp):
    import torch.distributed as dist

    from megatron_rl.config.schema import ParallelConfig
    from megatron_rl.models.role import MegatronRole
    from megatron_rl.parallel import init_parallel
    from megatron_rl.rollout import EmbeddedEngine, SamplingParams
    from megatron_rl.weight_sync import InProcessWeightSync
    from megatron_rl.weight_sync.parity import WeightSyncError, check_parity, right_padded_rows, rollout_train_gap

    parallel = ParallelConfig(tensor=tp, pipeline=pp)
    init_parallel(parallel, seed=2)
    model = model_config(arch).model_copy(update={"kernels": "reference"})
    actor = MegatronRole.build("actor", model, parallel, hf_path=hf_dir)
    engine = EmbeddedEngine(model, seed=7) if dist.get_rank() == 0 else None  # random weights until synced
    sync = InProcessWeightSync(engine, bucket_bytes=64 << 10)

    def engine_vs_actor():
        box = [None]
        if engine is not None:
            box[0] = engine.generate(PROMPTS, SamplingParams(temperature=1.0, max_new_tokens=6), n=2).samples
        dist.broadcast_object_list(box, src=0)
        samples = box[0]
        scored = actor.score({"input_ids": right_padded_rows(samples)}, micro_batch_size=2)["logprobs"]
        return rollout_train_gap(samples, scored)["rollout_train_logprob_gap_max"], [s.weight_version for s in samples]

    before, _ = engine_vs_actor()
    try:
        check_parity(actor, engine, PROMPTS)
        refused = False
    except WeightSyncError as exc:
        refused = "did not receive the trained weights" in str(exc)
    stats = sync.sync(actor, version=5)
    after, versions = engine_vs_actor()
    check_parity(actor, engine, PROMPTS, tol=1e-4)  # passes on every rank now
    return before, after, versions, stats, refused


@pytest.mark.parametrize("arch,tp,pp,world", [("qwen2", 2, 1, 2), ("qwen2", 2, 2, 4), ("llama", 1, 2, 2)],
                         ids=["qwen2-tp2", "qwen2-tp2pp2", "llama-tied-pp2"])
def test_engine_logprobs_equal_actor_after_sync(tmp_path, arch, tp, pp, world):
    hf = make_hf_model(arch, seed=torch.randint(0, 2**31, ()).item())
    hf.save_pretrained(tmp_path / "hf", safe_serialization=True)
    before, after, versions, stats, refused = run_ranks(_sync_worker, world, str(tmp_path / "hf"), arch, tp, pp)[0]
    assert before > 0.1 and refused  # a randomly initialised engine disagrees, and check_parity says so
    assert after < 1e-4, after
    assert versions == [5] * 4
    n_tensors = len(hf.state_dict()) - (1 if hf.config.tie_word_embeddings else 0)
    assert stats["tensors"] == n_tensors
