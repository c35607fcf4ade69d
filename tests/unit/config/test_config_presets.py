"""Every shipped YAML validates; model presets carry the published shapes."""
import typing

import pytest

from megatron_rl.config import GROUP_ESTIMATORS, ConfigError, load_config
from megatron_rl.config.schema import AdvantageEstimator

from megatron_rl.config import CONFIGS_DIR

CONFIGS = CONFIGS_DIR

PARTIAL_DIRS = ("algorithms", "models")
FULL = sorted(p for p in CONFIGS.rglob("*.yaml") if p.relative_to(CONFIGS).parts[0] not in PARTIAL_DIRS)
MODELS = sorted((CONFIGS / "models").glob("*.yaml"))
REAL_MODELS = [p for p in MODELS if not p.name.startswith("tiny")]
ALGORITHMS = sorted((CONFIGS / "algorithms").glob("*.yaml"))


def test_there_are_presets():
    assert {p.stem for p in ALGORITHMS} >= {
        "ppo", "grpo", "dapo", "gspo", "drgrpo", "rloo", "reinforce_pp", "reinforce_pp_baseline"}
    assert {p.stem for p in MODELS} >= {
        "tiny-qwen2", "qwen2.5-0.5b", "qwen2.5-7b", "qwen2.5-32b", "llama3-8b", "qwen3-8b"}
    assert CONFIGS / "demo.yaml" in FULL


@pytest.mark.parametrize("path", FULL, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_full_config_validates(path):
    load_config(path)


@pytest.mark.parametrize("model", MODELS, ids=lambda p: p.stem)
def test_model_preset_validates(model, write_yaml):
    cfg = write_yaml("run.yaml", f"include: [{model}]\ndata: {{max_prompt_len: 64}}\n"
                                 "rollout: {sampling: {max_new_tokens: 64}}\n")
    load_config(cfg)


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=lambda p: p.stem)
@pytest.mark.parametrize("model", REAL_MODELS, ids=lambda p: p.stem)
def test_algorithm_preset_validates_with_model(algorithm, model, write_yaml):
    # opd leaves the teacher checkpoint to the user (test_algorithm_preset_details: it says so)
    teacher = "distill: {teacher_path: /teacher}\n" if algorithm.stem == "opd" else ""
    cfg = write_yaml("run.yaml", f"include: [models/{model.name}, algorithms/{algorithm.name}]\n{teacher}")
    load_config(cfg)


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=lambda p: p.stem)
def test_algorithm_preset_is_partial(algorithm):
    from megatron_rl.config.loader import read_yaml

    assert "model" not in read_yaml(algorithm)


def _preset(model, algorithm, write_yaml):
    return load_config(write_yaml("run.yaml", f"include: [models/{model}.yaml, algorithms/{algorithm}.yaml]\n"))


@pytest.mark.parametrize("name, expect", [
    ("ppo", dict(advantage="gae", critic=True, kl=("reward", "k1"), agg="token-mean")),
    ("grpo", dict(advantage="grpo", critic=False, kl=("loss", "low_var_kl"), agg="seq-mean-token-mean")),
    ("dapo", dict(advantage="grpo", critic=False, kl=("none", None), agg="token-mean")),
    ("gspo", dict(advantage="grpo", critic=False, kl=("none", None), agg="seq-mean-token-mean")),
    ("drgrpo", dict(advantage="grpo", critic=False, kl=("none", None), agg="seq-mean-token-sum-norm")),
    ("rloo", dict(advantage="rloo", critic=False, kl=("reward", "k1"), agg="token-mean")),
    ("reinforce_pp", dict(advantage="reinforce_plus_plus", critic=False, kl=("reward", "k1"), agg="token-mean")),
    ("reinforce_pp_baseline", dict(advantage="reinforce_plus_plus_baseline", critic=False, kl=("loss", "k2"),
                                   agg="token-mean")),
    ("cispo", dict(advantage="grpo", critic=False, kl=("none", None), agg="token-mean")),
    ("sapo", dict(advantage="grpo", critic=False, kl=("none", None), agg="seq-mean-token-mean")),
    ("gmpo", dict(advantage="grpo", critic=False, kl=("none", None), agg="seq-mean-token-mean")),
    ("dppo", dict(advantage="grpo", critic=False, kl=("none", None), agg="token-mean")),
    ("icepop", dict(advantage="grpo", critic=False, kl=("loss", "low_var_kl"), agg="seq-mean-token-mean")),
])
def test_algorithm_preset_says_what_it_is(name, expect, write_yaml):
    a = _preset("qwen2.5-0.5b", name, write_yaml)
    assert a.algorithm.advantage == expect["advantage"]
    assert a.critic.enabled is expect["critic"]
    placement, estimator = expect["kl"]
    assert a.algorithm.kl.placement == placement
    if estimator:
        assert a.algorithm.kl.estimator == estimator
    assert a.reference.enabled is (placement != "none")
    assert a.algorithm.loss_agg == expect["agg"]


