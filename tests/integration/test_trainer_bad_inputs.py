"""A user's mistakes end in one clear line (exit 2) or are absorbed and counted; none loses data."""
import json

from trainer_runs import explain, metrics, run_train, write_config

from pathlib import Path

REWARD_FNS = Path(__file__).with_name("trainer_reward_fns.py")


def _error_line(result):
    lines = [l for l in result.stderr.splitlines() if l.startswith("error: ")]
    assert result.returncode == 2 and len(lines) == 1, explain(result)
    return lines[0]


def test_missing_dataset_field(tmp_path):
    cfg = write_config(tmp_path)
    bad = tmp_path / "data" / "broken.jsonl"
    bad.write_text(json.dumps({"prompt": "1+1=", "answer": "2"}) + "\n" + json.dumps({"question": "2+2="}) + "\n")
    line = _error_line(run_train(cfg, f"data.train_path={bad}", "trainer.total_steps=1"))
    assert "broken.jsonl" in line and "line 2" in line and "prompt" in line


def test_broken_yaml(tmp_path):
    cfg = write_config(tmp_path, extra_yaml="algorithm: {clip_low: [\n")
    line = _error_line(run_train(cfg))
    assert "run.yaml" in line


def test_unreachable_rollout_server(tmp_path):
    cfg = write_config(tmp_path)
    result = run_train(cfg, "rollout.engine=sglang", "rollout.sglang.urls=[http://127.0.0.1:9]",
                       "rollout.sglang.health_timeout_s=2", "trainer.total_steps=1", timeout=120)
    assert result.returncode != 0
    assert "127.0.0.1:9" in result.stderr, explain(result)


def test_reward_function_that_raises_is_counted_not_fatal(tmp_path):
    cfg = write_config(tmp_path, extra_yaml=(
        "reward:\n  sources:\n    - {type: math}\n"
        f"    - {{type: python, path: '{REWARD_FNS}:raise_value_error'}}\n"))
    result = run_train(cfg, "trainer.total_steps=1")
    assert result.returncode == 0, explain(result)
    row = metrics(tmp_path)[0]
    assert row["reward/python_failed"] == 16 and row["reward/failed"] == 16  # 4 prompts x 4 samples


def test_nonfinite_loss_skips_the_update_and_keeps_the_checkpoint(tmp_path):
    # a reward scale that overflows fp32 makes every advantage NaN
    cfg = write_config(tmp_path, extra_yaml=(
        "reward:\n  sources:\n"
        f"    - {{type: python, path: '{REWARD_FNS}:always_one', weight: 1.0e+39}}\n"))
    result = run_train(cfg, "trainer.total_steps=2", "checkpoint.save_every=1")
    assert result.returncode == 0, explain(result)
    rows = metrics(tmp_path)
    assert all(r["actor/nonfinite_loss"] == 2 and r["actor/update_skipped"] == 2 for r in rows)
    assert "non-finite loss" in result.stdout
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").glob("step_*"))
