"""`megatron-rl train` end to end on 2 CPU ranks for the algorithm presets: Megatron actor (and
reference, critic), the embedded engine, the math reward, weight sync every step, checkpoints."""
import math

import pytest

from pathlib import Path

from trainer_runs import explain, metrics, run_train, write_config

DENSE_REWARD = (f"reward:\n  sources:\n    - {{type: python, path: "
                f"'{Path(__file__).with_name('trainer_reward_fns.py')}:count_sevens'}}\n")

# all-or-nothing: an untrained model never earns it, so every DAPO group is uninformative
EXACT_REWARD = "reward:\n  sources:\n    - {type: python, path: 'megatron_rl.data.synthetic:reward_exact_match'}\n"


def _finite(rows, *keys):
    for r in rows:
        for k in keys:
            assert k in r and r[k] is not None and math.isfinite(r[k]), (k, r.get(k), r["step"])


def test_grpo_first_update_is_on_policy(tmp_path):
    """One mini-batch per step: at step 1 the ratio is exactly 1, nothing is clipped, the actor equals
    the reference (KL 0), and the engine's sampling logprobs equal Megatron's scoring after the sync."""
    cfg = write_config(tmp_path, "grpo", extra_yaml=DENSE_REWARD)
    result = run_train(cfg, "trainer.total_steps=2", "algorithm.mini_batch_prompts=4")
    assert result.returncode == 0, explain(result)
    rows = metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2]
    _finite(rows, "actor/loss", "actor/grad_norm", "reward/mean", "actor/entropy", "actor/kl")
    first = rows[0]
    assert abs(first["actor/ratio_mean"] - 1) < 1e-6 and first["actor/clip_frac"] == 0
    assert abs(first["actor/kl"]) < 1e-7
    assert first["rollout/rollout_train_logprob_gap_max"] < 1e-4  # fp32 engine vs fp32 Megatron, TP=2
    assert rows[1]["actor/kl"] > 0  # the actor moved away from the reference
    assert rows[1]["policy_version"] == 2
    assert (tmp_path / "checkpoints" / "step_00000002" / "complete.json").is_file()
    assert "train done: step=2" in result.stdout


@pytest.mark.parametrize("preset,overrides", [
    ("ppo", ["parallel.tensor=1", "parallel.pipeline=2"]),  # critic, GAE, KL in the reward; pipeline parallel
    # the filter decides on the shaped scores: without a penalty every group of an untrained model
    # ties at 0 (the overlong shaping's part is tests/unit/trainer/test_rollout_phase.py)
    ("dapo", ["algorithm.overlong.buffer_len=2", "algorithm.overlong.penalty=0", "algorithm.dynamic_sampling.max_rounds=1"]),
    ("gspo", []),
    ("drgrpo", []), ("rloo", []), ("reinforce_pp", []), ("reinforce_pp_baseline", []),
    ("cispo", []), ("sapo", []), ("gmpo", []), ("dppo", []), ("icepop", []),
], ids=["ppo-critic-pp2", "dapo", "gspo", "drgrpo", "rloo", "reinforce_pp", "reinforce_pp_baseline",
        "cispo", "sapo", "gmpo", "dppo", "icepop"])
def test_preset_trains(tmp_path, preset, overrides):
    cfg = write_config(tmp_path, preset, extra_yaml=EXACT_REWARD if preset == "dapo" else DENSE_REWARD)
    result = run_train(cfg, "trainer.total_steps=2", *overrides)
    assert result.returncode == 0, explain(result)
    rows = metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2]
    _finite(rows, "actor/loss", "actor/grad_norm", "reward/mean", "score/mean", "actor/entropy")
    if preset == "ppo":
        _finite(rows, "critic/loss", "critic/vf_clipfrac", "actor/reward_kl")
        assert all(r["critic/loss"] > 0 for r in rows)  # returns follow the dense reward
        assert rows[1]["actor/reward_kl"] != 0
    if preset == "dapo":
        # an untrained model scores 0 everywhere: no group is informative, so the extra round is
        # drawn and the batch is topped up with uninformative groups
        assert all(r["rollout/prompts_drawn"] == 8 and r["rollout/uninformative_filled"] == 4 for r in rows)
        assert all(r["score/mean"] == 0 for r in rows)
    if preset == "gspo":
        assert "actor/kl" not in rows[0]  # no reference model
    if preset in ("cispo", "sapo", "gmpo", "dppo"):
        _finite(rows, "actor/pg_clipfrac", "actor/ratio_mean", "actor/ratio_max")
    if preset == "icepop":
        _finite(rows, "mismatch/mismatch_masked_frac")
        assert all(r["mismatch/mismatch_masked_frac"] == 0 for r in rows)  # fp32 engine = trainer: inside the band


def test_grpo_learns_a_dense_reward(tmp_path):
    """The whole loop moves the policy the right way: rewarded for each '7' it writes, an untrained
    model writes clearly more of them within 20 steps (measured: ~0.1 -> ~0.6 sevens per answer)."""
    cfg = write_config(tmp_path, "grpo", extra_yaml=DENSE_REWARD)
    result = run_train(cfg, "trainer.total_steps=20", "algorithm.prompts_per_step=8", "algorithm.mini_batch_prompts=8",
                       "rollout.sampling.max_new_tokens=6", "actor.optim.lr=1e-3")
    assert result.returncode == 0, explain(result)
    rewards = [r["reward/mean"] for r in metrics(tmp_path)]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > first + 0.2, (first, last, rewards)


def test_process_supervision_trains_on_per_step_rewards(tmp_path):
    """grpo_process end to end: responses cut at '3', a per-step python source rewarding the 7s of each
    step, the process advantages (each token credited with the normalised rewards of the steps ending
    at or after it). The policy writes more 7s within 20 steps, as with the outcome reward."""
    fns = Path(__file__).with_name("trainer_reward_fns.py")
    extra = ("reward:\n  sources:\n"
             f"    - {{type: python, path: '{fns}:sevens_per_step', per_step: true}}\n"
             "algorithm:\n  advantage: grpo_process\n  process: {step_separator: '3'}\n")
    cfg = write_config(tmp_path, "grpo", extra_yaml=extra)
    result = run_train(cfg, "trainer.total_steps=20", "algorithm.prompts_per_step=8", "algorithm.mini_batch_prompts=8",
                       "rollout.sampling.max_new_tokens=6", "actor.optim.lr=1e-3", "trainer.eval_every=20")
    assert result.returncode == 0, explain(result)
    rows = metrics(tmp_path)
    _finite(rows, "actor/loss", "actor/grad_norm", "rollout/steps_per_response", "actor/advantage_abs_max")
    _finite(metrics(tmp_path, kind="eval"), "eval/reward_mean")  # evaluation scores per step too
    assert any(r["rollout/steps_per_response"] > 1 for r in rows)  # some responses hold several steps
    rewards = [r["reward/mean"] for r in rows]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > first + 0.1, (first, last, rewards)
