"""`megatron-rl plan`: every number of the table against arithmetic worked by hand here, the layout
lines, the verdict (one line, exit 2) and the knob it names."""
import pytest

from megatron_rl.cli import main
from megatron_rl.config import CONFIGS_DIR, load_config
from megatron_rl.config.loader import build_config
from megatron_rl.config.plan import (GiB, ModelShape, layer_activation_terms, layers_in_flight, logits_bytes, plan,
                                     refusal)

# tiny-qwen2's shape: L 2, h 64, f 128, a 4, g 2 (d = 64/4 = 16), V 64, q/k/v bias, tied embeddings
TINY = dict(architecture="qwen2", num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4,
            num_query_groups=2, vocab_size=64, max_position_embeddings=256, qkv_bias=True, tie_word_embeddings=True,
            dtype="bf16")


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def tiny_cfg(**sections):
    base = {"model": TINY, "cluster": {"nnodes": 1, "gpus_per_node": 8},
            "parallel": {"tensor": 2, "pipeline": 2},  # world 8 -> DP 2
            "actor": {"micro_batch_size": 2},
            "data": {"max_prompt_len": 32}, "rollout": {"sampling": {"max_new_tokens": 64}},  # s = 96
            "algorithm": {"prompts_per_step": 8, "mini_batch_prompts": 8, "kl": {"placement": "loss"}}}
    return build_config(_merge(base, sections))


# --- parameters ----------------------------------------------------------------------------------


def test_parameters_per_stage_by_hand():
    shape = ModelShape.from_config(tiny_cfg().model)
    # one layer at TP 2: qkv (4 + 2*2) * 16 / 2 = 64 rows x 64 + bias 64; proj 64 x 32; fc1 128 x 64; fc2 64 x 64;
    # two norms of 64
    layer = 64 * 64 + 64 + 64 * 32 + 128 * 64 + 64 * 64 + 2 * 64
    assert layer == 18624 == shape.layer_params(2)
    embed = 64 // 2 * 64  # vocab 64 split over TP 2
    assert shape.stage_params(2, 2, 0) == layer + embed
    # last stage: final norm + its own copy of the tied embedding as lm_head (PP > 1)
    assert shape.stage_params(2, 2, 1) == layer + 64 + embed
    # critic / reward: a [1, 64] value head instead of the lm_head
    assert shape.stage_params(2, 2, 1, value_head=True) == layer + 64 + 64
    # unsharded and tied: the demo's "78k parameters"
    assert shape.total_params() == 2 * (128 * 64 + 128 + 64 * 64 + 256 * 64 + 128 * 64 + 128) + 64 * 64 + 64 == 78400


@pytest.mark.parametrize("preset, published", [
    ("qwen2.5-0.5b", 494_032_768), ("qwen2.5-7b", 7_615_616_512), ("qwen2.5-32b", 32_763_876_352),
    ("llama3-8b", 8_030_261_248), ("qwen3-8b", 8_190_735_360),
])
def test_parameter_counts_match_the_published_checkpoints(preset, published, write_yaml):
    cfg = load_config(write_yaml("m.yaml", f"include: [models/{preset}.yaml]\n"))
    assert ModelShape.from_config(cfg.model).total_params() == published  # sums of the safetensors shapes


# --- activations ---------------------------------------------------------------------------------


