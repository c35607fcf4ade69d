"""load_config: includes, overrides, interpolation, hf_path, errors, save_resolved."""
import json

import pytest
import yaml

from megatron_rl.config import ConfigError, RunConfig, load_config, save_resolved
from megatron_rl.config.loader import read_yaml

from megatron_rl.config import CONFIGS_DIR

CONFIGS = CONFIGS_DIR

BASE = """\
include: [models/tiny-qwen2.yaml, algorithms/grpo.yaml]
data: {max_prompt_len: 32}
rollout: {sampling: {max_new_tokens: 16}}
algorithm: {prompts_per_step: 8, mini_batch_prompts: 4}
"""


@pytest.fixture
def base(write_yaml):
    return write_yaml("base.yaml", BASE)


# --- overrides --------------------------------------------------------------------------------


def test_overrides_are_yaml_typed(base):
    cfg = load_config(base, [
        "algorithm.policy_loss.dual_clip=3",
        'rollout.sampling.stop=["</answer>", "\\n\\n"]',
        "algorithm.kl.coef=1e-3",
        "rollout.check_parity=true",
        "run.name=exp-1",
        "actor.optim.grad_clip=null",
    ])
    assert cfg.algorithm.policy_loss.dual_clip == 3.0
    assert cfg.rollout.sampling.stop == ["</answer>", "\n\n"]
    assert cfg.algorithm.kl.coef == 1e-3
    assert cfg.rollout.check_parity is True
    assert cfg.run.name == "exp-1"
    assert cfg.actor.optim.grad_clip is None


def test_override_wins_over_file_and_last_override_wins(base):
    cfg = load_config(base, ["algorithm.prompts_per_step=16", "algorithm.prompts_per_step=12"])
    assert cfg.algorithm.prompts_per_step == 12


def test_override_nested_mapping_merges(base):
    cfg = load_config(base, ["algorithm.policy_loss={clip_high: 0.28}"])
    assert cfg.algorithm.policy_loss.clip_high == 0.28
    assert cfg.algorithm.policy_loss.clip_low == 0.2  # untouched sibling


def test_override_list_element(base):
    cfg = load_config(base, ["reward.sources.0.weight=2"])
    assert cfg.reward.sources[0].weight == 2.0 and cfg.reward.sources[0].type == "math"


def test_override_unknown_key_did_you_mean(base):
    with pytest.raises(ConfigError, match=r"unknown key 'algorithm.policy_loss.clip_hihg': did you mean 'clip_high'\?"):
        load_config(base, ["algorithm.policy_loss.clip_hihg=0.3"])
    with pytest.raises(ConfigError, match=r"unknown key 'rolout': did you mean 'rollout'\?"):
        load_config(base, ["rolout.n_samples_per_prompt=4"])


@pytest.mark.parametrize("bad", ["novalue", "=3", "a..b=1", "include=[x.yaml]", "rollout.sampling.stop=[a",
                                 "reward.sources={a: 1}", "reward.sources.5.weight=1"])
def test_malformed_override(base, bad):
    with pytest.raises(ConfigError, match="override"):
        load_config(base, [bad])


def test_override_bad_value_names_key(base):
    with pytest.raises(ConfigError, match=r"^algorithm.advantage: 'rlo' is not one of .*did you mean 'rloo'\?$"):
        load_config(base, ["algorithm.advantage=rlo"])


# --- includes ---------------------------------------------------------------------------------


def test_later_include_wins_and_own_keys_win(write_yaml):
    write_yaml("a.yaml", "algorithm: {entropy_coef: 0.1, epochs: 2}\nrun: {name: from-a}\n")
    write_yaml("b.yaml", "algorithm: {entropy_coef: 0.2}\nrun: {seed: 7}\n")
    main = write_yaml("main.yaml", BASE.replace("algorithms/grpo.yaml]", "algorithms/grpo.yaml, a.yaml, b.yaml]")
                      + "run: {name: mine}\n")
    cfg = load_config(main)
    assert cfg.algorithm.entropy_coef == 0.2  # b after a
    assert cfg.algorithm.epochs == 2  # from a, untouched by b
    assert cfg.run.name == "mine" and cfg.run.seed == 7


def test_nested_includes_resolve_relative_to_their_file(write_yaml):
    write_yaml("presets/inner.yaml", "algorithm: {entropy_coef: 0.05}\n")
    write_yaml("presets/outer.yaml", "include: [inner.yaml]\nalgorithm: {epochs: 3}\n")
    main = write_yaml("main.yaml", BASE.replace("algorithms/grpo.yaml]", "algorithms/grpo.yaml, presets/outer.yaml]"))
    cfg = load_config(main)
    assert cfg.algorithm.entropy_coef == 0.05 and cfg.algorithm.epochs == 3


