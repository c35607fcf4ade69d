"""RewardRunner: weighted sources in worker processes; failures and timeouts never stop a batch."""
import logging
import time

import pytest

from megatron_rl.config.schema import RewardConfig, RewardSource
from megatron_rl.rewards import (
    FormatReward, MathReward, PythonFunctionReward, RewardInput, RewardRunner, build_reward_runner,
)

MOD = "reward_fns_for_tests"
TIMEOUT = 0.5
GOOD = "<think>yes, add</think><answer>\\boxed{4}</answer>"


def _inp(response, answer="4", **metadata):
    return RewardInput(prompt="What is 2+2?", response=response, answer=answer, metadata=metadata)


@pytest.fixture(scope="module")
def runner():
    """math (weight 2) + a misbehaving user function (weight 1), two workers, 0.5 s per call."""
    r = RewardRunner(
        [("math", 2.0, MathReward()), ("python", 1.0, PythonFunctionReward(f"{MOD}:misbehaves"))],
        timeout_s=TIMEOUT, workers=2, kill_grace_s=0.5,
    )
    yield r
    r.close()


def test_weights_combine_sources():
    cfg = RewardConfig(
        sources=[RewardSource(type="math", weight=2.0), RewardSource(type="format", weight=0.5),
                 RewardSource(type="python", path=f"{MOD}:says_yes", weight=-1.0)],
        workers=1,
    )
    with build_reward_runner(cfg) as r:
        res = r.score([_inp(GOOD), _inp("\\boxed{5}"), _inp("<think>no</think><answer>4</answer>")])
    # 2*math + 0.5*format - says_yes
    assert res.scores == [2.0 + 0.5 - 1.0, 0.0, 2.0 + 0.5]
    assert res.failed == [False, False, False] and res.errors == [None, None, None]
    assert res.source_scores == {"math": [1.0, 0.0, 1.0], "format": [1.0, 0.0, 1.0], "python": [1.0, 0.0, 0.0]}
    assert res.metrics["reward/math_mean"] == pytest.approx(2 / 3)
    assert res.metrics["reward/python_mean"] == pytest.approx(1 / 3)
    assert res.metrics["reward/mean"] == pytest.approx(4.0 / 3)
    assert res.metrics["reward/failed"] == 0 and res.metrics["reward/timeouts"] == 0


def test_a_raising_function_fails_only_its_sample(runner, caplog):
    inputs = [_inp(GOOD) for _ in range(5)] + [_inp("boom \\boxed{4}")] + [_inp("\\boxed{3}")]
    with caplog.at_level(logging.WARNING, logger="megatron_rl.rewards"):
        res = runner.score(inputs)
    assert res.failed == [False] * 5 + [True, False]
    assert res.scores == [3.0] * 5 + [2.0, 1.0]  # the failed source contributes 0, math still counts
    assert res.errors[5] == "python: ValueError: boom in the response"
    assert res.metrics["reward/failed"] == 1 and res.metrics["reward/errors"] == 1
    assert res.metrics["reward/python_failed"] == 1 and res.metrics["reward/math_failed"] == 0
    lines = [r.getMessage() for r in caplog.records if r.name == "megatron_rl.rewards"]
    assert lines == ["reward: 1 of 7 samples failed (python: 1 raised, first: ValueError: boom in the response)"]


def test_missing_gold_answer_is_a_failed_math_call(runner):
    res = runner.score([_inp(GOOD, answer=None), _inp(GOOD)])
    assert res.failed == [True, False]
    assert res.scores == [1.0, 3.0]
    assert res.errors[0].startswith("math: ValueError: math reward needs a gold answer")


def test_bad_return_values_fail_the_sample(runner):
    res = runner.score([_inp("text"), _inp("nan"), _inp(GOOD)])
    assert res.failed == [True, True, False]
    assert "expected a float or bool" in res.errors[0] and "finite" in res.errors[1]


