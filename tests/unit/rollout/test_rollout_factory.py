"""The rollout config keys, `weight_sync: auto` resolution and its refusals (for every engine,
placement and choice), and the factory that builds the engine (rank 0 only) and the transport."""
import itertools
import sys
from pathlib import Path

import pytest
from fake_sglang import FAKE_LAUNCHER, free_port_pair

from megatron_rl.config import ConfigError, load_config
from megatron_rl.config.checks import WEIGHT_SYNC_AUTO, resolve_weight_sync, run_errors, weight_sync_problem
from megatron_rl.config.schema import ModelConfig, RolloutConfig, SGLangConfig
from megatron_rl.rollout.factory import build_rollout_engine
from megatron_rl.weight_sync.factory import build_weight_sync

BASE = Path(__file__).resolve().parents[2] / "fixtures" / "bad_configs" / "parts" / "base.yaml"
ENGINES, PLACEMENTS = ("embedded", "sglang"), ("colocated", "disaggregated")
CHOICES = ("auto", "in_process", "tensor", "nccl", "disk")

# (engine, placement, weight_sync) -> the transport, or a piece of the one-line refusal
EXPECTED = {
    ("embedded", "colocated", "auto"): "in_process",
    ("embedded", "colocated", "in_process"): "in_process",
    ("sglang", "colocated", "auto"): "tensor",
    ("sglang", "colocated", "tensor"): "tensor",
    ("sglang", "colocated", "disk"): "disk",
    ("sglang", "disaggregated", "auto"): "nccl",
    ("sglang", "disaggregated", "nccl"): "nccl",
    ("sglang", "disaggregated", "disk"): "disk",
    ("sglang", "colocated", "in_process"): "error: 'in_process' only reaches the embedded engine",
    ("sglang", "disaggregated", "in_process"): "error: 'in_process' only reaches the embedded engine",
    ("sglang", "disaggregated", "tensor"): "error: 'tensor' hands CUDA-IPC handles",
    ("sglang", "colocated", "nccl"): "error: NCCL refuses two ranks of one group on one GPU",
    **{("embedded", p, ws): "error: but rollout.engine is 'embedded'"
       for p in PLACEMENTS for ws in ("tensor", "nccl", "disk")},
    # refused by embedded_engine_is_colocated, not by the weight-sync rule
    ("embedded", "disaggregated", "auto"): "in_process",
    ("embedded", "disaggregated", "in_process"): "in_process",
}


@pytest.mark.parametrize("engine, placement, ws", list(itertools.product(ENGINES, PLACEMENTS, CHOICES)))
def test_weight_sync_resolution_for_every_combination(engine, placement, ws):
    r = RolloutConfig(engine=engine, placement=placement, weight_sync=ws)
    want = EXPECTED[(engine, placement, ws)]
    problem = weight_sync_problem(r)
    if want.startswith("error: "):
        assert problem is not None and want.removeprefix("error: ") in problem
        assert problem.startswith(f"rollout.weight_sync '{ws}'") and "\n" not in problem
        with pytest.raises(ConfigError) as err:
            build_weight_sync(r, None)
        assert str(err.value) == problem
    else:
        assert problem is None and resolve_weight_sync(r) == want
    if ws == "auto" and (engine, placement) in WEIGHT_SYNC_AUTO:
        assert resolve_weight_sync(r) == WEIGHT_SYNC_AUTO[(engine, placement)]


def test_nccl_with_colocated_servers_off_the_trainers_first_gpu_or_attached_is_allowed():
    r = RolloutConfig(engine="sglang", placement="colocated", weight_sync="nccl", sglang=SGLangConfig(base_gpu_id=4))
    assert weight_sync_problem(r) is None
    r = RolloutConfig(engine="sglang", placement="colocated", weight_sync="nccl",
                      sglang=SGLangConfig(urls=["http://node2:30010"]))
    assert weight_sync_problem(r) is None


def test_weight_sync_is_importable_from_the_weight_sync_package():
    from megatron_rl import weight_sync

    assert weight_sync.resolve_weight_sync is resolve_weight_sync
    assert set(WEIGHT_SYNC_AUTO.values()) <= set(weight_sync.TRANSPORTS)