def test_include_falls_back_to_repo_configs(write_yaml):
    cfg = load_config(write_yaml("x.yaml", "include: [demo.yaml]\ntrainer: {total_steps: 3}\n"))
    assert cfg.run.name == "demo" and cfg.trainer.total_steps == 3


def test_diamond_include_is_not_a_cycle(write_yaml):
    write_yaml("common.yaml", "algorithm: {epochs: 2}\n")
    write_yaml("left.yaml", "include: [common.yaml]\n")
    write_yaml("right.yaml", "include: [common.yaml]\n")
    main = write_yaml("main.yaml", BASE.replace("algorithms/grpo.yaml]", "algorithms/grpo.yaml, left.yaml, right.yaml]"))
    assert load_config(main).algorithm.epochs == 2


def test_self_include_is_a_cycle(write_yaml):
    path = write_yaml("self.yaml", "include: [self.yaml]\n")
    with pytest.raises(ConfigError, match="include cycle self.yaml -> self.yaml"):
        load_config(path)


def test_include_as_single_string(write_yaml):
    path = write_yaml("one.yaml", "include: demo.yaml\n")
    assert load_config(path).run.name == "demo"


# --- interpolation ----------------------------------------------------------------------------


def test_default_output_dir_follows_run_name(base):
    cfg = load_config(base, ["run.name=exp7"])
    assert cfg.run.output_dir == "outputs/exp7"
    assert cfg.checkpoint.dir == "outputs/exp7/checkpoints"


def test_user_interpolation(write_yaml):
    path = write_yaml("i.yaml", BASE + "run: {name: r1, output_dir: '/runs/${run.name}-s${run.seed}'}\n"
                                       "trainer: {total_steps: 10}\n"
                                       "checkpoint: {save_every: '${trainer.total_steps}'}\n")
    cfg = load_config(path)
    assert cfg.run.output_dir == "/runs/r1-s1234"
    assert cfg.checkpoint.dir == "/runs/r1-s1234/checkpoints"
    assert cfg.checkpoint.save_every == 10


# --- hf_path ----------------------------------------------------------------------------------


def _checkpoint(tmp_path, **config):
    path = tmp_path / "ckpt"
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    return path


QWEN2_JSON = dict(model_type="qwen2", num_hidden_layers=2, hidden_size=64, intermediate_size=128,
                  num_attention_heads=4, num_key_value_heads=2, vocab_size=64, rope_theta=10000.0,
                  tie_word_embeddings=True, max_position_embeddings=512, rms_norm_eps=1e-5)


def test_hf_path_fills_model(tmp_path, write_yaml):
    ckpt = _checkpoint(tmp_path, **QWEN2_JSON)
    path = write_yaml("hf.yaml", f"include: [algorithms/grpo.yaml]\nmodel: {{hf_path: {ckpt}}}\n"
                                 "data: {max_prompt_len: 64}\nrollout: {sampling: {max_new_tokens: 64}}\n")
    m = load_config(path).model
    assert (m.architecture, m.num_layers, m.hidden_size, m.ffn_hidden_size) == ("qwen2", 2, 64, 128)
    assert (m.num_attention_heads, m.num_query_groups, m.vocab_size) == (4, 2, 64)
    assert (m.rope_theta, m.tie_word_embeddings, m.max_position_embeddings, m.rms_norm_eps) == (1e4, True, 512, 1e-5)
    assert m.qkv_bias is True and m.head_dim is None


def test_hf_path_explicit_fields_win(tmp_path, write_yaml):
    ckpt = _checkpoint(tmp_path, **QWEN2_JSON)
    path = write_yaml("hf.yaml", f"include: [algorithms/grpo.yaml]\nmodel: {{hf_path: {ckpt}, max_position_embeddings: 128}}\n"
                                 "data: {max_prompt_len: 64}\nrollout: {sampling: {max_new_tokens: 64}}\n")
    cfg = load_config(path, ["model.qkv_bias=false"])
    assert cfg.model.max_position_embeddings == 128 and cfg.model.qkv_bias is False
    assert cfg.model.num_layers == 2


@pytest.mark.parametrize("model_type, extra, bias", [
    ("llama", {}, False), ("llama", {"attention_bias": True}, True), ("qwen3", {"head_dim": 32}, False)])
def test_hf_path_families(tmp_path, write_yaml, model_type, extra, bias):
    ckpt = _checkpoint(tmp_path, **{**QWEN2_JSON, "model_type": model_type, **extra})
    path = write_yaml("hf.yaml", f"include: [algorithms/grpo.yaml]\nmodel: {{hf_path: {ckpt}}}\n"
                                 "data: {max_prompt_len: 64}\nrollout: {sampling: {max_new_tokens: 64}}\n")
    m = load_config(path).model
    assert m.architecture == model_type and m.qkv_bias is bias
    assert m.head_dim == extra.get("head_dim")


