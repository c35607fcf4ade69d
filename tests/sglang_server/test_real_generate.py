"""Generation against SGLang's real server on the CPU (fp32), launched by our launcher: n samples,
max new tokens, stop token ids, stop strings, logprobs (against an fp64 transformers reference) and
finish reasons; colocated placement on the CPU; an unreachable URL."""
from __future__ import annotations

import logging
import time

import pytest

from megatron_rl.rollout.types import SamplingParams
from real_server_lib import launch_engine, max_gap, reference_logprobs, rollout_config

PROMPTS = [[5, 6, 7, 8], [9, 10, 11], [20, 21, 22, 23, 24]]
FP32_TOL = 1e-4  # |server logprob - fp64 transformers| in fp32; measured: ~1e-6


@pytest.fixture(scope="module")
def engine(sglang_python, tiny_model, server_logs, caplog_module):
    eng = launch_engine(tiny_model[0], server_logs / "generate")
    yield eng
    eng.shutdown()


@pytest.fixture(scope="module")
def caplog_module():
    """Records the engine's INFO lines while the module's server starts (the CPU release line)."""
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logger = logging.getLogger("megatron_rl.rollout.sglang_engine")
    handler, level = Keep(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_n_samples_logprobs_and_length_finish(engine, tiny_model):
    batch = engine.generate(PROMPTS, SamplingParams(temperature=1.0, max_new_tokens=7), n=4)
    assert [s.prompt_index for s in batch.samples] == [0] * 4 + [1] * 4 + [2] * 4
    for s in batch.samples:
        assert s.prompt_ids == PROMPTS[s.prompt_index] and s.weight_version == 0
        assert len(s.logprobs) == len(s.response_ids) and 1 <= len(s.response_ids) <= 7
        assert s.finish_reason in ("stop", "length")
        assert (s.finish_reason == "length") == (len(s.response_ids) == 7)
        assert all(0 <= t < 64 for t in s.response_ids)
    # four samples at temperature 1 of a peaked model: not all alike (the sampler is real)
    assert len({tuple(s.response_ids) for s in batch.samples}) > 3
    gap = max_gap(batch.samples, reference_logprobs(tiny_model[0], batch.samples))
    assert gap < FP32_TOL, f"server logprobs vs fp64 transformers: {gap:.2e}"


def test_greedy_is_deterministic_and_max_new_tokens_is_exact(engine):
    params = SamplingParams(temperature=0.0, max_new_tokens=5)
    first = engine.generate(PROMPTS, params, n=2).samples
    again = engine.generate(PROMPTS, params, n=2).samples
    assert [s.response_ids for s in first] == [s.response_ids for s in again]
    for a, b in zip(first[::2], first[1::2]):
        assert a.response_ids == b.response_ids  # greedy: the group's samples agree
    assert all(len(s.response_ids) <= 5 for s in first)


def test_stop_token_ids_end_the_response_and_are_kept(engine):
    greedy = SamplingParams(temperature=0.0, max_new_tokens=12)
    free = engine.generate([PROMPTS[2]], greedy).samples[0]
    assert len(free.response_ids) >= 4, free
    stop_id = free.response_ids[2]
    cut = free.response_ids.index(stop_id) + 1
    stopped = engine.generate([PROMPTS[2]], SamplingParams(temperature=0.0, max_new_tokens=12,
                                                           stop_token_ids=(stop_id,))).samples[0]
    assert stopped.response_ids == free.response_ids[:cut]  # the stop token is kept (no_stop_trim)
    assert stopped.finish_reason == "stop"
    assert stopped.logprobs == pytest.approx(free.logprobs[:cut], abs=1e-5)


def test_stop_strings_end_the_response(engine, tiny_model):
    from megatron_rl.data.synthetic import build_char_tokenizer

    tok = build_char_tokenizer()
    greedy = SamplingParams(temperature=0.0, max_new_tokens=12)
    free = engine.generate([PROMPTS[1]], greedy).samples[0]
    text = tok.decode(free.response_ids)
    assert len(free.response_ids) >= 4 and len(text) == len(free.response_ids), (free, text)
    stop = text[2:4]  # two characters: the match spans tokens
    end = text.index(stop) + len(stop)
    stopped = engine.generate([PROMPTS[1]], SamplingParams(temperature=0.0, max_new_tokens=12,
                                                           stop=(stop,))).samples[0]
    assert stopped.finish_reason == "stop"
    assert tok.decode(stopped.response_ids) == text[:end]


def test_colocated_on_cpu_skips_memory_release_and_the_server_keeps_serving(engine, caplog_module):
    assert engine.releases_memory is False
    assert any("skips release/resume" in m for m in caplog_module), caplog_module
    engine.release_memory()  # a no-op: calling the server's release would kill a server without the saver
    engine.resume_memory()
    assert engine.health()
    info = engine.client.server_info(engine.server_urls[0])
    assert info["device"] == "cpu" and info["enable_memory_saver"] is False
    assert info["attention_backend"] == "torch_native"


def test_unreachable_url_fails_in_one_line_quickly(tmp_path):
    from megatron_rl.rollout.sglang_engine import SGLangEngine
    from megatron_rl.rollout.sglang_launch import SGLangLaunchError
    from real_server_lib import free_port

    cfg = rollout_config(urls=[f"http://127.0.0.1:{free_port()}"], health_timeout_s=3).sglang
    start = time.monotonic()
    with pytest.raises(SGLangLaunchError) as err:
        SGLangEngine(cfg)
    message = str(err.value)
    assert "\n" not in message and "not healthy after 3s" in message and "connection refused" in message
    assert "check rollout.sglang.urls" in message
    assert time.monotonic() - start < 15


def test_a_weight_group_the_server_refuses_fails_at_once_and_fresh_names_never_clash(engine):
    """A server keeps a weight-update group's name until it is destroyed, so a trainer that died with
    its group formed leaves the name taken. Our side of the next group's rendezvous used to wait out
    its whole timeout (600 s) for a server that had already refused; and every transport used the
    same default name, so a restarted trainer could never form its group on those servers again."""
    import subprocess
    import sys

    from megatron_rl.rollout.sglang_client import SGLangError
    from megatron_rl.weight_sync.nccl import NcclWeightSync

    url = engine.server_urls[0]
    dead_trainer = ("from megatron_rl.rollout.sglang_client import SGLangClient\n"
                    "from megatron_rl.weight_sync.nccl import NcclWeightSync\n"
                    f"NcclWeightSync(SGLangClient([{url!r}]), backend='gloo', master_address='127.0.0.1', "
                    "group_name='clash').connect()\n"
                    "import os; os._exit(0)  # dies with its group formed\n")
    subprocess.run([sys.executable, "-c", dead_trainer], check=True, timeout=120)
    again = NcclWeightSync(engine.client, backend="gloo", master_address="127.0.0.1", group_name="clash",
                           timeout_s=300)
    start = time.monotonic()
    with pytest.raises(SGLangError) as err:
        again.connect()
    assert time.monotonic() - start < 30
    message = str(err.value)
    assert "\n" not in message and "/init_weights_update_group" in message
    assert "group name has already been created" in message
    # a transport's default name is its own: a restarted trainer forms its group on the same servers
    fresh = NcclWeightSync(engine.client, backend="gloo", master_address="127.0.0.1")
    fresh.connect()
    fresh.disconnect()
