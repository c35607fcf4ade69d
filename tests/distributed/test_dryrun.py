"""`megatron-rl dry-run`: full-size layouts on torch's fake process group and the meta device, in this
one process (no GPU, no spawned ranks). Expected shapes come from the preset YAML by hand arithmetic,
not from the code under test."""
from __future__ import annotations

import copy
import dataclasses
import functools
import math
import time

import pytest
import yaml

from megatron_rl.cli import main
from megatron_rl.config import CONFIGS_DIR, ConfigError, load_config
from megatron_rl.parallel import dryrun

QWEN32B = CONFIGS_DIR / "models" / "qwen2.5-32b.yaml"
QWEN7B = CONFIGS_DIR / "models" / "qwen2.5-7b.yaml"
TINY = CONFIGS_DIR / "models" / "tiny-qwen2.yaml"
FOUR_NODES = ["cluster.nnodes=4", "cluster.gpus_per_node=8"]  # 32 ranks
TINY_RUN = ["data.max_prompt_len=64", "rollout.sampling.max_new_tokens=64"]  # fit its 256 positions


def hf_shapes_from_yaml(path, role="actor", **changes):
    """Every HF tensor name -> shape, from the preset's numbers (Qwen2 layout: q/k/v bias)."""
    m = {**yaml.safe_load(path.read_text())["model"], **changes}
    h, f, v, heads, kv = (m["hidden_size"], m["ffn_hidden_size"], m["vocab_size"], m["num_attention_heads"],
                          m["num_query_groups"])
    d = h // heads
    assert m["architecture"] == "qwen2" and m["qkv_bias"]
    out = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,)}
    if role == "critic":
        out["score.weight"] = (1, h)
    elif not m["tie_word_embeddings"]:
        out["lm_head.weight"] = (v, h)
    for i in range(m["num_layers"]):
        p = f"model.layers.{i}."
        out.update({
            p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (heads * d, h), p + "self_attn.q_proj.bias": (heads * d,),
            p + "self_attn.k_proj.weight": (kv * d, h), p + "self_attn.k_proj.bias": (kv * d,),
            p + "self_attn.v_proj.weight": (kv * d, h), p + "self_attn.v_proj.bias": (kv * d,),
            p + "self_attn.o_proj.weight": (h, heads * d),
            p + "mlp.gate_proj.weight": (f, h), p + "mlp.up_proj.weight": (f, h), p + "mlp.down_proj.weight": (h, f),
        })
    return out


