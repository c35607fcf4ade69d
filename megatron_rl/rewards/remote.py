"""Scores from an HTTP reward server (source type `remote`, `path: http://host:port/score`).

The protocol, one POST per batch of up to `batch_size` samples:

    request   {"samples": [{"prompt": str, "response": str, "answer": str | null,
                            "finish_reason": "stop" | "length" | "abort", "metadata": {...}}, ...]}
    reply 200 {"scores": [float | null, ...], "errors": [str | null, ...]}   (errors optional)

`scores` has one entry per sample, in order. A null score fails that sample (with its `errors`
entry as the message); a reply of the wrong shape fails the whole batch. Metadata values JSON cannot
encode are sent as `str(value)` (numpy arrays and scalars as lists and numbers).

Failures: connection errors (refused, reset, closed without a reply, connect timeout) and 5xx
replies are retried `retries` times with exponential backoff (`backoff_s`, 2x, 4x...); a 4xx is
the request's fault and is not retried; a reply that does not arrive within `request_timeout_s`
(per socket operation: connect, send, each read) is not retried either, since a slow server would
only get more load. Any of these fails the batch's samples, one line each, and the run goes on.

The runner calls `score_batch` once per chunk of `batch_size` samples in a worker process (chunks
of one batch run in parallel on different workers); `call_timeout_s`, the longest all attempts can
legitimately take, replaces `reward.timeout_s` for these calls. Standard library only (urllib).
"""
from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Optional, Sequence

from .base import RewardInput, as_score

DEFAULT_BATCH_SIZE = 32
DEFAULT_REQUEST_TIMEOUT_S = 30.0
DEFAULT_RETRIES = 2
_BODY_CHARS = 200


class RemoteRewardError(Exception):
    """A sample the server did not score (the runner records the message)."""


def _jsonable(value: Any) -> Any:
    tolist = getattr(value, "tolist", None)  # numpy arrays and scalars
    if callable(tolist):
        return tolist()
    return str(value)


def _short(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= _BODY_CHARS else text[: _BODY_CHARS - 3] + "..."


def check_url(url: Any) -> Optional[str]:
    """Why `url` is not a usable reward-server URL, or None."""
    parsed = urllib.parse.urlparse(str(url))
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return f"{url!r} is not an http(s) URL: write e.g. 'http://localhost:8000/score'"
    try:
        parsed.port
    except ValueError:
        return f"{url!r} has an invalid port: write e.g. 'http://localhost:8000/score'"
    return None


class RemoteReward:
    """Source `remote`: POSTs batches to a reward server (see the module docstring for the protocol)."""

    def __init__(self, url: str, *, batch_size: int = DEFAULT_BATCH_SIZE,
                 request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S, retries: int = DEFAULT_RETRIES,
                 backoff_s: float = 0.5):
        problem = check_url(url)
        if problem:
            raise ValueError(problem)
        self.url = str(url)
        self.batch_size = int(batch_size)
        self.request_timeout_s = float(request_timeout_s)
        self.retries = int(retries)
        self.backoff_s = float(backoff_s)
        self.name = "remote"
        # every attempt timing out, plus the sleeps between them, plus slack for encoding
        self.call_timeout_s = ((self.retries + 1) * self.request_timeout_s
                               + self.backoff_s * (2 ** self.retries - 1) + 5.0)

    @classmethod
    def from_source(cls, source: Any, key: str) -> "RemoteReward":
        from megatron_rl.config.errors import ConfigError

        problem = check_url(source.path)
        if problem:
            raise ConfigError(f"{key}.path: {problem}")
        kwargs = {name: getattr(source, name, None) for name in ("batch_size", "request_timeout_s", "retries")}
        return cls(source.path, **{k: v for k, v in kwargs.items() if v is not None})

    def __call__(self, inp: RewardInput) -> float:
        (value,) = self.score_batch([inp])
        if isinstance(value, BaseException):
            raise value
        return value

    def score_batch(self, inputs: Sequence[RewardInput]) -> list:
        """One score (float) or RemoteRewardError per input; raises when the whole batch failed."""
        body = json.dumps({"samples": [
            {"prompt": inp.prompt, "response": inp.response, "answer": inp.answer,
             "finish_reason": inp.finish_reason, "metadata": inp.metadata} for inp in inputs
        ]}, default=_jsonable).encode()
        reply = self._post(body)
        return self._parse(reply, len(inputs))

    def _post(self, body: bytes) -> bytes:
        request = urllib.request.Request(self.url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        attempt = 0
        while True:
            try:
                with urllib.request.urlopen(request, timeout=self.request_timeout_s) as response:
                    return response.read()
            except urllib.error.HTTPError as exc:
                detail = _short(exc.read().decode("utf-8", errors="replace") or exc.reason)
                problem = f"HTTP {exc.code} from {self.url}: {detail}"
                if exc.code < 500:  # the request is wrong: the same request would fail again
                    raise RemoteRewardError(problem) from None
            except TimeoutError:  # connected, but no reply in time
                raise RemoteRewardError(
                    f"no reply from {self.url} within {self.request_timeout_s:g} s (request_timeout_s)"
                ) from None
            except (urllib.error.URLError, ConnectionError, http.client.HTTPException) as exc:
                problem = f"cannot reach {self.url}: {_short(getattr(exc, 'reason', exc))}"
            if attempt >= self.retries:
                tries = f" (after {attempt + 1} attempts)" if attempt else ""
                raise RemoteRewardError(problem + tries)
            time.sleep(self.backoff_s * 2 ** attempt)
            attempt += 1

    def _parse(self, reply: bytes, n: int) -> list:
        try:
            data = json.loads(reply)
        except ValueError:
            text = _short(reply.decode("utf-8", "replace"))
            raise RemoteRewardError(f"{self.url} replied with invalid JSON: {text}") from None
        scores = data.get("scores") if isinstance(data, dict) else None
        if not isinstance(scores, list) or len(scores) != n:
            got = f"{len(scores)} scores" if isinstance(scores, list) else _short(json.dumps(data))
            raise RemoteRewardError(f"{self.url} replied with {got} for {n} samples: expected {{\"scores\": [...]}} "
                                    f"with one score per sample")
        errors = data.get("errors")
        errors = errors if isinstance(errors, list) and len(errors) == n else [None] * n
        out = []
        for score, error in zip(scores, errors):
            if score is None:
                why = _short(error or "no reason given")
                out.append(RemoteRewardError(f"the server did not score this sample: {why}"))
                continue
            try:
                out.append(as_score(score, self.url))
            except (TypeError, ValueError) as exc:
                out.append(RemoteRewardError(str(exc)))
        return out
