"""HF -> Megatron -> HF: logits equal transformers' at TP=1, TP=2, PP=2, PP=2 x VPP=2, TP=2 x PP=2; the exported
checkpoint is the original one tensor for tensor."""
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from dist_harness import run_ranks
from hf_models import make_hf_model, model_config


def _logits_worker(hf_dir, arch, layouts, input_ids, export_root):
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from megatron_rl.config.schema import ParallelConfig
    from megatron_rl.models.builder import build_model
    from megatron_rl.models.forward import run_pipeline
    from megatron_rl.models.hf_io import iter_hf_buckets, load_hf_weights, save_hf
    from megatron_rl.parallel import init_parallel

    model = model_config(arch)
    out = {}
    for tp, pp, *vpp in layouts:
        parallel = ParallelConfig(tensor=tp, pipeline=pp, virtual_pipeline=vpp[0] if vpp else None)
        init_parallel(parallel, seed=7)
        chunks = build_model("actor", model, parallel, perform_initialization=False)
        load_hf_weights(chunks, hf_dir, model)

        def gather_logits(logits, mb):
            shards = [torch.empty_like(logits) for _ in range(tp)]
            dist.all_gather(shards, logits.contiguous(), group=ps.get_tensor_model_parallel_group())
            return torch.zeros(()), {"logits": torch.cat(shards, -1)[..., : model.vocab_size]}

        micro = [{"input_ids": input_ids[:2]}, {"input_ids": input_ids[2:]}]
        res = run_pipeline(chunks, micro, gather_logits, forward_only=True)
        out[(tp, pp, *vpp)] = torch.cat([r["logits"] for r in res], 0)
        buckets = list(iter_hf_buckets(chunks, model, bucket_bytes=40_000))
        out[("buckets", tp, pp, *vpp)] = [[(n, t.numel() * t.element_size()) for n, t in b] for b in buckets]
        if export_root:
            save_hf(chunks, f"{export_root}/{'-'.join(map(str, (tp, pp, *vpp)))}", model)
    return out


CASES = [
    ("qwen2", [(1, 1), (2, 1), (1, 2), (1, 2, 2)], 2),  # (tp, pp[, virtual pp])
    ("qwen2", [(2, 2)], 4),
    ("llama", [(2, 1), (1, 2)], 2),
    ("qwen3", [(2, 1)], 2),
]


@pytest.mark.parametrize("arch,layouts,world", CASES, ids=[f"{a}-{w}ranks" for a, _, w in CASES])
def test_logits_match_transformers_and_export_round_trips(tmp_path, arch, layouts, world):
    import transformers

    hf = make_hf_model(arch, seed=torch.randint(0, 2**31, ()).item())
    hf.save_pretrained(tmp_path / "hf", safe_serialization=True)
    ids = torch.randint(0, model_config(arch).vocab_size, (4, 11))
    with torch.no_grad():
        expected = hf(ids).logits.double()
    results = run_ranks(_logits_worker, world, str(tmp_path / "hf"), arch, layouts, ids, str(tmp_path / "out"))
    for layout in layouts:
        for rank, res in enumerate(results):
            got = res[layout].double()
            assert got.shape == expected.shape
            err = (got - expected).abs().max().item()
            assert err < 2e-4, f"{arch} tp,pp={layout} rank {rank}: max |logit diff| {err:.2e}"
        index = json.loads((tmp_path / "out" / "-".join(map(str, layout)) / "model.safetensors.index.json").read_text())
        saved = load_file(str(tmp_path / "hf" / "model.safetensors"))  # what save_pretrained wrote
        assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in saved.values())
        exported = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "-".join(map(str, layout))).eval()
        original = hf.state_dict()
        for name, tensor in exported.state_dict().items():
            assert torch.equal(tensor, original[name]), f"{name} changed in the round trip at {layout}"
        with torch.no_grad():
            assert torch.equal(exported(ids).logits, hf(ids).logits)
        # weight-sync stream: bounded buckets; the pipeline stages together cover every HF tensor once
        streamed = set()
        for res in results:
            buckets = res[("buckets", *layout)]
            assert all(sum(size for _, size in b) <= 40_000 or len(b) == 1 for b in buckets)
            streamed |= {name for b in buckets for name, _ in b}
        with safe_open(str(tmp_path / "hf" / "model.safetensors"), framework="pt") as f:
            assert streamed == set(f.keys())  # tied models: no lm_head.weight, as save_pretrained writes