@pytest.mark.parametrize("overrides, expected", [
    (["rollout.engine=sglang", "rollout.placement=disaggregated", "rollout.weight_sync=tensor",
      "rollout.sglang.urls=[http://node2:30010]"], "rollout.weight_sync 'tensor' hands CUDA-IPC handles"),
    (["rollout.weight_sync=disk"], "rollout.weight_sync 'disk' sends weights to SGLang servers"),
    (["rollout.engine=sglang"], "rollout.engine 'sglang' launches its servers from model.hf_path"),
    (["rollout.engine=sglang", "rollout.sglang.urls=[node2:30010]"], "rollout.sglang.urls: 'node2:30010' is not"),
    (["rollout.sglang.extra_args=[--tp-size, '2']"], "rollout.sglang.extra_args: --tp-size is set by the launcher"),
    (["rollout.sglang.router=maybe"], "rollout.sglang.router: 'maybe' is not one of auto, true, false"),
    (["rollout.sglang.router_policy=cache"], "did you mean 'cache_aware'?"),
    (["rollout.sglang.max_restarts=-1"], "rollout.sglang.max_restarts: Input should be greater than or equal to 0"),
    (["rollout.sglang.nccl_port=70000"], "rollout.sglang.nccl_port: Input should be less than or equal to 65535"),
])
def test_validate_refuses_bad_rollout_keys_in_one_line(overrides, expected):
    with pytest.raises(ConfigError) as err:
        load_config(BASE, overrides)
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_new_sglang_keys_load_with_run_output_dir_resolved():
    cfg = load_config(BASE, ["run.name=exp", "rollout.engine=sglang", "rollout.sglang.urls=[http://n1:30010]",
                             "rollout.sglang.router_url=http://n1:30000", "rollout.sglang.extra_args=[--dtype, bfloat16]",
                             "rollout.sglang.max_restarts=5", "rollout.sglang.nccl_port=29600"])
    s = cfg.rollout.sglang
    assert s.log_dir == "outputs/exp/sglang" and s.disk_root == "outputs/exp/weights"
    assert s.router_url == "http://n1:30000" and s.extra_args == ["--dtype", "bfloat16"]
    assert (s.max_restarts, s.nccl_port, s.router, s.router_policy, s.seed) == (5, 29600, "auto", "cache_aware", None)
    assert run_errors(cfg) == []


# ------------------------------------------------------------------------------------ the factory
def test_only_rank_0_gets_an_engine():
    for engine in ENGINES:
        assert build_rollout_engine(RolloutConfig(engine=engine), None, rank=3) is None


def test_embedded_engine_on_rank_0(tmp_path):
    pytest.importorskip("transformers")
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "distributed"))
    from hf_models import model_config

    from megatron_rl.rollout import EmbeddedEngine

    engine = build_rollout_engine(RolloutConfig(), model_config("qwen2"), rank=0, seed=5, device="cpu")
    assert isinstance(engine, EmbeddedEngine) and engine.weight_version == 0
    with pytest.raises(ConfigError, match="rollout.placement 'disaggregated' needs rollout.engine=sglang"):
        build_rollout_engine(RolloutConfig(placement="disaggregated"), model_config("qwen2"), rank=0)


def test_sglang_engine_from_config_launches_with_the_config_keys(tmp_path):
    port = free_port_pair()
    r = RolloutConfig(engine="sglang", bucket_mb=3, sglang=SGLangConfig(device="cuda", 
        base_port=port, num_servers=2, tp_size=2, base_gpu_id=2, router=False, health_timeout_s=20,
        extra_args=["--dtype", "bfloat16"], max_retries=1, request_timeout_s=7, max_restarts=4))
    model = ModelConfig(hf_path="/ckpt", architecture="qwen2")
    engine = build_rollout_engine(r, model, rank=0, seed=11, output_dir=str(tmp_path / "run"), launcher=FAKE_LAUNCHER)
    try:
        assert engine.log_dir == str(tmp_path / "run" / "sglang")  # ${run.output_dir}/sglang
        log = (tmp_path / "run" / "sglang" / "sglang-server-1.log").read_text()
        assert (f"--model-path /ckpt --host 127.0.0.1 --port {port + 1} --tp-size 2 --dp-size 1 --base-gpu-id 4 "
                "--mem-fraction-static 0.8 --enable-memory-saver --random-seed 12 --dtype bfloat16") in log
        assert engine.bucket_bytes == 3 << 20 and engine.servers.max_restarts == 4
        aio = engine.client.aio
        assert (aio.max_retries, aio.request_timeout_s, aio.default_tp_size) == (1, 7, 2)
        assert engine.servers.router_url is None and len(engine.server_urls) == 2
    finally:
        engine.shutdown()


