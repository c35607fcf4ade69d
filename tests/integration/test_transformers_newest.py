"""Beyond the lock: the newest transformers a user may install next to megatron-rl (setup.py allows
it). transformers 5.25 imports the Hugging Face kernel hub package `kernels` (0.19) and renamed the
forward's KV-cache argument `past_key_values` -> `cache` (the old name warns, deprecated for
removal). Its release and what it needs go into a scratch folder on PYTHONPATH, ahead of the locked
ones; everything else is the locked environment."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NEWEST = ["transformers==5.25.0", "huggingface_hub==2.5.0", "httpx2==2.17.0", "httpcore2==2.17.0",
          "truststore==0.10.5", "kernels==0.19.1"]


@pytest.fixture(scope="module")
def newest(tmp_path_factory):
    target = tmp_path_factory.mktemp("transformers-newest")
    out = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), *NEWEST],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return {**os.environ, "PYTHONPATH": str(target)}


def test_newest_transformers_imports_the_hub_kernels_at_the_root(newest):
    """The failure users met on 2026-12-07: at the repository root transformers' `from kernels import
    CUDAProperties` found our kernels/ folder."""
    out = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import transformers, kernels
        from transformers.integrations import hub_kernels
        from transformers.utils.import_utils import is_kernels_available
        print(transformers.__version__, is_kernels_available(), hasattr(hub_kernels, "LayerRepository"), kernels.__file__)
    """)], cwd=ROOT, env=newest, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    version, available, imported, where = out.stdout.split()
    assert (version, available, imported) == ("5.25.0", "True", "True")
    assert Path(newest["PYTHONPATH"]) in Path(where).parents


GENERATE = textwrap.dedent("""
    import json, sys, transformers
    from megatron_rl.config.schema import ModelConfig
    from megatron_rl.rollout.embedded import EmbeddedEngine, cache_argument
    from megatron_rl.rollout.types import SamplingParams

    model = ModelConfig.model_validate_json(open(sys.argv[2]).read())
    engine = EmbeddedEngine(model, hf_path=sys.argv[1], seed=3)
    prompts = [[5, 6, 7], [8, 9], [10, 11, 12, 13]]  # ragged: left padding and positions matter
    rows = []
    for params in (SamplingParams(temperature=0.0, max_new_tokens=6), SamplingParams(temperature=1.0, max_new_tokens=6)):
        rows += [(s.response_ids, s.logprobs) for s in engine.generate(prompts, params, n=2).samples]
    print(json.dumps({"transformers": transformers.__version__, "cache": cache_argument(engine.model), "rows": rows}))
""")


def test_embedded_engine_is_the_same_on_the_locked_and_the_newest_transformers(newest, tmp_path):
    import torch
    import transformers

    from megatron_rl.config.schema import ModelConfig
    from megatron_rl.models.hf_mapping import hf_config_dict

    model = ModelConfig(architecture="qwen2", num_layers=2, hidden_size=64, ffn_hidden_size=96, num_attention_heads=4,
                        num_query_groups=2, vocab_size=96, tie_word_embeddings=False, rope_theta=10000.0,
                        max_position_embeddings=64, rms_norm_eps=1e-6, dtype="fp32")
    config = transformers.AutoConfig.for_model(**{k: v for k, v in hf_config_dict(model).items() if k != "torch_dtype"})
    torch.manual_seed(0)
    transformers.Qwen2ForCausalLM(config).save_pretrained(tmp_path / "hf", safe_serialization=True)
    (tmp_path / "generate.py").write_text(GENERATE)
    (tmp_path / "model.json").write_text(model.model_dump_json())

    runs = {}
    for name, env in (("locked", dict(os.environ)), ("newest", newest)):
        out = subprocess.run([sys.executable, str(tmp_path / "generate.py"), str(tmp_path / "hf"), str(tmp_path / "model.json")], cwd=tmp_path,
                             env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        assert "deprecated" not in out.stderr.lower(), f"{name}: {out.stderr[-2000:]}"
        runs[name] = json.loads(out.stdout.splitlines()[-1])
    assert (runs["locked"]["transformers"], runs["locked"]["cache"]) == ("5.19.0", "past_key_values")
    assert (runs["newest"]["transformers"], runs["newest"]["cache"]) == ("5.25.0", "cache")
    # the same tokens (greedy and seeded sampling) and logprobs through either cache API
    for (tokens_a, lp_a), (tokens_b, lp_b) in zip(runs["locked"]["rows"], runs["newest"]["rows"], strict=True):
        assert tokens_a == tokens_b and len(tokens_a) == 6
        assert max(abs(a - b) for a, b in zip(lp_a, lp_b)) < 1e-5