def test_algorithm_preset_details(write_yaml):
    dapo = _preset("qwen2.5-7b", "dapo", write_yaml).algorithm
    assert (dapo.policy_loss.clip_low, dapo.policy_loss.clip_high) == (0.2, 0.28)
    assert dapo.dynamic_sampling.enabled and dapo.overlong.enabled
    gspo = _preset("qwen2.5-7b", "gspo", write_yaml).algorithm
    assert gspo.policy_loss.ratio == "sequence"
    assert (gspo.policy_loss.clip_low, gspo.policy_loss.clip_high) == (3e-4, 4e-4)
    assert _preset("qwen2.5-7b", "drgrpo", write_yaml).algorithm.norm_adv_by_std is False
    objectives = {name: _preset("qwen2.5-7b", name, write_yaml).algorithm for name in ("cispo", "sapo", "gmpo", "dppo")}
    assert {name: a.policy_loss.kind for name, a in objectives.items()} == {n: n for n in objectives}
    assert (objectives["cispo"].policy_loss.cispo.is_high, objectives["cispo"].policy_loss.cispo.is_low) == (0.2, None)
    assert (objectives["sapo"].policy_loss.sapo.tau_pos, objectives["sapo"].policy_loss.sapo.tau_neg) == (1.0, 1.05)
    assert (objectives["gmpo"].policy_loss.gmpo.clip_low, objectives["gmpo"].policy_loss.gmpo.clip_high) == (0.4, 0.4)
    assert objectives["dppo"].policy_loss.dppo.divergence == "tv" and objectives["dppo"].policy_loss.dppo.anchor == "rollout"
    with pytest.raises(ConfigError, match="distill.enabled needs distill.teacher_path"):
        _preset("qwen2.5-7b", "opd", write_yaml)  # the preset leaves the teacher to the user
    opd = load_config(write_yaml("opd.yaml", "include: [models/qwen2.5-7b.yaml, algorithms/opd.yaml]\n"
                                             "distill: {teacher_path: /teacher}\n"))
    assert (opd.distill.enabled, opd.distill.mode, opd.distill.coef, opd.algorithm.advantage) == (True, "add", 1.0, "grpo")
    icepop = _preset("qwen2.5-7b", "icepop", write_yaml).algorithm
    assert (icepop.policy_loss.kind, icepop.mismatch.mode, icepop.mismatch.level) == ("ppo", "mask", "token")
    assert (icepop.mismatch.lower, icepop.mismatch.upper) == (0.5, 5.0)
    ppo = _preset("qwen2.5-7b", "ppo", write_yaml)
    assert ppo.algorithm.value.clip == 0.2 and ppo.algorithm.entropy_coef == 0.0
    assert ppo.algorithm.kl.coef == 0.001 and ppo.algorithm.kl.controller == "fixed"


PUBLISHED = {
    # name: layers, hidden, ffn, heads, kv, vocab, rope_theta, tied, qkv_bias, head_dim
    "qwen2.5-0.5b": (24, 896, 4864, 14, 2, 151936, 1e6, True, True, None),
    "qwen2.5-7b": (28, 3584, 18944, 28, 4, 152064, 1e6, False, True, None),
    "qwen2.5-32b": (64, 5120, 27648, 40, 8, 152064, 1e6, False, True, None),
    "llama3-8b": (32, 4096, 14336, 32, 8, 128256, 5e5, False, False, None),
    "qwen3-8b": (36, 4096, 12288, 32, 8, 151936, 1e6, False, False, 128),
    "tiny-qwen2": (2, 64, 128, 4, 2, 64, None, True, True, None),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_model_preset_shapes(name, write_yaml):
    m = load_config(write_yaml("run.yaml", f"include: [models/{name}.yaml]\n"
                                           "data: {max_prompt_len: 64}\nrollout: {sampling: {max_new_tokens: 64}}\n")).model
    layers, hidden, ffn, heads, kv, vocab, theta, tied, bias, head_dim = PUBLISHED[name]
    got = (m.num_layers, m.hidden_size, m.ffn_hidden_size, m.num_attention_heads, m.num_query_groups,
           m.vocab_size, m.tie_word_embeddings, m.qkv_bias, m.head_dim)
    assert got == (layers, hidden, ffn, heads, kv, vocab, tied, bias, head_dim)
    if theta is not None:
        assert m.rope_theta == theta
    assert m.kv_channels == (head_dim or hidden // heads)


def test_tiny_preset_for_demo():
    m = load_config(CONFIGS / "demo.yaml").model
    assert m.max_position_embeddings == 256 and m.architecture == "qwen2"


def test_group_estimators_are_estimators():
    assert set(GROUP_ESTIMATORS) <= set(typing.get_args(AdvantageEstimator))


def test_demo_shape():
    cfg = load_config(CONFIGS / "demo.yaml")
    assert cfg.cluster.world_size == 2 and cfg.parallel.tensor == 2
    assert cfg.rollout.engine == "embedded"
    assert cfg.rollout.weight_sync == "auto" and cfg.model.hf_path is None  # SFT output, set by `demo`
    assert cfg.data.train_path == "outputs/demo/data/train.jsonl" and cfg.sft.train_path == "outputs/demo/data/sft.jsonl"
    assert cfg.data.max_prompt_len + cfg.rollout.sampling.max_new_tokens <= cfg.model.max_position_embeddings
    assert cfg.algorithm.advantage == "grpo" and cfg.algorithm.kl.placement == "loss"