@pytest.mark.parametrize("overrides, roles, stages", [
    (["parallel.pipeline=2"], ["actor"], [[list(range(0, 32))], [list(range(32, 64))]]),
    (["parallel.pipeline=4", "parallel.virtual_pipeline=2", "critic.enabled=true"], ["actor", "critic"],
     [[list(range(8 * s, 8 * s + 8)), list(range(32 + 8 * s, 40 + 8 * s))] for s in range(4)]),
], ids=["tp8-pp2-dp2", "tp8-pp4-vpp2-critic"])
def test_qwen32b_on_32_ranks(overrides, roles, stages):
    cfg = load_config(QWEN32B, [*FOUR_NODES, "parallel.tensor=8", *overrides])
    start = time.process_time()  # CPU time: the CI box's 2 cores are shared, wall time is not ours alone
    report = dryrun.dry_run(cfg)
    cpu = time.process_time() - start
    assert cpu < 60, f"the 32-rank dry run took {cpu:.1f} s of CPU"  # measured 1-4 s (+4 s first import)

    assert report.roles == roles
    assert len(report.results) == 32  # every rank's groups
    assert report.built == [r for r in range(32) if (r // 8) % report.layout.dp == 0]  # dp 0: every TP x PP
    by_rank = {r.rank: r for r in report.results}
    if report.layout.pp == 2:  # rank = tp + 8 * (dp + 2 * pp)
        assert by_rank[0].groups == {"tp": list(range(8)), "cp": [0], "dp": [0, 8], "pp": [0, 16],
                                     "embedding": [0, 16]}
        assert by_rank[31].groups == {"tp": list(range(24, 32)), "cp": [31], "dp": [23, 31], "pp": [15, 31],
                                      "embedding": [15, 31]}
        assert by_rank[9].groups["dp"] == [1, 9] and by_rank[9].groups["pp"] == [9, 25]
    else:  # rank = tp + 8 * pp
        assert by_rank[13].groups["pp"] == [5, 13, 21, 29] and "embedding" not in by_rank[13].groups
        assert by_rank[29].groups["embedding"] == [5, 29]
    for role in roles:
        for r in report.results:
            if role in r.params:
                assert r.layers[role] == stages[r.coords["pp"]]
        want = hf_shapes_from_yaml(QWEN32B, role)
        got = report.summaries[role]
        assert got.hf_shapes == want  # every name, none extra, vocab 152064 unpadded (divides TP 8)
        assert got.hf_shapes["model.layers.63.self_attn.q_proj.weight"] == (5120, 5120)
        assert got.total_params == sum(math.prod(s) for s in want.values())
    assert report.summaries["actor"].total_params == 32_763_876_352
    # TP rank 0 of stage 0: the embedding shard [152064/8, 5120] plus 32 layers' shards
    layer_shard = 10240 + 896 * 5120 + 896 + 5120 * 640 + 2 * 3456 * 5120 + 5120 * 3456
    assert sum(math.prod(p.shape) for p in by_rank[0].params["actor"]) == \
        19008 * 5120 + len(stages[0][0]) * len(stages[0]) * layer_shard
    assert report.peak_rss_mib < 2048  # a 65 GB model on meta: the process stays at its import size


def test_cli_prints_the_report_for_a_subset_of_ranks(capsys):
    rc = main(["dry-run", str(QWEN32B), *FOUR_NODES, "parallel.tensor=8", "parallel.pipeline=2",
               "--ranks", "0,5,31"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "world 32 = TP 8 x CP 1 x PP 2 x DP 2" in out
    assert "equal the layout on 3 of 32 ranks" in out
    assert "  rank 5: TP [0..7], PP [5, 21], DP [5, 13], CP [5]" in out
    assert "PP stage 1: layers 32-63; 2,048,033,792 parameters per rank (3.81 GiB bf16 weights)" in out
    assert "shapes checked per rank only" in out  # 3 ranks cannot cover 8 x 2 coordinates
    assert out.rstrip().splitlines()[-1].startswith("OK (")


@pytest.mark.parametrize("args, message", [
    ([str(QWEN7B), "cluster.gpus_per_node=8", "parallel.tensor=8"],
     "error: model.num_attention_heads 28 is not divisible by parallel.tensor 8"),
    ([str(QWEN7B), "cluster.gpus_per_node=8", "parallel.pipeline=8"],
     "error: model.num_layers 28 is not divisible by parallel.pipeline 8"),
    ([str(QWEN32B), "parallel.tensor=8", "--world-size", "32", "--ranks", "40"],
     "error: --ranks '40': the world has 32 ranks (0..31)"),
    ([str(QWEN32B), "parallel.tensor=8", "--world-size", "32", "--ranks", "0-3"],
     "error: --ranks '0-3': expected auto, all or a comma-separated list"),
], ids=["7b-tp8", "7b-pp8", "rank-out-of-range", "rank-syntax"])
def test_bad_layout_fails_in_one_line(args, message, capsys):
    assert main(["dry-run", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err


def test_megatron_refusal_is_one_line_when_config_checks_are_bypassed():
    cfg = load_config(QWEN7B, ["cluster.gpus_per_node=8", "parallel.pipeline=4"])
    cfg.parallel.pipeline = 8  # 28 layers over 8 stages: only the cross-section checks would refuse it
    with pytest.raises(dryrun.LayoutMismatch, match=r"^rank 0: building the actor failed: AssertionError: "
                                                    r"num_layers should be divisible by pipeline"):
        dryrun.dry_run(cfg)


def test_groups_built_in_another_order_are_reported(monkeypatch, capsys):
    from megatron.core import parallel_state as ps

    # Megatron building DP outside PP (tp-cp-ep-pp-dp) disagrees with the layout's tp-cp-dp-pp
    monkeypatch.setattr(ps, "initialize_model_parallel",
                        functools.partial(ps.initialize_model_parallel, order="tp-cp-ep-pp-dp"))
    rc = main(["dry-run", str(TINY), *TINY_RUN, "cluster.gpus_per_node=8", "parallel.tensor=2",
               "parallel.pipeline=2"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err == "error: rank 0: Megatron's DP group is [0, 4] but the layout (order tp-cp-dp-pp) gives [0, 2]\n"


@pytest.fixture(scope="module")
def tiny_report():
    """Tied embeddings, vocab 97 padded to 98 over TP 2, one layer per pipeline stage, DP 2."""
    cfg = load_config(TINY, [*TINY_RUN, "model.vocab_size=97", "cluster.gpus_per_node=8", "parallel.tensor=2",
                             "parallel.pipeline=2"])
    return cfg, dryrun.dry_run(cfg, ranks="all")


def test_tiny_tied_padded_layout(tiny_report):
    cfg, report = tiny_report
    assert report.built == list(range(8))
    summary = report.summaries["actor"]
    assert summary.hf_shapes == hf_shapes_from_yaml(TINY, vocab_size=97)  # padding trimmed, no lm_head (tied)
    last = next(r for r in report.results if r.coords == {"tp": 1, "cp": 0, "dp": 1, "pp": 1})
    shapes = {p.name: p.shape for p in last.params["actor"]}
    assert shapes["output_layer.weight"] == (49, 64)  # the last stage's copy of the tied embedding, padded
    assert shapes["decoder.layers.0.self_attention.linear_qkv.weight"] == ((4 + 2 * 2) * 16 // 2, 64)


def _tampered(report, rank, **changes):
    results = copy.deepcopy(report.results)
    target = next(r for r in results if r.rank == rank)
    for key, value in changes.items():
        setattr(target, key, value)
    return results, target


def test_verifier_finds_each_kind_of_damage(tiny_report):
    cfg, report = tiny_report
    layout, model = report.layout, cfg.model
    # rank = tp + 2 * (dp + 2 * pp): ranks 0, 1 are stage 0 and ranks 4, 5 stage 1 at dp 0
    results = copy.deepcopy(report.results)
    for r in results:
        if r.coords["pp"] == 1:
            r.layers["actor"] = [[0]]
    with pytest.raises(dryrun.LayoutMismatch, match="actor: layer 0 is built twice, on PP stage 0 chunk 0 and "
                                                    "on PP stage 1 chunk 0"):
        dryrun.verify_across_ranks(results, layout, model, "actor")

    results = copy.deepcopy(report.results)
    for r in results:
        if r.coords["pp"] == 1:
            r.params["actor"] = [p for p in r.params["actor"] if p.name != "decoder.final_layernorm.weight"]
    with pytest.raises(dryrun.LayoutMismatch, match=r"actor: no rank holds model.norm.weight \(1 HF tensors"):
        dryrun.verify_across_ranks(results, layout, model, "actor")

    results = copy.deepcopy(report.results)
    for r in results:
        if r.coords["tp"] == 1:  # every TP-1 shard of the down projection one column short
            r.params["actor"] = [dataclasses.replace(p, shape=(64, 63)) if p.name.endswith("linear_fc2.weight")
                                 else p for p in r.params["actor"]]
    with pytest.raises(dryrun.LayoutMismatch, match=r"model.layers.0.mlp.down_proj.weight reassembles to "
                                                    r"\(64, 127\) .* but the HF shape is \(64, 128\)"):
        dryrun.verify_across_ranks(results, layout, model, "actor")

    results = copy.deepcopy(report.results)
    results[-1].params["actor"] = results[-1].params["actor"][:-1]  # a DP replica missing a tensor
    with pytest.raises(dryrun.LayoutMismatch, match="rank 7 actor: parameters differ from rank 5"):
        dryrun.verify_across_ranks(results, layout, model, "actor")

    _, target = _tampered(report, 0)
    target.params["actor"] = [dataclasses.replace(p, shape=(48, 64)) if p.name.startswith("embedding") else p
                              for p in target.params["actor"]]
    with pytest.raises(dryrun.LayoutMismatch, match=r"rank 0 actor: embedding.word_embeddings.weight is \(48, 64\) "
                                                    r"but the HF loader cuts a \(49, 64\) shard"):
        dryrun._check_local_shards(target, "actor", model, layout.tp)


def test_ranks_selection():
    layout = dryrun.RankLayout(32, tp=8, pp=2)
    groups, build = dryrun.select_ranks("auto", layout)
    assert groups == list(range(32)) and build == [*range(8), *range(16, 24)]
    big = dryrun.RankLayout(1024, tp=8, pp=4)
    groups, build = dryrun.select_ranks("auto", big)  # past AUTO_ALL_GROUPS: built ranks + DP/CP of the ends
    assert build == [r for r in range(1024) if (r // 8) % 32 == 0] and len(build) == 32
    assert set(build) < set(groups) and {0, 8, 248, 775, 1023} <= set(groups) and len(groups) == 32 + 31 + 31
    assert dryrun.select_ranks(" 31,0,5,5", layout) == ([0, 5, 31], [0, 5, 31])
    with pytest.raises(ConfigError, match="the world has 32 ranks"):
        dryrun.select_ranks("-1", layout)
