"""Distributed checkpoints: save at TP=2, resume at TP=1 x DP=2 (and PP=2) and continue with the same
losses; a save that dies midway is never taken as the latest."""
import json

import pytest
import torch

from dist_harness import run_ranks
from hf_models import make_hf_model, model_config


def _worker(hf_dir, ckpt_dir, tp, pp, ids, mask, mode):
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    from megatron_rl.checkpoint import find_latest, load_checkpoint, save_checkpoint
    from megatron_rl.config.schema import OptimConfig, ParallelConfig
    from megatron_rl.models.hf_io import save_hf
    from megatron_rl.models.role import MegatronRole
    from megatron_rl.parallel import init_parallel

    model, parallel = model_config("qwen2"), ParallelConfig(tensor=tp, pipeline=pp)
    init_parallel(parallel, seed=3)
    optim = OptimConfig(lr=3e-3, grad_clip=1.0, warmup_steps=3, lr_decay="cosine", min_lr=1e-4)
    actor = MegatronRole.build("actor", model, parallel, optim, total_steps=10,
                               hf_path=hf_dir if mode == "fresh" else None)
    total = mask[:, 1:].sum()

    def loss_fn(logits, mb):
        nll = vocab_parallel_cross_entropy(logits[:, :-1].contiguous(), mb["input_ids"][:, 1:].contiguous())
        return (nll * mb["mask"][:, 1:]).sum() / total, {}

    dp, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    rows = slice(dp_rank * 4 // dp, (dp_rank + 1) * 4 // dp)
    micro = [{"input_ids": ids[rows][i:i + 1], "mask": mask[rows][i:i + 1]} for i in range(4 // dp)]
    losses = []
    if mode == "fresh":
        losses += [actor.train_step(micro, loss_fn)["loss"] for _ in range(2)]
        save_checkpoint(ckpt_dir, 2, {"actor": actor}, extra={"data_position": 8, "policy_version": 2})
        save_hf(actor.chunks, f"{ckpt_dir}-hf-at-2", model)  # what `megatron-rl convert` must reproduce
        lr = actor.optimizer.param_groups[0]["lr"]
        losses += [actor.train_step(micro, loss_fn)["loss"] for _ in range(2)]
        return losses, lr
    state = load_checkpoint(str(find_latest(ckpt_dir)), {"actor": actor})
    step, lr = actor.step, actor.optimizer.param_groups[0]["lr"]
    losses += [actor.train_step(micro, loss_fn)["loss"] for _ in range(2)]
    return losses, (state, step, lr)


def test_save_at_tp2_resume_at_tp1_and_pp2_continues_identically(tmp_path):
    make_hf_model("qwen2", seed=21).save_pretrained(tmp_path / "hf", safe_serialization=True)
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 96, (4, 10), generator=g)
    mask = torch.zeros(4, 10)
    mask[:, 3:] = 1
    mask[1, 7:] = 0
    ckpt = tmp_path / "ckpt"
    fresh, lr = run_ranks(_worker, 2, str(tmp_path / "hf"), str(ckpt), 2, 1, ids, mask, "fresh")[0]
    assert (ckpt / "step_00000002" / "complete.json").is_file() and (ckpt / "latest").read_text() == "2"
    for tp, pp in [(1, 1), (1, 2)]:
        resumed, (state, step, resumed_lr) = run_ranks(_worker, 2, str(tmp_path / "hf"), str(ckpt), tp, pp, ids, mask,
                                                       "resume")[0]
        assert state == {"step": 2, "extra": {"data_position": 8, "policy_version": 2}} and step == 2
        assert resumed_lr == lr and 0 < lr < 3e-3  # on the warmup/cosine curve, not restarted
        # optimizer moments and the warmup/cosine schedule position came back: same next losses
        assert resumed == pytest.approx(fresh[2:], abs=2e-5), (tp, pp, resumed, fresh)


def test_an_interrupted_save_is_never_the_latest(tmp_path):
    from megatron_rl.checkpoint import find_latest, load_checkpoint
    from megatron_rl.models.hf_io import CheckpointError

    (tmp_path / "step_00000003").mkdir()
    (tmp_path / "step_00000003" / "complete.json").write_text(json.dumps({"step": 3}))
    (tmp_path / "step_00000005.partial").mkdir()  # killed mid-write
    (tmp_path / "step_00000007").mkdir()  # killed after a rename by hand, no marker: not complete
    assert find_latest(str(tmp_path)) == tmp_path / "step_00000003"
    assert find_latest(str(tmp_path / "nothing-here")) is None
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        load_checkpoint(str(tmp_path / "step_00000005.partial"), {})


def test_convert_cli_exports_a_tp2_checkpoint_at_tp1(tmp_path):
    import subprocess
    import sys

    import yaml
    from safetensors.torch import load_file

    from hf_models import SHAPES

    make_hf_model("qwen2", seed=22).save_pretrained(tmp_path / "hf", safe_serialization=True)
    ids, mask = torch.randint(0, 96, (4, 10)), torch.ones(4, 10)
    ckpt = tmp_path / "ckpt"
    run_ranks(_worker, 2, str(tmp_path / "hf"), str(ckpt), 2, 1, ids, mask, "fresh")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"model": {**SHAPES["qwen2"], "max_position_embeddings": 128, "dtype": "fp32"},
                                      "data": {"max_prompt_len": 64}, "rollout": {"sampling": {"max_new_tokens": 64}}}))
    cmd = [sys.executable, "-m", "megatron_rl", "convert", str(config), "--checkpoint", str(ckpt), "--out",
           str(tmp_path / "out")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "actor at step 2" in done.stdout
    expected = {}
    for f in (tmp_path / "ckpt-hf-at-2").glob("*.safetensors"):
        expected.update(load_file(f))
    got = {}
    for f in (tmp_path / "out").glob("*.safetensors"):
        got.update(load_file(f))
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)

    missing = subprocess.run([*cmd[:6], str(tmp_path / "nowhere"), *cmd[7:]], capture_output=True, text=True,
                             timeout=300)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    assert missing.stderr.startswith(f"error: no complete checkpoint at {tmp_path / 'nowhere'}")
