"""Reward models end to end on 2 CPU ranks (tensor parallel 2): `megatron-rl rm` learns held-out
preferences on the demo's addition task and exports a checkpoint transformers scores identically;
an RL run scores with it beside a rule-based source and retrains it (rm.iterative).

A reward worker of the RL run imports this file for `digit_count`: the test helpers are imported
inside the tests, so the module itself imports nothing beyond the standard library and pytest.
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# configs/rm_demo.yaml as it is (60 steps of 64 pairs; held-out accuracy after 60 steps, run.seed 1-4:
# 0.75, 0.77, 0.815, 0.765, eval loss 0.35-0.50 from ln 2 = 0.693 at the start), evaluated at the end only
RM_SHORT = ["rm.eval_every=null", "logging.plot=false"]


def digit_count(response):
    """The RL test's rule-based reward: an untrained policy's samples differ in it, so groups give pairs."""
    return float(sum(c.isdigit() for c in response))


def _run(*args, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "megatron_rl.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture(scope="module")
def trained_rm(tmp_path_factory):
    from trainer_runs import explain

    from megatron_rl.trainer.reward_model import make_arithmetic_preferences

    root = tmp_path_factory.mktemp("rm")
    make_arithmetic_preferences(str(root / "data"))
    result = _run("rm", str(CONFIGS / "rm_demo.yaml"), f"run.output_dir={root}", *RM_SHORT)
    assert result.returncode == 0, explain(result)
    return root


def test_rm_learns_held_out_preferences(trained_rm):
    from trainer_runs import metrics

    out = trained_rm / "rm"
    train, evals = metrics(out), metrics(out, kind="eval")
    assert [r["step"] for r in train] == list(range(1, 61))
    assert all(math.isfinite(r["rm/loss"]) and 0 <= r["rm/accuracy"] <= 1 for r in train)
    assert [r["step"] for r in evals] == [0, 60]
    start, end = evals
    assert abs(start["eval/loss"] - math.log(2)) < 1e-6  # the score head starts at zero: every pair ties
    assert end["eval/accuracy"] >= 0.65, end  # chance is 0.5 (200 held-out pairs)
    assert end["eval/loss"] < 0.6, end
    assert abs(end["eval/margin"] - (end["eval/chosen_mean"] - end["eval/rejected_mean"])) < 1e-5


def test_rm_export_scores_like_transformers(trained_rm):
    """The HF export, scored by transformers from the text (its own tokenizer and chat template),
    gives the trained Megatron model's held-out scores (eval_scores.jsonl)."""
    import torch
    import transformers

    hf_dir = trained_rm / "rm" / "hf"
    config = json.loads((hf_dir / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForSequenceClassification"] and config["num_labels"] == 1
    model = transformers.AutoModelForSequenceClassification.from_pretrained(hf_dir).float().eval()
    # the demo's character tokenizer is a generic fast tokenizer; transformers 5's AutoTokenizer would
    # pick Qwen2Tokenizer from config.json's model_type for it (which drops the spaces)
    tok = transformers.PreTrainedTokenizerFast.from_pretrained(hf_dir)
    pairs = [json.loads(line) for line in (trained_rm / "data" / "pairs_eval.jsonl").read_text().splitlines()]
    megatron = [json.loads(line) for line in (trained_rm / "rm" / "eval_scores.jsonl").read_text().splitlines()]
    assert len(pairs) == len(megatron) == 200

    def texts(side):
        return [tok.apply_chat_template([{"role": "user", "content": p["prompt"]}], add_generation_prompt=True,
                                        tokenize=False) + p[side] + tok.eos_token for p in pairs]

    for side in ("chosen", "rejected"):
        enc = tok(texts(side), add_special_tokens=False, padding=True, return_tensors="pt")
        with torch.no_grad():
            hf = model(**enc).logits[:, 0]
        ours = torch.tensor([m[side] for m in megatron])
        assert (hf - ours).abs().max().item() < 1e-5, (hf - ours).abs().max()


def test_rl_scores_with_the_reward_model_and_retrains_it(trained_rm, tmp_path):
    """GRPO, 2 steps: reward = digit_count + 0.5 * reward model; rm.iterative retrains the reward
    model after each step on pairs from the samples (replay share 0.5) and resets the reference."""
    from trainer_runs import explain, metrics, run_train, write_config

    extra = (f"reward:\n  sources:\n    - {{type: python, path: '{Path(__file__).resolve()}:digit_count'}}\n"
             f"    - {{type: reward_model, path: {trained_rm / 'rm' / 'hf'}, weight: 0.5}}\n"
             "rm:\n  batch_size: 8\n  micro_batch_size: 4\n  optim: {lr: 1.0e-3}\n"
             "  iterative: {enabled: true, every: 1, steps: 2, replay_fraction: 0.5}\n")
    cfg = write_config(tmp_path, "grpo", extra_yaml=extra)
    result = run_train(cfg, "trainer.total_steps=2", "algorithm.mini_batch_prompts=4")  # one update per step
    assert result.returncode == 0, explain(result)
    rows = metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert math.isfinite(r["reward/reward_model_mean"]) and r["reward/reward_model_mean"] != 0
        assert r["reward/reward_model_mean"] == pytest.approx(r["reward/reward_model_raw_mean"], abs=1e-6)
        # the weighted sum of both sources (no overlong shaping in grpo: the score is the reward)
        combined = r["reward/python_mean"] + 0.5 * r["reward/reward_model_mean"]
        assert r["reward/mean"] == pytest.approx(combined, abs=1e-5)
        assert r["score/mean"] == pytest.approx(combined, abs=1e-5)
        assert r["rm/pairs_fresh"] > 0 and math.isfinite(r["rm/loss"]) and math.isfinite(r["rm/grad_norm"])
    first, second = rows
    # replay share 0.5: as many older pairs as fresh ones, while the buffer (step 1's pairs) lasts
    assert first["rm/pairs_replay"] == 0
    assert second["rm/pairs_replay"] == min(first["rm/pairs_fresh"], second["rm/pairs_fresh"])
    assert second["rm/buffer_pairs"] == first["rm/pairs_fresh"] + second["rm/pairs_fresh"]
    # the reference was reset to the policy after step 1's retrain: step 2's only update starts at KL 0
    assert abs(second["actor/kl"]) < 1e-7
    marker = json.loads((tmp_path / "checkpoints" / "step_00000002" / "complete.json").read_text())
    assert "reward" in marker["roles"]  # retrained in place: checkpointed with the run


def test_rm_starts_from_a_causal_lm(tmp_path):
    """model.hf_path = a causal LM: the trunk is loaded, the score head is new (zero). With a
    vanishing learning rate the export's trunk is the LM's, tensor for tensor (one rank, in process)."""
    import torch
    import transformers
    from safetensors.torch import load_file
    from trainer_runs import explain

    from megatron_rl.config import load_config
    from megatron_rl.models.hf_mapping import hf_config_dict
    from megatron_rl.trainer.reward_model import make_arithmetic_preferences

    make_arithmetic_preferences(str(tmp_path / "data"))
    model_cfg = load_config(CONFIGS / "rm_demo.yaml", [f"run.output_dir={tmp_path}"]).model
    hf_cfg = {k: v for k, v in hf_config_dict(model_cfg).items() if k != "torch_dtype"}
    torch.manual_seed(0)
    lm = transformers.Qwen2ForCausalLM(transformers.AutoConfig.for_model(**hf_cfg)).float()
    lm.save_pretrained(tmp_path / "lm", safe_serialization=True)
    result = _run("rm", str(CONFIGS / "rm_demo.yaml"), f"run.output_dir={tmp_path}", f"model.hf_path={tmp_path / 'lm'}",
                  "cluster.gpus_per_node=1", "parallel.tensor=1", "rm.steps=1", "rm.optim.lr=1e-12",
                  "rm.eval_path=null", "rm.batch_size=4", "rm.micro_batch_size=2", "logging.plot=false")
    assert result.returncode == 0, explain(result)
    exported = load_file(tmp_path / "rm" / "hf" / "model-00001-of-00001.safetensors")
    trunk = lm.model.state_dict()
    assert set(exported) == {f"model.{k}" for k in trunk} | {"score.weight"}
    for name, tensor in trunk.items():
        assert torch.allclose(exported[f"model.{name}"], tensor, atol=1e-9, rtol=0), name
    assert exported["score.weight"].shape == (1, model_cfg.hidden_size)
    assert exported["score.weight"].abs().max() < 1e-9  # started at zero, moved by one step of lr 1e-12


def test_bad_reward_model_inputs_end_in_one_line(tmp_path):
    from megatron_rl.config import ConfigError
    from megatron_rl.config.schema import ModelConfig, ParallelConfig
    from megatron_rl.trainer.reward_model import reward_model_config

    policy = ModelConfig(num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4, vocab_size=64)
    with pytest.raises(ConfigError, match=r"^reward.sources\[1\].path: no config.json in .*megatron-rl rm"):
        reward_model_config(str(tmp_path / "nowhere"), policy, ParallelConfig(), "reward.sources[1].path")
    lm = tmp_path / "lm"
    lm.mkdir()
    (lm / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
                                                "num_hidden_layers": 2, "hidden_size": 64, "vocab_size": 64}))
    with pytest.raises(ConfigError, match=r"holds a Qwen2ForCausalLM .* not a reward model"):
        reward_model_config(str(lm), policy, ParallelConfig(), "reward.sources[1].path")

    from megatron_rl.config.schema import DataConfig, RMConfig
    from megatron_rl.data import DataError
    from megatron_rl.data.synthetic import build_char_tokenizer
    from megatron_rl.trainer.reward_model import load_pairs

    bad = tmp_path / "pairs.jsonl"
    bad.write_text('{"prompt": "1+1=", "chosen": "2", "rejected": "3"}\n{"prompt": "2+2=", "chosen": "4"}\n')
    with pytest.raises(DataError, match=r"pairs.jsonl: line 2: no 'rejected' key .*: set rm.rejected_key to the field"):
        load_pairs(str(bad), build_char_tokenizer(), DataConfig(), RMConfig(), "rm.train_path")

    result = _run("rm", str(CONFIGS / "rm_demo.yaml"), f"run.output_dir={tmp_path}", "rm.train_path=null",
                  "cluster.gpus_per_node=1", "parallel.tensor=1")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: rm.train_path is not set")
    result = _run("validate", str(CONFIGS / "rm_demo.yaml"), "rm.iterative.enabled=true")
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: rm.iterative.enabled retrains a reward model: add a reward.sources entry "
                                     "of type reward_model or set rm.iterative.enabled=false")
