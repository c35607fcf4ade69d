"""A real SGLang server on a GPU: launch (our launcher), greedy generation, weight sync through the
tensor and disk transports, and logprob parity with transformers after each sync.

How to run (in the Docker image, on a machine with a CUDA GPU):

    pytest tests/gpu/test_sglang_server_gpu.py -v

By default a tiny random Qwen2 checkpoint (2 layers, hidden 256, a byte-level BPE tokenizer trained
on three sentences: the server needs a tokenizer) is written to a temporary directory with
transformers; nothing is downloaded. To use a checkpoint of your own instead (a local HF directory with its tokenizer, e.g. Qwen2.5-0.5B):

    MEGATRON_RL_TINY_MODEL=/models/Qwen2.5-0.5B pytest tests/gpu/test_sglang_server_gpu.py -v

Skipped unless CUDA is available and the full SGLang server imports (`sglang.srt.entrypoints.
http_server` with its real dependencies, and `sgl_kernel`): the CPU dev environment installs
sglang with --no-deps, so it is skipped there. The server runs on GPU 0 with
`--mem-fraction-static 0.3 --disable-cuda-graph` and logs to pytest's tmp directory (the path is
in the failure message when it does not come up); the reference model runs in the test process on
the same GPU.

What is checked: greedy generation is deterministic and each prompt's n samples are adjacent and
equal; after perturbing the weights of a transformers copy of the model, the server's logprobs of
its own greedy responses differ from the copy's (the perturbation is visible), and after a sync
through the tensor transport (CUDA IPC, `/update_weights_from_tensor`) they equal the copy's
teacher-forced logprobs within bf16 tolerance; the same after a second perturbation synced through
the disk transport (`/update_weights_from_disk`). With the memory saver (`torch_memory_saver`
installed), releasing the server's memory frees GPU memory and resuming brings generation back.
"""
from __future__ import annotations

import importlib.util
import os
import socket

import pytest
import torch


def _skip_reason():
    if not torch.cuda.is_available():
        return "needs a CUDA device"
    if importlib.util.find_spec("sgl_kernel") is None:
        return "needs a full SGLang install (sgl_kernel is missing)"
    try:
        import sglang.srt.entrypoints.http_server  # noqa: F401  the server with its real dependencies
    except Exception as e:  # noqa: BLE001
        return f"needs a full SGLang install (import sglang.srt.entrypoints.http_server: {type(e).__name__}: {e})"
    return None


SKIP = _skip_reason()
pytestmark = pytest.mark.skipif(SKIP is not None, reason=SKIP or "")

PROMPTS = [[10, 11, 12, 13, 14], [20, 21, 22], [30, 31, 32, 33]]  # ids every vocabulary has
MAX_NEW = 12
TOL_MAX, TOL_MEAN = 0.25, 0.05  # |server - transformers| logprob, bf16 server vs fp32 reference
VISIBLE = 0.5  # a perturbation must move the mean gap at least this much


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tiny_checkpoint(path):
    """A random Qwen2 (bf16) and a byte-level BPE tokenizer (any text encodes: the server's warmup
    sends text), saved as an HF checkpoint."""
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")

    vocab_size = 512
    bpe = tokenizers.ByteLevelBPETokenizer()
    corpus = ["The capital city of France is Paris.", "Hello world, this is a tiny tokenizer for tests.",
              "0123456789 +-*/=()"] * 10
    bpe.train_from_iterator(corpus, vocab_size=vocab_size, min_frequency=1,
                            special_tokens=["<unk>", "<eos>", "<pad>"], show_progress=False)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, unk_token="<unk>",
                                                eos_token="<eos>", pad_token="<pad>")
    assert len(fast) <= vocab_size
    fast.save_pretrained(path)
    config = transformers.Qwen2Config(vocab_size=vocab_size, hidden_size=256, intermediate_size=512,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=1024, tie_word_embeddings=False, eos_token_id=1,
                                      bos_token_id=1, pad_token_id=2, rope_theta=10000.0)
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(config)
    with torch.no_grad():  # sharper than the 0.02-std init, so greedy choices are clear
        model.lm_head.weight.mul_(20.0)
    model.to(torch.bfloat16).save_pretrained(path, safe_serialization=True)
    return str(path)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    given = os.environ.get("MEGATRON_RL_TINY_MODEL")
    if given:
        if not os.path.isdir(given):
            pytest.fail(f"MEGATRON_RL_TINY_MODEL={given} is not a directory (a local HF checkpoint with its tokenizer)")
        return given
    return _tiny_checkpoint(tmp_path_factory.mktemp("tiny-qwen2"))


def _rollout_config(**sglang):
    from megatron_rl.config.schema import RolloutConfig, SGLangConfig

    base = dict(base_port=_free_port(), tp_size=1, mem_fraction=0.3, enable_memory_saver=False,
                health_timeout_s=900, extra_args=["--disable-cuda-graph"], max_concurrency=64, max_restarts=0)
    return RolloutConfig(engine="sglang", bucket_mb=64, sglang=SGLangConfig(**{**base, **sglang}))


@pytest.fixture(scope="module")
def engine(model_path, tmp_path_factory):
    from megatron_rl.rollout.sglang_engine import SGLangEngine

    out = tmp_path_factory.mktemp("run")
    eng = SGLangEngine.from_config(_rollout_config(), model_path, run_seed=0, output_dir=str(out))
    yield eng
    eng.shutdown()