def test_the_config_seed_wins_over_the_run_seed(tmp_path):
    r = RolloutConfig(engine="sglang", sglang=SGLangConfig(device="cuda", base_port=free_port_pair(), seed=100, health_timeout_s=20,
                                                           log_dir=str(tmp_path)))
    engine = build_rollout_engine(r, ModelConfig(hf_path="/ckpt"), rank=0, seed=11, launcher=FAKE_LAUNCHER)
    try:
        assert "--random-seed 100" in (tmp_path / "sglang-server-0.log").read_text()
    finally:
        engine.shutdown()


def test_sglang_without_a_checkpoint_or_urls_is_a_config_error():
    with pytest.raises(ConfigError, match="launches its servers from model.hf_path"):
        build_rollout_engine(RolloutConfig(engine="sglang"), ModelConfig(num_layers=1, hidden_size=8,
                             ffn_hidden_size=8, num_attention_heads=2, vocab_size=10), rank=0)


def test_router_true_without_sglang_router_installed_is_one_line(tmp_path):
    pytest.importorskip("httpx")
    import importlib.util
    import sys

    # the servers' interpreter decides: this one (the project's environment), which has no router
    assert importlib.util.find_spec("sglang_router") is None, "the locked project environment has no sglang_router"
    from megatron_rl.rollout.sglang_launch import SGLangLaunchError

    r = RolloutConfig(engine="sglang", sglang=SGLangConfig(base_port=free_port_pair(), router=True,
                                                           log_dir=str(tmp_path), python=sys.executable))
    with pytest.raises(SGLangLaunchError, match="rollout.sglang.router is true but .* has no sglang_router"):
        build_rollout_engine(r, ModelConfig(hf_path="/ckpt"), rank=0, launcher=FAKE_LAUNCHER)


def test_transports_from_config(tmp_path):
    pytest.importorskip("megatron.core")
    from megatron_rl.weight_sync import DiskWeightSync, NcclWeightSync, TensorWeightSync

    sg = dict(nccl_master_address="10.0.0.1", nccl_port=29600)
    tensor = build_weight_sync(RolloutConfig(engine="sglang", bucket_mb=2, sglang=SGLangConfig(**sg)), None)
    assert isinstance(tensor, TensorWeightSync) and tensor.manage_memory and tensor.bucket_bytes == 2 << 20
    no_saver = RolloutConfig(engine="sglang", sglang=SGLangConfig(enable_memory_saver=False))
    assert not build_weight_sync(no_saver, None).manage_memory
    nccl = build_weight_sync(RolloutConfig(engine="sglang", placement="disaggregated", sglang=SGLangConfig(**sg)), None)
    assert isinstance(nccl, NcclWeightSync) and (nccl.master_address, nccl.master_port) == ("10.0.0.1", 29600)
    disk = build_weight_sync(RolloutConfig(engine="sglang", weight_sync="disk"), None, output_dir=str(tmp_path))
    assert isinstance(disk, DiskWeightSync) and disk.root == (tmp_path / "weights").resolve()


def test_rollout_imports_no_weight_transport():
    """The knot between rollout/ and weight_sync/ stays cut: transports are built in weight_sync/."""
    import ast
    from pathlib import Path

    import megatron_rl.rollout as rollout

    offenders = []
    for path in Path(rollout.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and "weight_sync" in (node.module or ""):
                offenders.append(f"{path.name}:{node.lineno} from {'.' * node.level}{node.module}")
            elif isinstance(node, ast.Import) and any("weight_sync" in a.name for a in node.names):
                offenders.append(f"{path.name}:{node.lineno}")
    assert not offenders, offenders