def test_layer_activation_terms_by_hand():
    shape = ModelShape.from_config(tiny_cfg().model)
    kw = dict(seq=96, micro_batch=2, tp=2, dtype_bytes=2)
    sb = 96 * 2  # a' = 2, g' = 1, f' = 64, d = 16, h = 64, e = 2
    te = layer_activation_terms(shape, recompute="none", impl="te", **kw)
    assert te == {
        "norms": 2 * (2 * 2 * sb * 64 + 4 * sb),  # input + output (bf16) + fp32 rstd, two norms
        "qkv": 2 * sb * 16 * (2 + 1 + (2 + 2 * 1)),  # rotated q (a'), k (g'), the fused qkv output v views
        "scores": 4 * 2 * 2 * 96,  # flash attention's fp32 log-sum-exp [b, a', s]
        "rope": 4 * 2 * 96 * 16,
        "proj_in": 2 * sb * 2 * 16,
        "mlp": 5 * 2 * sb * 64,
    }
    assert sum(te.values()) == 291840
    selective = layer_activation_terms(shape, recompute="selective", impl="te", **kw)
    assert selective == {**te, "scores": 0}
    assert layer_activation_terms(shape, recompute="full", impl="te", **kw) == {"layer_input": 2 * sb * 64}
    # sequence parallelism shards the norms and the layer input over TP
    assert layer_activation_terms(shape, recompute="none", impl="te", sp=True, **kw)["norms"] == te["norms"] // 2
    assert layer_activation_terms(shape, recompute="full", impl="te", sp=True, **kw) == {"layer_input": sb * 64}
    local = layer_activation_terms(shape, recompute="none", impl="local", **kw)
    assert local["norms"] == 2 * ((4 + 4 + 2) * sb * 64 + 4 * sb)  # fp32 input copy, fp32 normalised, bf16 out
    assert local["qkv"] == 3 * 2 * sb * 2 * 16  # q, and k and v repeated to a' heads
    assert local["scores"] == (4 + 2) * 2 * 2 * 96 * 96 + 96 * 96  # fp32 softmax + its bf16 copy + the causal mask


def test_logits_bytes_by_hand():
    rows, v = 192, 32
    assert logits_bytes(rows, v, 2, fused=True) == (2 * rows * v, 4 * rows * v)  # bf16 logits, + their gradient
    assert logits_bytes(rows, v, 2, fused=False) == (8 * rows * v, 18 * rows * v)  # 2 fp32 saved; 4 fp32 + bf16 peak


def test_layers_in_flight_follow_the_schedules():
    # 1F1B: stage i keeps min(pp - i, M) micro-batches of its L/pp layers
    assert [layers_in_flight(8, 2, s, 16, None) for s in (0, 1)] == [8, 4]
    assert layers_in_flight(8, 4, 0, 2, None) == 4  # only 2 micro-batches exist
    # interleaved: stage 0 holds L (1 + (p-1)/(p v)) = 8 * 1.25 (Korthikanti et al. Sec. 4.2.3)
    assert layers_in_flight(8, 2, 0, 4, 2) == 10
    assert layers_in_flight(8, 2, 1, 4, 2) == 6  # 3 chunks of 2 layers


# --- the table ------------------------------------------------------------------------------------


def _gpu(result, stage):
    return next(g for g in result.gpus if g.stage == stage)