def test_a_hanging_function_times_out_and_the_runner_goes_on(runner, caplog):
    inputs = [_inp(GOOD) for _ in range(6)] + [_inp("hang \\boxed{4}")]
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="megatron_rl.rewards"):
        res = runner.score(inputs)
    elapsed = time.monotonic() - t0
    assert elapsed < 3.0, elapsed  # not 60 s
    assert res.failed == [False] * 6 + [True]
    assert res.scores[-1] == 2.0 and res.errors[-1] == f"python: timed out after {TIMEOUT:g} s"
    assert res.metrics["reward/timeouts"] == 1
    assert res.metrics["reward/worker_restarts"] == 0  # interrupted inside the worker
    assert any("1 timed out" in r.getMessage() for r in caplog.records)
    again = runner.score([_inp(GOOD), _inp("\\boxed{1}")])
    assert again.scores == [3.0, 1.0] and again.failed == [False, False]


def test_an_uninterruptible_function_gets_its_worker_replaced(runner):
    inputs = [_inp("stubborn")] + [_inp(GOOD) for _ in range(8)]
    t0 = time.monotonic()
    res = runner.score(inputs)
    # the stubborn call would hold its worker 60 s and more; the bound leaves room for the
    # replacement worker's start-up on a loaded 2-core machine (it failed at 5 s under load)
    assert time.monotonic() - t0 < 20.0
    assert res.failed == [True] + [False] * 8
    assert "timed out" in res.errors[0] and "worker killed" in res.errors[0]
    assert res.scores[1:] == [3.0] * 8  # the rest of the killed worker's chunk was re-run
    assert res.metrics["reward/timeouts"] == 1 and res.metrics["reward/worker_restarts"] == 1
    again = runner.score([_inp(GOOD) for _ in range(4)])
    assert again.scores == [3.0] * 4 and not any(again.failed)


def test_a_dying_worker_fails_its_call_and_is_replaced(runner):
    res = runner.score([_inp("die"), _inp(GOOD), _inp(GOOD)])
    assert res.failed == [True, False, False]
    assert "worker died (exit code 3)" in res.errors[0]
    assert res.metrics["reward/worker_restarts"] == 1
    assert runner.score([_inp(GOOD)]).scores == [3.0]


def test_unpicklable_metadata_fails_only_that_sample(runner):
    res = runner.score([_inp(GOOD), _inp(GOOD, handle=lambda: None), _inp(GOOD)])
    assert res.failed == [False, True, False]
    assert "cannot send the sample" in res.errors[1]


def test_empty_batch(runner):
    res = runner.score([])
    assert res.scores == [] and res.failed == [] and res.metrics["reward/failed"] == 0


def test_close_stops_the_workers():
    r = RewardRunner([("format", 1.0, FormatReward())], timeout_s=1.0, workers=2)
    assert r.score([_inp(GOOD)]).scores == [1.0]
    procs = [w.proc for w in r._workers]
    r.close()
    r.close()  # idempotent
    assert all(p.poll() is not None for p in procs)
    with pytest.raises(RuntimeError, match="after close"):
        r.score([_inp(GOOD)])


def test_a_source_that_cannot_start_in_a_worker_raises_one_line():
    from reward_fns_for_tests import FailsInWorker

    with RewardRunner([("x", 1.0, FailsInWorker())], workers=1) as r:
        with pytest.raises(RuntimeError, match="reward worker could not start: RuntimeError: this source cannot"):
            r.score([_inp(GOOD)])


def test_workers_that_never_start_raise_instead_of_waiting_forever():
    from reward_fns_for_tests import SlowToStart

    t0 = time.monotonic()
    with RewardRunner([("x", 1.0, SlowToStart())], workers=1, start_timeout_s=0.5) as r:
        with pytest.raises(RuntimeError, match="no reward worker started within 0.5 s"):
            r.score([_inp(GOOD)])
    assert time.monotonic() - t0 < 5.0