@pytest.mark.parametrize("extra, match", [
    ({"model_type": "mistral"}, "model_type 'mistral'"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "rope scaling 'llama3'"),
])
def test_hf_path_unsupported(tmp_path, write_yaml, extra, match):
    ckpt = _checkpoint(tmp_path, **{**QWEN2_JSON, **extra})
    path = write_yaml("hf.yaml", f"include: [algorithms/grpo.yaml]\nmodel: {{hf_path: {ckpt}}}\n")
    with pytest.raises(ConfigError, match=f"^model.hf_path: .*{match}"):
        load_config(path)


def test_hf_path_cross_checks_apply(tmp_path, write_yaml):
    ckpt = _checkpoint(tmp_path, **QWEN2_JSON)
    path = write_yaml("hf.yaml", f"include: [algorithms/grpo.yaml]\nmodel: {{hf_path: {ckpt}}}\n"
                                 "data: {max_prompt_len: 64}\nrollout: {sampling: {max_new_tokens: 64}}\n")
    with pytest.raises(ConfigError, match="model.num_query_groups 2 .* parallel.tensor 4"):
        load_config(path, ["parallel.tensor=4"], world_size=4)


# --- errors -----------------------------------------------------------------------------------


def test_missing_file():
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config("/nonexistent/nope.yaml")


def test_several_errors_are_counted(base):
    with pytest.raises(ConfigError, match=r"\(and 2 more errors\)$") as info:
        load_config(base, ["algorithm.epochs=0", "algorithm.gamma=2", "algorithm.lam=-1"])
    assert "\n" not in str(info.value)


def test_unknown_key_is_reported_first(base):
    with pytest.raises(ConfigError, match=r"^unknown key 'algorithm.epoch': did you mean 'epochs'\? \(and 1 more error\)$"):
        load_config(base, ["algorithm.gamma=2", "algorithm.epoch=2"])


def test_unknown_key_without_a_close_match_lists_the_fields(base):
    with pytest.raises(ConfigError, match=r"unknown key 'rollout.sampling.zzz': 'rollout.sampling' takes temperature, top_p"):
        load_config(base, ["rollout.sampling.zzz=1"])


def test_world_size_argument_is_checked(base):
    with pytest.raises(ConfigError, match="does not divide the world size 3"):
        load_config(base, ["parallel.tensor=2"], world_size=3)
    assert load_config(base, ["parallel.tensor=2"], world_size=4).parallel.tensor == 2


def test_yaml_reads_exponent_floats_and_keeps_dates_as_strings(write_yaml):
    data = read_yaml(write_yaml("f.yaml", "a: 1e-6\nb: 2024-01-01\nc: 3\nd: .5\n"))
    assert data == {"a": 1e-6, "b": "2024-01-01", "c": 3, "d": 0.5}


def test_top_level_must_be_a_mapping(write_yaml):
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write_yaml("l.yaml", "- a\n- b\n"))


def test_nested_defaults_survive_partial_sections(base):
    cfg = load_config(base, ["critic.optim.weight_decay=0.1", "rollout.eval_sampling.max_new_tokens=8"])
    assert cfg.critic.optim.lr == 1e-5  # the critic's own default, not the actor's
    assert cfg.rollout.eval_sampling.temperature == 0.0


def test_qkv_bias_follows_architecture(base):
    assert load_config(base).model.qkv_bias is True
    cfg = load_config(base, ["model.architecture=llama", "model.qkv_bias=null"])
    assert cfg.model.qkv_bias is False


# --- save_resolved ----------------------------------------------------------------------------


@pytest.mark.parametrize("config", ["demo.yaml"])
def test_save_resolved_round_trip(tmp_path, config):
    cfg = load_config(CONFIGS / config, ["rollout.sampling.stop=['</answer>']", "algorithm.kl.coef=1e-4"])
    out = save_resolved(cfg, tmp_path / "sub" / "resolved.yaml")
    assert out.exists() and not list(out.parent.glob(".*.tmp"))
    assert "${" not in out.read_text()
    assert load_config(out) == cfg
    assert RunConfig.model_validate(yaml.safe_load(out.read_text())) == cfg


def test_save_resolved_round_trip_with_hf_path(tmp_path, write_yaml):
    ckpt = _checkpoint(tmp_path, **QWEN2_JSON)
    cfg = load_config(write_yaml("hf.yaml", f"include: [algorithms/grpo.yaml]\nmodel: {{hf_path: {ckpt}}}\n"
                                            "data: {max_prompt_len: 64}\nrollout: {sampling: {max_new_tokens: 64}}\n"))
    assert load_config(save_resolved(cfg, tmp_path / "r.yaml")) == cfg


def test_save_resolved_replaces_atomically(tmp_path):
    cfg = load_config(CONFIGS / "demo.yaml")
    target = tmp_path / "resolved.yaml"
    target.write_text("old")
    save_resolved(cfg, target)
    assert load_config(target) == cfg
    assert [p.name for p in tmp_path.iterdir()] == ["resolved.yaml"]
