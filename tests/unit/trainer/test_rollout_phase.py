"""Rank 0's rollout phase: the dynamic-sampling filter decides on the scores the update trains on.

The engine and the reward runner here are scripted test doubles of the two interfaces (fixed
responses, fixed rewards), so the filter's decision is the only thing under test."""
import pytest

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


# --- process supervision: steps, per-step rewards, the batch ------------------------------------------

def test_split_steps_ends_each_step_on_the_token_that_completes_the_separator():
    from megatron_rl.data.synthetic import build_char_tokenizer
    from megatron_rl.trainer.rollout_phase import split_steps

    tok = build_char_tokenizer()
    ids = tok.encode("12+34+5", add_special_tokens=False)
    assert split_steps(ids, tok, "+") == (["12+", "34+", "5"], [2, 5, 6])
    assert split_steps(ids[:6], tok, "+") == (["12+", "34+"], [2, 5])  # ends on a separator: no empty step
    assert split_steps(ids[:2], tok, "+") == (["12"], [1])  # no separator: one step
    assert split_steps([], tok, "+") == ([], [])
    with_eos = ids + [tok.eos_token_id]  # a special token adds no text; the last step ends on it
    assert split_steps(with_eos, tok, "+") == (["12+", "34+", "5"], [2, 5, 7])


def test_build_batch_puts_each_step_reward_on_its_last_token():
    from megatron_rl.trainer.batch import build_batch

    s = Sample(prompt_ids=[1, 2], response_ids=[5, 6, 7, 8], logprobs=[-1.0] * 4, finish_reason="stop")
    batch = build_batch([s], [9.0], step_ends=[[1, 3]], step_scores=[[0.5, 2.0]])
    assert batch["step_end_mask"].tolist() == [[0, 0, 0, 1, 0, 1]]
    assert batch["token_rewards"].tolist() == [[0, 0, 0, 0.5, 0, 2.0]]
    assert "step_end_mask" not in build_batch([s], [9.0])


def test_per_step_sources_score_each_step_and_outcome_sources_join_the_last(tmp_path):
    """A per-step python source (weight 2) beside an outcome source (weight 1) in the real runner:
    step rewards 2 * (7s in the step), plus the outcome on the last step; the scalar score uses the
    per-step source's mean. A wrong number of step scores fails the sample, not the batch."""
    from megatron_rl.rewards import RewardInput, RewardRunner
    from megatron_rl.rewards.python_fn import PythonFunctionReward

    fns = tmp_path / "fns.py"
    fns.write_text("def per_step(steps):\n    return [float(s.count('7')) for s in steps]\n\n"
                   "def outcome(response):\n    return 10.0\n\n"
                   "def too_few(steps):\n    return [1.0]\n")
    sources = [("python", 2.0, PythonFunctionReward(f"{fns}:per_step", per_step=True)),
               ("python_1", 1.0, PythonFunctionReward(f"{fns}:outcome"))]
    inputs = [RewardInput(prompt="p", response="77+7+1", steps=("77+", "7+", "1")),
              RewardInput(prompt="p", response="", steps=())]
    with RewardRunner(sources, workers=1) as runner:
        result = runner.score(inputs)
    assert result.step_scores == [[4.0, 2.0, 0.0 + 10.0], []]
    assert result.scores == [pytest.approx(2.0 * (3 / 3) + 10.0), 10.0]  # the empty response: mean of no steps 0
    with RewardRunner([("python", 1.0, PythonFunctionReward(f"{fns}:too_few", per_step=True))], workers=1) as runner:
        bad = runner.score(inputs[:1])
    assert bad.failed == [True] and "1 step scores for a response of 3 steps" in bad.errors[0]
    assert bad.step_scores == [[0.0, 0.0, 0.0]]
