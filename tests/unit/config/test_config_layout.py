"""Rank layout in Megatron's default order tp-cp-dp-pp, checked against hand-worked lists."""
import pytest

from megatron_rl.config import ConfigError, RankLayout, layout_summary, load_config

from megatron_rl.config import CONFIGS_DIR

CONFIGS = CONFIGS_DIR


def test_world8_tp2_pp2():
    lay = RankLayout(8, tp=2, pp=2)
    assert lay.dp == 2
    assert lay.groups("tp") == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert lay.groups("pp") == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert lay.groups("dp") == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert lay.group_of("pp", 0) == [0, 4]
    assert lay.group_of("dp", 0) == [0, 2]
    assert lay.group_of("dp", 5) == [5, 7]
    assert lay.coords(6) == {"tp": 0, "cp": 0, "dp": 1, "pp": 1}


def test_world16_tp2_cp2_pp2():
    lay = RankLayout(16, tp=2, pp=2, cp=2)
    assert lay.dp == 2
    assert lay.group_of("tp", 0) == [0, 1]
    assert lay.group_of("cp", 0) == [0, 2]
    assert lay.group_of("dp", 0) == [0, 4]
    assert lay.group_of("pp", 0) == [0, 8]
    assert lay.rank(tp=1, cp=1, dp=1, pp=1) == 15


@pytest.mark.parametrize("world, tp, pp, cp", [(8, 2, 2, 1), (16, 2, 2, 2), (12, 3, 1, 2), (6, 1, 3, 1), (1, 1, 1, 1)])
def test_groups_partition_the_world(world, tp, pp, cp):
    lay = RankLayout(world, tp=tp, pp=pp, cp=cp)
    for dim in ("tp", "cp", "dp", "pp"):
        groups = lay.groups(dim)
        assert sorted(r for g in groups for r in g) == list(range(world))
        assert all(len(g) == lay.sizes()[dim] for g in groups)
    for r in range(world):
        assert lay.rank(**lay.coords(r)) == r


def test_indivisible_layout():
    with pytest.raises(ConfigError):
        RankLayout(6, tp=4)


def test_layout_summary(write_yaml):
    path = write_yaml("r.yaml", "include: [models/qwen2.5-7b.yaml, algorithms/grpo.yaml]\n"
                                "cluster: {nnodes: 1, gpus_per_node: 8}\n"
                                "parallel: {tensor: 2, pipeline: 2, virtual_pipeline: 7}\n"
                                "algorithm: {prompts_per_step: 32, mini_batch_prompts: 8}\n"
                                "actor: {micro_batch_size: 4}\n")
    text = layout_summary(load_config(path))
    assert "world size 8 = TP 2 x CP 1 x PP 2 x DP 2" in text
    assert "TP [0, 1]" in text and "PP [0, 4]" in text and "DP [0, 2]" in text
    assert "layers per pipeline stage: 14 x 2 stages (7 virtual chunks of 2)" in text
    assert "32 prompts x 8 samples = 256 sequences" in text
    assert "mini-batches per step: 4 of 8 prompts = 64 sequences (32 per DP rank)" in text
    assert "micro-batches per mini-batch per DP rank: 8 of 4 sequences" in text


def test_layout_summary_demo():
    text = layout_summary(load_config(CONFIGS / "demo.yaml"))
    assert "DP 1" in text and "TP [0, 1]" in text
