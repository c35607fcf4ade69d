"""Rank 0's rollout phase: the dynamic-sampling filter decides on the scores the update trains on.

The engine and the reward runner here are scripted test doubles of the two interfaces (fixed
responses, fixed rewards), so the filter's decision is the only thing under test."""
from megatron_rl.config.schema import AlgorithmConfig
from megatron_rl.data.prompts import PromptItem
from megatron_rl.rewards.base import RewardResult
from megatron_rl.rollout.types import RolloutBatch, Sample, SamplingParams
from megatron_rl.trainer.rollout_phase import collect_rollouts

# per prompt id: the response lengths of its 2 samples; every response gets reward 1.0
LENGTHS = {0: [2, 6], 1: [2, 2]}


class ScriptedEngine:
    def generate(self, prompts, params, n=1):
        return RolloutBatch([Sample(prompt_ids=p, response_ids=[7] * LENGTHS[p[0]][k], logprobs=[-1.0] * LENGTHS[p[0]][k],
                                    finish_reason="stop", prompt_index=i)
                             for i, p in enumerate(prompts) for k in range(n)])


class AllCorrect:
    def score(self, inputs):
        return RewardResult(scores=[1.0] * len(inputs), failed=[False] * len(inputs), errors=[None] * len(inputs),
                            source_scores={}, metrics={})


class Tokenizer:
    def decode(self, ids, skip_special_tokens=True):
        return "x" * len(ids)


def test_dynamic_sampling_keeps_groups_that_only_the_overlong_shaping_tells_apart():
    """Both groups have equal raw rewards. Overlong shaping (budget 6, buffer 3) gives the 6-token
    response of prompt 0 a penalty of -1, so its group has non-zero advantages and is kept; prompt 1's
    group stays uninformative and only fills the batch. Filtering on the raw rewards dropped both."""
    algo = AlgorithmConfig(dynamic_sampling={"enabled": True, "max_rounds": 1},
                           overlong={"enabled": True, "buffer_len": 3, "penalty": 1.0})
    items = [PromptItem(index=i, prompt_ids=[i], prompt_text=str(i), answer=None) for i in (0, 1)]
    drawn = iter([items, items])  # the second round draws the same two prompts again
    result = collect_rollouts(ScriptedEngine(), lambda k: next(drawn)[:k], SamplingParams(max_new_tokens=6), 2,
                              num_prompts=2, runner=AllCorrect(), tokenizer=Tokenizer(), algo=algo)
    # round 1 keeps prompt 0, round 2 keeps prompt 0 again: a full batch of informative groups
    assert result.metrics["rollout/uninformative_filled"] == 0.0
    assert [s.prompt_ids[0] for s in result.samples] == [0, 0, 0, 0]
    assert result.scores == [1.0, 0.0, 1.0, 0.0]  # shaped: the 6-token responses lose 1
    assert result.rewards == [1.0] * 4
