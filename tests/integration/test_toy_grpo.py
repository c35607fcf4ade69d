"""The README's main job: the toy GRPO run learns, every critic-free preset runs, the CLI works."""
import json
import math
import subprocess
import sys

import pytest

from megatron_rl import toy_grpo
from megatron_rl.config import CONFIGS_DIR, ConfigError, load_config

TOY = CONFIGS_DIR / "toy_grpo.yaml"


def test_toy_grpo_learns(tmp_path):
    cfg = load_config(TOY, ["trainer.total_steps=120"])
    history = toy_grpo.run(cfg, tmp_path, lr=1e-3, show_progress=False)
    start = sum(h["reward_mean"] for h in history[:10]) / 10
    end = sum(h["reward_mean"] for h in history[-10:]) / 10
    assert start < 0.35, start  # a random policy gets ~1 of 3 answer tokens only by luck
    assert end > start + 0.3, (start, end)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 120 and json.loads(lines[-1])["step"] == 119
    assert (tmp_path / "config.yaml").exists()


@pytest.mark.parametrize("preset", ["grpo", "drgrpo", "rloo", "dapo", "gspo", "reinforce_pp", "reinforce_pp_baseline"])
def test_each_critic_free_preset_runs(tmp_path, preset):
    (tmp_path / "run.yaml").write_text(
        f"include: [{TOY}, algorithms/{preset}.yaml]\n"
        "algorithm: {overlong: {enabled: false}}\n"  # the toy's 3-token answers leave no overlong zone
        "rollout: {sampling: {max_new_tokens: 3}}\n")
    cfg = load_config(tmp_path / "run.yaml", ["trainer.total_steps=3"])
    history = toy_grpo.run(cfg, tmp_path / "out", show_progress=False)
    for key in ("reward_mean", "kl", "entropy", "grad_norm"):
        assert all(math.isfinite(h[key]) for h in history), key


def test_ppo_preset_is_refused_with_one_line(tmp_path):
    (tmp_path / "run.yaml").write_text(f"include: [{TOY}, algorithms/ppo.yaml]\n")
    with pytest.raises(ConfigError, match="no critic"):
        toy_grpo.run(load_config(tmp_path / "run.yaml"), tmp_path, show_progress=False)


def test_demo_command(tmp_path):
    out = subprocess.run([sys.executable, "-m", "megatron_rl", "demo", "--steps", "4", "--output-dir", str(tmp_path),
                          "algorithm.loss_agg=token-mean"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "reward:" in out.stdout and "->" in out.stdout
    assert (tmp_path / "reward_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "loss_agg: token-mean" in (tmp_path / "config.yaml").read_text()
