"""The embedded engine: sampling parameters honoured, groups of n, and its logprobs equal
log_softmax of a full (teacher-forced) transformers forward of the same tokens."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "distributed"))
from hf_models import make_hf_model, model_config  # noqa: E402

from megatron_rl.rollout import EmbeddedEngine, SamplingParams  # noqa: E402


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf")
    make_hf_model("qwen2", seed=4).save_pretrained(path, safe_serialization=True)
    letters = lambda ids: "".join(chr(ord("a") + i % 26) for i in ids)  # noqa: E731  a toy tokenizer
    return EmbeddedEngine(model_config("qwen2"), hf_path=str(path), decode=letters, seed=0)


PROMPTS = [[5, 6, 7], [9, 10, 11, 12, 13], [1]]  # different lengths: left padding is exercised


def _teacher_forced_logprobs(model, prompt, response, temperature):
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].double() / temperature, -1)
    return [logp[len(prompt) - 1 + i, t].item() for i, t in enumerate(response)]


def test_greedy_is_deterministic_and_groups_are_adjacent(engine):
    params = SamplingParams(temperature=0.0, max_new_tokens=6)
    a = engine.generate(PROMPTS, params, n=2)
    b = engine.generate(PROMPTS, params, n=2)
    assert [s.response_ids for s in a.samples] == [s.response_ids for s in b.samples]
    groups = a.groups()
    assert [len(g) for g in groups] == [2, 2, 2]
    assert all(g[0].response_ids == g[1].response_ids and g[0].prompt_ids == PROMPTS[i] for i, g in enumerate(groups))
    assert all(len(s.response_ids) == 6 and s.finish_reason == "length" for s in a.samples)


@pytest.mark.parametrize("temperature", [0.0, 0.8, 1.3])
def test_logprobs_equal_a_teacher_forced_forward(engine, temperature):
    params = SamplingParams(temperature=temperature, max_new_tokens=7)
    for s in engine.generate(PROMPTS, params, n=2).samples:
        expected = _teacher_forced_logprobs(engine.model, s.prompt_ids, s.response_ids, temperature or 1.0)
        assert s.logprobs == pytest.approx(expected, abs=1e-4)


def test_stop_token_ids_and_stop_strings(engine):
    first = engine.generate(PROMPTS, SamplingParams(temperature=0.0, max_new_tokens=6)).samples
    stop_id = first[0].response_ids[2]
    out = engine.generate(PROMPTS[:1], SamplingParams(temperature=0.0, max_new_tokens=6, stop_token_ids=(stop_id,)))
    s = out.samples[0]
    assert s.response_ids == first[0].response_ids[: first[0].response_ids.index(stop_id) + 1]
    assert s.finish_reason == "stop"  # the stop token is kept: the policy learns to emit it

    text = engine.decode(first[1].response_ids)
    stop = text[2:4]  # spans the 3rd and 4th tokens
    out = engine.generate(PROMPTS[1:2], SamplingParams(temperature=0.0, max_new_tokens=6, stop=(stop,)))
    s = out.samples[0]
    assert stop in engine.decode(s.response_ids) and s.finish_reason == "stop"
    assert s.response_ids == first[1].response_ids[: len(s.response_ids)] and len(s.response_ids) <= 4


def test_sampling_is_seeded_and_top_k_one_is_greedy(engine):
    greedy = engine.generate(PROMPTS, SamplingParams(temperature=0.0, max_new_tokens=5)).samples
    top1 = engine.generate(PROMPTS, SamplingParams(temperature=1.0, top_k=1, max_new_tokens=5)).samples
    assert [s.response_ids for s in top1] == [s.response_ids for s in greedy]
    tiny_p = engine.generate(PROMPTS, SamplingParams(temperature=1.0, top_p=1e-6, max_new_tokens=5)).samples
    assert [s.response_ids for s in tiny_p] == [s.response_ids for s in greedy]
    many = engine.generate([[3, 4]], SamplingParams(temperature=1.5, max_new_tokens=5), n=16).samples
    assert len({tuple(s.response_ids) for s in many}) > 1  # sampling actually samples


def test_update_weights_by_hf_name(engine):
    w = engine.model.model.norm.weight.detach().clone()
    assert engine.update_weights([("model.norm.weight", w * 2)], version=3) == 1
    assert torch.equal(engine.model.model.norm.weight, w * 2) and engine.weight_version == 3
    assert engine.generate([[1]], SamplingParams(max_new_tokens=1)).samples[0].weight_version == 3
    engine.update_weights([("model.norm.weight", w)], version=0)
    with pytest.raises(KeyError, match="no weight named model.nope"):
        engine.update_weights([("model.nope", w)])
    with pytest.raises(ValueError, match="stop strings need a decode function"):
        EmbeddedEngine.generate(type("E", (), {"decode": None})(), [[1]], SamplingParams(stop=("x",)))
