"""Remote reward source: a real local HTTP server, batches, timeouts, retries, failures end to end."""
import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from megatron_rl.config.errors import ConfigError
from megatron_rl.config.schema import RewardConfig, RewardSource
from megatron_rl.rewards import RemoteReward, RewardInput, build_reward_functions, build_reward_runner
from megatron_rl.rewards.remote import RemoteRewardError


def _expected(sample):
    """What the test server scores: the response's length, +0.5 when truncated (recomputed here)."""
    return len(sample["response"]) + (0.5 if sample["finish_reason"] == "length" else 0.0)


class _Handler(BaseHTTPRequestHandler):
    """POST /score scores; /sleep waits 5 s; /flaky fails twice with 503; /bad is a 400; /nulls
    leaves odd samples unscored; /short returns one score too few; /notjson replies with text."""

    def log_message(self, *args):  # keep pytest's output clean
        pass

    def do_POST(self):
        server = self.server
        samples = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["samples"]
        with server.lock:
            server.requests.append((self.path, len(samples)))
            hits = sum(p == self.path for p, _ in server.requests)
        scores = [_expected(s) for s in samples]
        if self.path == "/sleep":
            time.sleep(5)
        if self.path == "/flaky" and hits <= 2:
            return self._reply(503, {"error": "warming up"})
        if self.path == "/bad":
            return self._reply(400, {"error": "missing field 'foo'"})
        if self.path == "/notjson":
            return self._reply(200, None, raw=b"<html>oops</html>")
        if self.path == "/nulls":
            errors = [None if k % 2 == 0 else f"cannot score sample {k}" for k in range(len(samples))]
            return self._reply(200, {"scores": [s if e is None else None for s, e in zip(scores, errors)],
                                     "errors": errors})
        if self.path == "/short":
            scores = scores[:-1]
        self._reply(200, {"scores": scores})

    def _reply(self, code, body, raw=None):
        data = raw if raw is not None else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout tests)
            pass


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.lock = threading.Lock()
    srv.requests = []
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


def _dead_port():
    with socket.socket() as s:  # bound, never listening, closed: connections are refused
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _samples(n):
    return [RewardInput(prompt="p", response="r" * (k + 1), answer=str(k),
                        finish_reason="length" if k % 3 == 0 else "stop", metadata={"k": k}) for k in range(n)]


def _want(inputs):
    return [_expected({"response": x.response, "finish_reason": x.finish_reason}) for x in inputs]


def test_batches_through_build_reward_runner(server):
    cfg = RewardConfig(sources=[RewardSource(type="remote", path=server.url + "/score", batch_size=3, weight=2.0),
                                RewardSource(type="format", weight=1.0)], workers=2)
    inputs = _samples(7)
    with build_reward_runner(cfg) as runner:
        res = runner.score(inputs)
    want = _want(inputs)
    assert res.source_scores["remote"] == want
    assert res.scores == [2.0 * w for w in want]  # format scores 0 on these responses
    assert not any(res.failed) and res.metrics["reward/failed"] == 0
    assert sorted(n for _, n in server.requests) == [1, 3, 3]  # one request per chunk of batch_size


def test_metadata_reaches_the_server_and_odd_values_are_stringified(server):
    import numpy as np

    seen = {}

    class Recorder(_Handler):
        def do_POST(self):
            seen.update(json.loads(self.rfile.read(int(self.headers["Content-Length"])))["samples"][0])
            self._reply(200, {"scores": [1]})

    server.RequestHandlerClass = Recorder
    inp = RewardInput(prompt="q", response="a", answer=None, metadata={"arr": np.arange(3), "obj": object})
    assert RemoteReward(server.url).score_batch([inp]) == [1.0]
    assert seen == {"prompt": "q", "response": "a", "answer": None, "finish_reason": "stop",
                    "metadata": {"arr": [0, 1, 2], "obj": "<class 'object'>"}}


