"""configs/cluster/: every preset validates at its world size and `plan` says it fits; together they
cover 1, 2 and 4 nodes of 8 GPUs, Qwen2.5-7B and -32B, PPO and GRPO, colocated and disaggregated."""
import re

import pytest

from megatron_rl.cli import main
from megatron_rl.config import CONFIGS_DIR, load_config
from megatron_rl.config.plan import plan, refusal

PRESETS = sorted((CONFIGS_DIR / "cluster").glob("*.yaml"))
NAME = re.compile(r"^qwen2\.5-(7b|32b)-(grpo|ppo)-(colocated|disaggregated)-([124])x8$")


def test_there_are_presets():
    assert 6 <= len(PRESETS) <= 10


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_preset_validates_and_fits(path, capsys):
    cfg = load_config(path)
    world = cfg.cluster.world_size
    assert main(["validate", str(path), "--world-size", str(world)]) == 0
    capsys.readouterr()
    result = plan(cfg)
    assert refusal(cfg, result) is None, refusal(cfg, result)
    assert result.busiest.peak.total <= 80 * (1 << 30) and cfg.cluster.gpu_memory_gb == 80
    assert main(["plan", str(path)]) == 0
    assert capsys.readouterr().out.rstrip().endswith("fits")


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_preset_is_what_its_name_says(path):
    """The name is model-algorithm-placement-<nodes>x8; the file says the same, and explains itself."""
    match = NAME.match(path.stem)
    assert match, f"{path.name}: name it qwen2.5-<7b|32b>-<grpo|ppo>-<colocated|disaggregated>-<n>x8.yaml"
    size, algo, placement, nodes = match.groups()
    text = path.read_text()
    assert text.startswith("# ") and len([ln for ln in text.splitlines() if ln.startswith("#")]) >= 3
    cfg = load_config(path)
    assert cfg.model.hidden_size == {"7b": 3584, "32b": 5120}[size]
    assert cfg.algorithm.advantage == {"grpo": "grpo", "ppo": "gae"}[algo]
    assert cfg.critic.enabled == (algo == "ppo")
    assert cfg.rollout.engine == "sglang" and cfg.rollout.placement == placement
    # the hardware: the trainer's GPUs plus, disaggregated, the servers' own GPUs
    gpus = cfg.cluster.world_size
    if placement == "disaggregated":
        gpus += len(cfg.rollout.sglang.urls or range(cfg.rollout.sglang.num_servers)) * cfg.rollout.sglang.tp_size
    assert gpus == int(nodes) * 8


def test_presets_cover_every_axis():
    axes = [NAME.match(p.stem).groups() for p in PRESETS]
    for i, values in enumerate([{"7b", "32b"}, {"grpo", "ppo"}, {"colocated", "disaggregated"}, {"1", "2", "4"}]):
        assert {a[i] for a in axes} == values