def test_memory_table_by_hand():
    result = plan(tiny_cfg())
    assert result.layout.dp == 2 and result.seq_len == 96
    assert result.micro_batches == {"actor": 8 * 8 // 2 // 2}  # 64 sequences / DP 2 / micro-batch 2
    p0, p1 = 18624 + 2048, 18624 + 64 + 2048
    per_layer, sb = 291840, 96 * 2

    first = _gpu(result, 0)
    actor, ref = first.roles
    assert (actor.role, ref.role) == ("actor", "reference")
    assert actor.params == p0 and actor.weights == 2 * p0 and actor.grads == 4 * p0  # bf16; fp32 main grads
    assert actor.optimizer == 12 * p0 // 2  # fp32 master + m + v, sharded over DP 2
    # stage 0 of 2: two micro-batches in flight, 1 layer each, + the token ids the embedding keeps
    assert actor.activations == 2 * per_layer + 2 * 8 * sb
    assert actor.logits == 0 and actor.recompute == 0
    assert ref.weights == 2 * p0 and ref.grads == ref.optimizer == ref.activations == 0

    last = _gpu(result, 1)
    actor = last.roles[0]
    assert actor.weights == 2 * p1 and actor.optimizer == 6 * p1
    final_norm = 2 * 2 * sb * 64 + 4 * sb
    assert actor.activations == per_layer + final_norm  # one micro-batch in flight
    assert (actor.logits_saved, actor.logits) == (2 * sb * 32, 4 * sb * 32)  # fused: [192 x 64/2] bf16 logits
    assert last.engine is None  # the embedded engine lives on rank 0
    update = next(ph for ph in last.phases if ph.name == "actor update")
    static = (2 + 4 + 6) * p1 + 2 * p1
    assert update.total == static + per_layer + final_norm + 4 * sb * 32 + 2 * GiB

    # rank 0 hosts the embedded engine: the whole model in bf16 + a KV cache of min(256, 8 * 8) rows
    engine = first.engine
    assert engine.weights == 78400 * 2
    assert engine.kv_bytes_per_token == 2 * 2 * 2 * 16 * 2  # K and V x layers x KV heads x d x bf16
    assert engine.total == 78400 * 2 + 64 * 96 * 256
    assert result.fits() and refusal(tiny_cfg(), result) is None


def test_options_change_the_right_lines():
    base = _gpu(plan(tiny_cfg()), 0).roles[0]
    unsharded = _gpu(plan(tiny_cfg(actor={"optim": {"use_distributed_optimizer": False}})), 0).roles[0]
    assert unsharded.optimizer == 2 * base.optimizer
    full = _gpu(plan(tiny_cfg(actor={"recompute": "full"})), 0).roles[0]
    assert full.activations == 2 * 2 * 96 * 2 * 64 + 2 * 8 * 192 + 4 * 96 * 16  # inputs + ids + rotary table
    assert full.recompute == 291840 - 2 * 96 * 2 * 64  # one layer rebuilt during backward
    fp32 = _gpu(plan(tiny_cfg(model={"dtype": "fp32"})), 0).roles[0]
    assert fp32.weights == 4 * base.params and fp32.optimizer == 8 * base.params // 2  # no master copy
    unfused = _gpu(plan(tiny_cfg(model={"kernels": "reference"})), 1).roles[0]
    assert (unfused.logits_saved, unfused.logits) == (8 * 95 * 2 * 32, 18 * 95 * 2 * 32)  # logits[:, :-1]
    critic = _gpu(plan(tiny_cfg(critic={"enabled": True})), 1).roles[-1]
    assert critic.role == "critic" and critic.params == 18624 + 64 + 64 and critic.logits == 0
    # a reward_model source is a frozen role on every rank; rm.iterative trains it (pairs: 2 rows each)
    sources = [{"type": "math"}, {"type": "reward_model", "path": "rm/hf"}]
    frozen = _gpu(plan(tiny_cfg(reward={"sources": sources})), 1).roles[-1]
    assert frozen.role == "reward" and frozen.weights == 2 * (18624 + 128) and frozen.grads == 0
    trained = _gpu(plan(tiny_cfg(reward={"sources": sources}, rm={"micro_batch_size": 1, "batch_size": 4,
                                                                 "iterative": {"enabled": True}})), 1)
    reward = trained.roles[-1]
    assert reward.grads == 4 * (18624 + 128) and reward.optimizer == 6 * (18624 + 128)
    assert reward.activations == 291840 + 2 * 2 * 192 * 64 + 4 * 192  # b = 2 rows, 1 micro-batch in flight
    assert [ph.name for ph in trained.phases][-1] == "reward update"


# --- engines --------------------------------------------------------------------------------------

PRESET_7B = CONFIGS_DIR / "cluster" / "qwen2.5-7b-grpo-colocated-1x8.yaml"


def test_attached_colocated_engine_by_hand():
    cfg = load_config(PRESET_7B)
    result = plan(cfg)
    engine = result.busiest.engine
    assert engine.weights == 7_615_616_512 * 2 // 2  # bf16 over the server's TP 2
    assert engine.total == int(0.45 * (80 - 1) * GiB)  # started before the trainer: mem_fraction x (GPU - reserve)
    assert engine.kv_bytes_per_token == 2 * 28 * 2 * 128 * 2  # 4 KV heads over TP 2
    rollout = next(ph for ph in result.busiest.phases if ph.name == "rollout")
    static = sum(m.static for m in result.busiest.roles)
    assert rollout.total == static + engine.total + 3 * GiB


def test_launched_colocated_engine_takes_what_the_trainer_left(tmp_path):
    hf = _hf_dir(tmp_path)
    cfg = load_config(PRESET_7B, [f"model.hf_path={hf}", "rollout.sglang.urls=[]", "rollout.sglang.num_servers=4",
                                  "rollout.sglang.mem_fraction=0.8"])
    gpu = plan(cfg).busiest
    static = sum(m.static for m in gpu.roles)
    assert gpu.engine.total == int(0.8 * (80 * GiB - static - 2 * GiB - 1 * GiB))


def test_disaggregated_pool_gpu():
    cfg = load_config(CONFIGS_DIR / "cluster" / "qwen2.5-32b-grpo-disaggregated-4x8.yaml")
    result = plan(cfg)
    assert all(g.engine is None for g in result.gpus)  # the trainer's GPUs hold no engine
    pool = result.pool.engine
    assert pool.weights == 32_763_876_352 * 2 // 4 and pool.total == int(0.85 * 79 * GiB)
    assert pool.kv_bytes_per_token == 2 * 64 * 2 * 128 * 2  # 8 KV heads over TP 4


# --- the verdict ----------------------------------------------------------------------------------


def test_32b_at_tp1_on_one_gpu_refuses(write_yaml, capsys):
    cfg = write_yaml("big.yaml", "include: [models/qwen2.5-32b.yaml, algorithms/grpo.yaml]\n"
                                 "cluster: {nnodes: 1, gpus_per_node: 1, gpu_memory_gb: 80}\n"
                                 "algorithm: {prompts_per_step: 4, mini_batch_prompts: 4}\n"
                                 "data: {max_prompt_len: 512}\nrollout: {sampling: {max_new_tokens: 1024}}\n")
    assert main(["plan", str(cfg)]) == 2
    out, err = capsys.readouterr()
    assert "actor update" in out and "optimizer" in out  # the table comes first
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    # 32.76B params x (2 + 4 + 12) B (+ the bf16 reference) on one GPU
    static = 32_763_876_352 * 18 + 32_763_876_352 * 2
    assert f"{static / GiB:.1f} GiB" in lines[0] and "GiB over cluster.gpu_memory_gb 80" in lines[0]
    assert "parallel.tensor" in lines[0]


def test_refusal_names_the_knob_that_fits():
    cfg = load_config(PRESET_7B, ["actor.micro_batch_size=4"])
    line = refusal(cfg, plan(cfg))
    assert line.startswith("actor update needs ") and "set actor.recompute=full" in line
    cfg = load_config(PRESET_7B, ["rollout.sglang.mem_fraction=0.6"])
    line = refusal(cfg, plan(cfg))
    assert line.startswith("rollout needs ") and "set rollout.sglang.mem_fraction=0.48" in line
    assert plan(load_config(PRESET_7B, ["rollout.sglang.mem_fraction=0.48"])).fits()
    cfg = load_config(PRESET_7B, ["parallel.tensor=1", "rollout.sglang.mem_fraction=0.2"])
    assert "set parallel.tensor=2" in refusal(cfg, plan(cfg))


def test_kv_cache_smaller_than_one_sequence_refuses():
    cfg = load_config(CONFIGS_DIR / "cluster" / "qwen2.5-32b-grpo-disaggregated-4x8.yaml",
                      ["rollout.sglang.mem_fraction=0.195"])  # 15.4 GiB for 15.26 GiB of weights
    line = refusal(cfg, plan(cfg))
    assert "KV cache" in line and "less than one sequence of 4096" in line and "mem_fraction" in line


@pytest.mark.parametrize("overrides, expect", [
    # colocated servers launched by rank 0 must fit on its node
    (["rollout.sglang.urls=[]", "rollout.sglang.num_servers=3", "rollout.sglang.tp_size=4"],
     "launched SGLang servers start on rank 0's node only"),
    # CUDA IPC from the second pipeline stage on node 1 cannot reach the servers
    (["rollout.weight_sync=tensor"], "rollout.weight_sync tensor hands CUDA-IPC handles"),
    (["rollout.weight_sync=nccl"], "NCCL refuses two ranks of one group on one GPU"),
])
def test_layout_problems_refuse(overrides, expect, tmp_path):
    path = CONFIGS_DIR / "cluster" / "qwen2.5-32b-grpo-colocated-2x8.yaml"
    if "rollout.sglang.urls=[]" in overrides:  # launched servers need a checkpoint path to validate
        path = PRESET_7B
        overrides = overrides + [f"model.hf_path={_hf_dir(tmp_path)}"]
    cfg = load_config(path, overrides)
    assert expect in refusal(cfg, plan(cfg))


def test_disaggregated_launched_servers_must_leave_the_trainer_its_gpus(tmp_path):
    cfg = load_config(CONFIGS_DIR / "cluster" / "qwen2.5-7b-grpo-disaggregated-1x8.yaml",
                      ["rollout.sglang.urls=[]", "rollout.sglang.num_servers=2", "rollout.sglang.base_gpu_id=2",
                       f"model.hf_path={_hf_dir(tmp_path)}"])
    assert "set rollout.sglang.base_gpu_id=4" in refusal(cfg, plan(cfg))


def _hf_dir(tmp_path):
    import json

    hf = tmp_path / "hf"
    hf.mkdir(exist_ok=True)
    (hf / "config.json").write_text(json.dumps({
        "model_type": "qwen2", "num_hidden_layers": 28, "hidden_size": 3584, "intermediate_size": 18944,
        "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064, "max_position_embeddings": 32768}))
    return hf


# --- the CLI output ---------------------------------------------------------------------------------


def test_cli_prints_the_groups_and_the_engines(capsys):
    assert main(["plan", str(CONFIGS_DIR / "cluster" / "qwen2.5-32b-grpo-colocated-4x8.yaml")]) == 0
    out = capsys.readouterr().out
    assert "world 32 = TP 8 x CP 1 x PP 2 x DP 2" in out
    assert "nodes (4): [0-7] [8-15] [16-23] [24-31]" in out
    assert "TP groups (4): [0-7] [8-15] [16-23] [24-31]" in out
    # rank = tp + 8 * (dp + 2 * pp): stage 1 starts at 16
    assert "PP groups (16): [0, 16] [1, 17] [2, 18] [3, 19] ... (10 more) [14, 30] [15, 31]" in out
    assert "DP groups (16): [0, 8] [1, 9] [2, 10] [3, 11] ... (10 more) [22, 30] [23, 31]" in out
    assert "server 1 http://node-1:30010: node 1 GPUs 0-7, shared with ranks [8-15]" in out
    assert "weight sync: disk, sent by ranks 0, 16" in out
    assert out.rstrip().endswith("fits")


def test_cli_world_size_override(capsys):
    # the 1x8 disaggregated preset's trainer has 4 ranks per node; 8 ranks make two nodes
    path = CONFIGS_DIR / "cluster" / "qwen2.5-7b-grpo-disaggregated-1x8.yaml"
    assert main(["plan", str(path), "--world-size", "8"]) == 0
    out = capsys.readouterr().out
    assert "world 8 = TP 2 x CP 1 x PP 1 x DP 4" in out and "nodes (2): [0-3] [4-7]" in out
    assert "DP groups (2): [0, 2, 4, 6] [1, 3, 5, 7]" in out