def test_a_slow_server_times_out_without_retrying(server):
    reward = RemoteReward(server.url + "/sleep", request_timeout_s=0.5, retries=2, backoff_s=0.05)
    t0 = time.monotonic()
    with pytest.raises(RemoteRewardError, match=r"no reply from .*/sleep within 0.5 s"):
        reward.score_batch(_samples(2))
    assert time.monotonic() - t0 < 2.0
    assert server.requests == [("/sleep", 2)]  # a timeout is not retried


def test_5xx_is_retried_with_backoff_then_answers(server):
    reward = RemoteReward(server.url + "/flaky", retries=2, backoff_s=0.1)
    inputs = _samples(4)
    t0 = time.monotonic()
    assert reward.score_batch(inputs) == _want(inputs)
    assert time.monotonic() - t0 >= 0.1 + 0.2  # slept 0.1 s, then 0.2 s
    assert server.requests == [("/flaky", 4)] * 3


def test_5xx_gives_up_after_the_retries(server):
    reward = RemoteReward(server.url + "/flaky", retries=1, backoff_s=0.01)
    with pytest.raises(RemoteRewardError, match=r"HTTP 503 .*warming up.*\(after 2 attempts\)"):
        reward.score_batch(_samples(1))
    assert len(server.requests) == 2


def test_4xx_is_not_retried(server):
    reward = RemoteReward(server.url + "/bad", retries=3, backoff_s=0.01)
    with pytest.raises(RemoteRewardError, match=r"HTTP 400 from .*/bad: .*missing field 'foo'"):
        reward.score_batch(_samples(2))
    assert server.requests == [("/bad", 2)]


def test_connection_refused_is_retried_then_fails():
    reward = RemoteReward(f"http://127.0.0.1:{_dead_port()}/score", retries=2, backoff_s=0.05)
    t0 = time.monotonic()
    with pytest.raises(RemoteRewardError, match=r"cannot reach .*Connection refused.*\(after 3 attempts\)"):
        reward.score_batch(_samples(1))
    assert time.monotonic() - t0 >= 0.05 + 0.1


def test_bad_replies(server):
    with pytest.raises(RemoteRewardError, match="replied with 2 scores for 3 samples"):
        RemoteReward(server.url + "/short").score_batch(_samples(3))
    with pytest.raises(RemoteRewardError, match="invalid JSON: <html>oops</html>"):
        RemoteReward(server.url + "/notjson").score_batch(_samples(1))
    out = RemoteReward(server.url + "/nulls").score_batch(_samples(3))
    assert out[0] == 1.5 and out[2] == 3.0
    assert isinstance(out[1], RemoteRewardError) and "cannot score sample 1" in str(out[1])


def test_failures_through_the_runner_are_counted_per_sample(server, caplog):
    """A dead server, a 4xx and a server that leaves samples unscored: those samples fail, the run goes
    on, and reward/failed counts them."""
    dead = f"http://127.0.0.1:{_dead_port()}/score"
    cfg = RewardConfig(sources=[RewardSource(type="remote", path=dead, retries=0, batch_size=4),
                                RewardSource(type="remote", path=server.url + "/nulls", batch_size=2),
                                RewardSource(type="format")], workers=2)
    inputs = _samples(5)
    with caplog.at_level(logging.WARNING, logger="megatron_rl.rewards"), build_reward_runner(cfg) as runner:
        res = runner.score(inputs)
    assert res.failed == [True] * 5 and res.metrics["reward/failed"] == 5
    assert res.metrics["reward/remote_failed"] == 5 and res.metrics["reward/errors"] == 5 + 2
    # /nulls: in each request of 2, the second sample is unscored
    want = _want(inputs)
    assert res.source_scores["remote_1"] == [want[0], 0.0, want[2], 0.0, want[4]]
    assert res.metrics["reward/remote_1_failed"] == 2
    assert res.errors[0].startswith("remote: RemoteRewardError: cannot reach http://127.0.0.1:")
    assert "Connection refused" in res.errors[0]
    lines = [r.getMessage() for r in caplog.records if r.name == "megatron_rl.rewards"]
    assert len(lines) == 1 and lines[0].startswith("reward: 5 of 5 samples failed (remote: 5 raised")

    cfg = RewardConfig(sources=[RewardSource(type="remote", path=server.url + "/bad")], workers=1)
    with build_reward_runner(cfg) as runner:
        res = runner.score(inputs[:3])
    assert res.failed == [True] * 3 and "HTTP 400" in res.errors[0]
    assert [n for p, n in server.requests if p == "/bad"] == [3]  # one request, not retried


