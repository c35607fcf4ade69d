"""A wrong or damaged HF checkpoint fails before training with one line naming the file and tensor."""
import json

import torch
from safetensors.torch import load_file, save_file

from dist_harness import run_ranks
from hf_models import make_hf_model, model_config


def _load_errors(cases):
    from megatron_rl.config.schema import ParallelConfig
    from megatron_rl.models.builder import build_model
    from megatron_rl.models.hf_io import CheckpointError, load_hf_weights
    from megatron_rl.parallel import init_parallel

    model = model_config("qwen2")
    init_parallel(ParallelConfig(), seed=1)
    chunks = build_model("actor", model, ParallelConfig(), perform_initialization=False)
    messages = {}
    for name, path in cases.items():
        try:
            load_hf_weights(chunks, path, model)
            messages[name] = None
        except CheckpointError as exc:
            messages[name] = str(exc)
    return messages


def _damaged_copy(src, dst, edit_tensors=None, edit_config=None):
    dst.mkdir()
    config = json.loads((src / "config.json").read_text())
    if edit_config:
        edit_config(config)
    (dst / "config.json").write_text(json.dumps(config))
    tensors = load_file(src / "model.safetensors")
    if edit_tensors:
        edit_tensors(tensors)
    if tensors is not None:
        save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    return str(dst)


def test_bad_checkpoints_fail_in_one_line(tmp_path):
    good = tmp_path / "good"
    make_hf_model("qwen2", seed=3).save_pretrained(good, safe_serialization=True)
    k_proj = "model.layers.1.self_attn.k_proj.weight"
    cases = {
        "good": str(good),
        "architecture": _damaged_copy(good, tmp_path / "arch", edit_config=lambda c: c.update(model_type="llama")),
        "vocab": _damaged_copy(good, tmp_path / "vocab", edit_config=lambda c: c.update(vocab_size=128)),
        "missing": _damaged_copy(good, tmp_path / "missing", edit_tensors=lambda t: t.pop("model.layers.1.mlp.down_proj.weight")),
        "shape": _damaged_copy(good, tmp_path / "shape", edit_tensors=lambda t: t.update({k_proj: torch.zeros(8, 64)})),
        "empty": str((tmp_path / "empty").mkdir() or tmp_path / "empty"),
    }
    (tmp_path / "empty" / "config.json").write_text((good / "config.json").read_text())
    msgs = run_ranks(_load_errors, 1, cases)[0]
    assert msgs["good"] is None
    for name, msg in msgs.items():
        if name != "good":
            assert msg is not None and "\n" not in msg, (name, msg)
    assert "model_type 'llama' but model.architecture is 'qwen2'" in msgs["architecture"]
    assert "vocab_size is 128 but the model config says 96" in msgs["vocab"]
    assert "model.layers.1.mlp.down_proj.weight is missing" in msgs["missing"]
    assert str(tmp_path / "missing") in msgs["missing"]
    assert f"shape/model.safetensors: {k_proj} has shape (8, 64) but this model config needs (32, 64)" in msgs["shape"]
    assert "no *.safetensors" in msgs["empty"]