@pytest.fixture(scope="module")
def reference(model_path):
    """The checkpoint in transformers on the GPU, fp32 (the trainer's side)."""
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    return model.to("cuda").eval().requires_grad_(False)


def _greedy(**kw):
    from megatron_rl.rollout.types import SamplingParams

    return SamplingParams(temperature=0.0, max_new_tokens=MAX_NEW, **kw)


@torch.no_grad()
def _gap(model, samples) -> tuple[float, float]:
    """(max, mean) |server logprob - teacher-forced transformers logprob| over the response tokens;
    greedy logprobs are log softmax of the logits at temperature 1."""
    diffs = []
    for s in samples:
        ids = torch.tensor([s.prompt_ids + s.response_ids], device="cuda")
        logp = torch.log_softmax(model(ids).logits[0].float(), -1)
        n = len(s.prompt_ids)
        ref = logp[n - 1:n - 1 + len(s.response_ids)].gather(-1, torch.tensor(s.response_ids, device="cuda")[:, None])
        diffs.append((ref[:, 0].cpu() - torch.tensor(s.logprobs)).abs())
    d = torch.cat(diffs)
    return d.max().item(), d.mean().item()


@torch.no_grad()
def _perturb(model, seed: int) -> list:
    """Change every weight noticeably (in place); returns the HF-named tensors to sync, in bf16
    as a trainer sends them (the reference keeps fp32 copies of the same bf16 values)."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    named = []
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=g, device="cuda") * (p.float().std() + 1e-3) * 0.25
        p.copy_((p + noise).to(torch.bfloat16).float())  # representable in bf16: the server gets exactly these
        named.append((name, p.detach().to(torch.bfloat16)))
    return named


def test_greedy_generation_is_deterministic_and_grouped(engine):
    first = engine.generate(PROMPTS, _greedy(), n=3)
    again = engine.generate(PROMPTS, _greedy(), n=3)
    assert [s.prompt_index for s in first.samples] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert [s.response_ids for s in first.samples] == [s.response_ids for s in again.samples]
    for group in first.groups():
        assert all(s.response_ids == group[0].response_ids for s in group)  # greedy: n equal samples
    for s in first.samples:
        assert 1 <= len(s.response_ids) <= MAX_NEW and len(s.logprobs) == len(s.response_ids)
        assert s.finish_reason in ("stop", "length") and (s.finish_reason == "stop" or len(s.response_ids) == MAX_NEW)
        assert all(lp <= 1e-4 for lp in s.logprobs) and s.weight_version == 0


def test_logprobs_match_transformers_before_and_after_tensor_and_disk_syncs(engine, reference, tmp_path):
    from megatron_rl.models.hf_io import bucketize
    from megatron_rl.weight_sync.factory import build_weight_sync

    gap = _gap(reference, engine.generate(PROMPTS, _greedy()).samples)
    assert gap[0] < TOL_MAX and gap[1] < TOL_MEAN, f"the checkpoint itself: gap {gap}"

    # tensor transport (colocated: CUDA IPC handles to the trainer's GPU tensors)
    named = _perturb(reference, seed=1)
    before = _gap(reference, engine.generate(PROMPTS, _greedy()).samples)
    assert before[1] > VISIBLE, f"the perturbation does not show in the logprobs: gap {before}"
    tensor = build_weight_sync(_rollout_config(), engine)
    stats = tensor.push(bucketize(iter(named), tensor.bucket_bytes), version=1)
    assert stats["tensors"] == len(named) and engine.weight_version == 1
    samples = engine.generate(PROMPTS, _greedy()).samples
    assert {s.weight_version for s in samples} == {1}
    after = _gap(reference, samples)
    assert after[0] < TOL_MAX and after[1] < TOL_MEAN, f"after the tensor sync: gap {after} (before {before})"

    # disk transport (safetensors under rollout.sglang.disk_root, /update_weights_from_disk)
    named = _perturb(reference, seed=2)
    disk = build_weight_sync(_rollout_config().model_copy(update={"weight_sync": "disk"}), engine,
                             output_dir=str(tmp_path))
    stats = disk.push(bucketize(iter(named), 64 << 20), version=2)
    assert stats["path"] == str((tmp_path / "weights" / "v2").resolve())
    samples = engine.generate(PROMPTS, _greedy()).samples
    assert {s.weight_version for s in samples} == {2}
    after = _gap(reference, samples)
    assert after[0] < TOL_MAX and after[1] < TOL_MEAN, f"after the disk sync: gap {after}"


def test_release_frees_gpu_memory_and_resume_brings_generation_back(model_path, tmp_path):
    if importlib.util.find_spec("torch_memory_saver") is None:
        pytest.skip("needs torch_memory_saver (--enable-memory-saver)")
    from megatron_rl.rollout.sglang_engine import SGLangEngine

    eng = SGLangEngine.from_config(_rollout_config(enable_memory_saver=True), model_path, output_dir=str(tmp_path))
    try:
        want = [s.response_ids for s in eng.generate(PROMPTS, _greedy()).samples]
        free_before = torch.cuda.mem_get_info()[0]
        eng.release_memory()
        freed = torch.cuda.mem_get_info()[0] - free_before
        total = torch.cuda.mem_get_info()[1]
        assert freed > 0.2 * total, f"release freed {freed / 2**30:.1f} GiB of {total / 2**30:.0f} (mem fraction 0.3)"
        eng.resume_memory()
        assert [s.response_ids for s in eng.generate(PROMPTS, _greedy()).samples] == want
    finally:
        eng.shutdown()