def test_the_runner_kills_a_batch_call_past_its_timeout(server):
    """call_timeout_s bounds a whole batch call in the worker (the request itself would wait 5 s)."""
    reward = RemoteReward(server.url + "/sleep", request_timeout_s=30)
    reward.call_timeout_s = 0.5
    from megatron_rl.rewards import RewardRunner

    t0 = time.monotonic()
    with RewardRunner([("remote", 1.0, reward)], workers=1, timeout_s=60) as runner:
        res = runner.score(_samples(3))
    assert time.monotonic() - t0 < 4.5
    assert res.failed == [True] * 3 and res.metrics["reward/timeouts"] == 3
    assert res.errors[0] == "remote: timed out after 0.5 s"


def test_config_errors_are_one_line():
    with pytest.raises(ValueError, match="needs path: the reward server's http"):
        RewardSource(type="remote", path="localhost:8000")
    with pytest.raises(ValueError, match="batch_size applies to type remote only, not 'math'"):
        RewardSource(type="math", batch_size=4)
    with pytest.raises(ConfigError, match=r"reward.sources\[0\].path: 'http://:8000/x' is not an http\(s\) URL"):
        build_reward_functions(RewardConfig(sources=[RewardSource(type="remote", path="http://:8000/x")]))
    (_, _, built), = build_reward_functions(RewardConfig(sources=[
        RewardSource(type="remote", path="http://h:1/s", batch_size=8, request_timeout_s=2, retries=1)]))
    assert (built.batch_size, built.request_timeout_s, built.retries) == (8, 2.0, 1)
    assert built.call_timeout_s == pytest.approx(2 * 2.0 + 0.5 + 5.0)


class BatchSource:
    """A batched source without HTTP (imported by the workers from this module): 'die' in a chunk
    kills the worker, 'short' returns one score too few, 'bad' fails that sample alone; else len."""

    batch_size = 2
    name = "batch"

    def __call__(self, inp):
        raise AssertionError("the runner must call score_batch")

    def score_batch(self, inputs):
        import os

        texts = [x.response for x in inputs]
        if "die" in texts:
            os._exit(3)
        if "short" in texts:
            return [1.0] * (len(inputs) - 1)
        return [ValueError("bad sample") if t == "bad" else len(t) for t in texts]


def test_the_runner_batch_protocol_without_http():
    from megatron_rl.rewards import RewardRunner

    texts = ["a", "bb", "die", "ccc", "short", "dddd", "bad", "eeeee", "ffffff"]
    inputs = [RewardInput(prompt="p", response=t) for t in texts]
    with RewardRunner([("batch", 1.0, BatchSource())], workers=2) as runner:
        res = runner.score(inputs)
        again = runner.score(inputs[:2])
    # chunks of 2: [a bb] [die ccc] [short dddd] [bad eeeee] [ffffff]
    assert res.failed == [False, False, True, True, True, True, True, False, False]
    assert res.scores == [1.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 5.0, 6.0]
    assert "worker died (exit code 3)" in res.errors[2] and res.errors[2] == res.errors[3]
    assert res.errors[4] == "batch: score_batch returned 1 scores for 2 samples"
    assert res.errors[6] == "batch: ValueError: bad sample"
    assert res.metrics["reward/errors"] == 5 and res.metrics["reward/worker_restarts"] == 1
    assert again.scores == [1.0, 2.0] and not any(again.failed)
