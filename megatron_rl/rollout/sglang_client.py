"""HTTP client for SGLang servers: generation with bounded concurrency and retries, and the control
calls the trainer needs around weight updates (pause, flush, sessions, memory release).

Facts it relies on (sglang 0.5.23, `srt/entrypoints/http_server.py`, `srt/managers/io_struct.py`):
- `/generate` takes `input_ids`, `sampling_params` and `return_logprob`; with `n` > 1 the reply is
  a list of n outputs, otherwise one. Each output has `output_ids` and `meta_info` with
  `output_token_logprobs` ([logprob, token_id, text] per token), `finish_reason` ({"type": "stop" |
  "length" | "abort", ...}) and the server's `weight_version` (a string).
- The logprobs are log softmax(logits / temperature) of the sampled token (at temperature 1 when
  greedy), before top-k/top-p: what the trainer recomputes. Do not set SGLANG_RETURN_ORIGINAL_LOGPROB.
- `no_stop_trim` keeps the matched stop token in `output_ids` (the trainer must score it).
- A client that disconnects aborts its request server-side, so cancelling a task frees the server.
- Weight-update calls go to each server: sglang-router only balances `/generate`.
- From 0.5.21, `/update_weights_from_tensor` and `/update_weights_from_distributed` are refused
  outside a `/begin_weight_update` .. `/end_weight_update` session; disk updates need none.

`AsyncSGLangClient` is the asyncio API (one event loop per client). `SGLangClient` runs one on a
private loop thread for synchronous callers (the trainer): generation and the control calls as
blocking methods, `run(coro)` / `submit(coro)` for the rest of `client.aio`.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import random
import re
import threading
import time
import uuid
from typing import Any, AsyncIterator, Callable, Iterator, Optional, Sequence

import httpx

from .sglang_launch import check_url
from .types import RolloutBatch, Sample, SamplingParams

SESSION_SINCE = (0, 5, 21)  # first version whose tensor/NCCL updates need begin/end_weight_update
RETRY_STATUS = frozenset({500, 502, 503, 504})
MEMORY_TAGS = ("weights", "kv_cache", "cuda_graph")


class SGLangError(RuntimeError):
    """A failed SGLang call; the message is one line naming the URL, what happened and the fix."""


class SGLangStaleWeightsError(SGLangError):
    """A rollout cannot finish on the current weights: a restarted server serves the checkpoint's
    weights (the trained ones live only in the trainer) and no server with them is left. The next
    weight sync updates every server; the trainer can sync and run the rollout again."""


def reported_version(meta: dict) -> Optional[int]:
    """The weight version a `/generate` reply says it was served with: ours are digit strings (we
    send str(version) with every update); "default" is a server that never got an update (the
    checkpoint it loaded, version 0); None when it is something else."""
    v = str(meta.get("weight_version", "default"))
    return int(v) if v.isdigit() else (0 if v == "default" else None)


def parse_version(text: str) -> tuple[int, ...]:
    """'0.5.23' -> (0, 5, 23); '0.5.21rc1' / '0.5.21.post2' -> (0, 5, 21); unparseable -> ()."""
    m = re.match(r"\s*v?(\d+)\.(\d+)(?:\.(\d+))?", str(text or ""))
    return tuple(int(x) for x in m.groups() if x is not None) if m else ()


def needs_weight_update_session(version: str) -> bool:
    parsed = parse_version(version)
    # a source build reports 0.0.0.dev0 (or nothing usable): assume it is recent
    return not parsed or parsed == (0, 0, 0) or parsed >= SESSION_SINCE


def sampling_payload(params: SamplingParams) -> dict:
    """SGLang's `sampling_params` for ours (without `n`)."""
    return {
        "max_new_tokens": params.max_new_tokens,
        "temperature": params.temperature,  # 0: greedy in SGLang too
        "top_p": params.top_p,
        "top_k": params.top_k,  # -1: whole vocabulary in SGLang too
        "stop": list(params.stop),
        "stop_token_ids": list(params.stop_token_ids),
        "no_stop_trim": True,  # keep the stop token: it is part of the response the trainer scores
    }


def _one_line(text: Any, limit: int = 300) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


def error_detail(resp: httpx.Response) -> str:
    """The server's error message from any of SGLang's error body shapes, on one line."""
    try:
        body = resp.json()
    except ValueError:
        return _one_line(resp.text) or resp.reason_phrase
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            err = err.get("message")
        msg = err or body.get("message") or body.get("detail")
        return _one_line(msg if msg is not None else body)
    return _one_line(body)


def parse_output(out: dict, prompt: list[int], prompt_index: int, weight_version: int) -> Sample:
    """One `/generate` output -> Sample (its finish reason must be stop or length)."""
    meta = out["meta_info"]
    token_lps = meta.get("output_token_logprobs")
    if token_lps is None:
        raise SGLangError("SGLang /generate returned no output_token_logprobs: was return_logprob dropped by a proxy?")
    ids = out.get("output_ids")
    if ids is None:
        ids = [int(t[1]) for t in token_lps]
    if len(ids) != len(token_lps) or any(int(t[1]) != i for t, i in zip(token_lps, ids)):
        raise SGLangError(f"SGLang /generate output {meta.get('id')}: output_ids and output_token_logprobs disagree "
                          f"({len(ids)} vs {len(token_lps)} tokens)")
    server_version = meta.get("weight_version")
    # the server's own record wins when it is ours (we send str(version) with every update)
    version = int(server_version) if str(server_version).isdigit() else weight_version
    return Sample(prompt_ids=list(prompt), response_ids=[int(i) for i in ids],
                  logprobs=[float(t[0]) for t in token_lps], finish_reason=meta["finish_reason"]["type"],
                  weight_version=version, prompt_index=prompt_index)


class _SequenceLimiter:
    """At most `capacity` sequences in flight. A request for k sequences takes k slots (k is capped at
    the capacity so a group larger than the bound still runs, alone). Acquisition is serialised so two
    requests never hold part of what each needs (no deadlock), and it is FIFO."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._slots = asyncio.Semaphore(capacity)
        self._turn = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def hold(self, k: int):
        k = min(k, self.capacity)
        taken = 0
        try:
            async with self._turn:
                while taken < k:
                    await self._slots.acquire()
                    taken += 1
            yield
        finally:
            for _ in range(taken):
                self._slots.release()


class AsyncSGLangClient:
    """asyncio client for `server_urls` (every one gets weight updates and control calls);
    `/generate` goes to `generate_url` (a router) when given, else groups are spread round-robin over
    the servers (each group stays on one server, which shares its prompt's prefix cache)."""

    def __init__(self, server_urls: Sequence[str] | str, *, generate_url: Optional[str] = None,
                 max_concurrency: int = 256, max_retries: int = 3, backoff_s: float = 0.5, max_backoff_s: float = 8.0,
                 request_timeout_s: float = 1800.0, control_timeout_s: float = 600.0, connect_timeout_s: float = 10.0,
                 weight_update_session: Optional[bool] = None, default_tp_size: int = 1,
                 recover: Optional[Callable[[str, "SGLangError", float], Optional[str]]] = None):
        """`recover(url, error, since)`: called (in a worker thread) when a `/generate` to `url` failed
        after its retries (`since`: time.monotonic() of its first attempt); it restarts what is dead
        and returns the URL to send the request to again (None: pick one), or raises. Without it the
        error is raised. The engine passes its own (`SGLangEngine._recover`)."""
        urls = [server_urls] if isinstance(server_urls, str) else list(server_urls)
        if not urls:
            raise ValueError("rollout.sglang.urls: no SGLang server to talk to")
        self.server_urls = [check_url(u) for u in urls]
        self.generate_url = check_url(generate_url, "router_url") if generate_url else None
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.request_timeout_s, self.control_timeout_s = request_timeout_s, control_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.session_override = weight_update_session  # None: decided per server from its version
        self.default_tp_size = default_tp_size
        self.recover = recover
        self.avoid: frozenset[str] = frozenset()  # servers /generate skips (restarted, stale weights)
        self._rid_prefix = f"mrl-{uuid.uuid4().hex[:8]}"
        self._rid_counter = itertools.count()
        self._next_server = itertools.count()
        self._server_info: dict[str, dict] = {}
        self._http: Optional[httpx.AsyncClient] = None
        self._limiter: Optional[_SequenceLimiter] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None

    # ------------------------------------------------------------------ plumbing
    def _client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
            self._http = httpx.AsyncClient(
                timeout=httpx.Timeout(self.request_timeout_s, connect=self.connect_timeout_s),
                limits=httpx.Limits(max_connections=self.max_concurrency + 32, max_keepalive_connections=64),
                trust_env=False,  # servers are cluster-internal: an http_proxy variable must not capture them
            )
            self._limiter = _SequenceLimiter(self.max_concurrency)
        elif loop is not self._loop:
            raise RuntimeError("an AsyncSGLangClient is bound to the event loop it was first used on; "
                               "make one client per loop (or use SGLangClient from threads)")
        return self._http

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
        self._http, self._limiter, self._loop = None, None, None

    def new_rid(self) -> str:
        # unique per attempt: a retried request may still be alive server-side under its old id
        return f"{self._rid_prefix}-{next(self._rid_counter)}"

    def _backoff(self, attempt: int) -> float:
        return min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)

    async def _request(self, method: str, url: str, path: str, body: Callable[[], Any] | Any = None, *,
                       timeout: Optional[float] = None, retry: str = "all") -> httpx.Response:
        """One call with bounded retries. retry="all": connection errors, timeouts and 5xx (idempotent
        calls: generate, health, info); "connect": only when the request never reached the server;
        "none". Returns any response that is not retried (the caller checks 4xx)."""
        http = self._client()
        last = "no attempt"
        attempts = self.max_retries + 1 if retry != "none" else 1
        for attempt in range(attempts):
            if attempt:
                await asyncio.sleep(self._backoff(attempt))
            payload = body() if callable(body) else body
            try:
                resp = await http.request(method, url + path, json=payload,
                                          timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT)
            except (httpx.ConnectError, httpx.ConnectTimeout) as e:
                last = f"cannot connect ({_one_line(e) or type(e).__name__})"
                continue
            except httpx.TransportError as e:
                last = f"{type(e).__name__}: {_one_line(e)}".rstrip(": ")
                if retry == "all":
                    continue
                break
            if resp.status_code in RETRY_STATUS and retry == "all":
                last = f"HTTP {resp.status_code}: {error_detail(resp)}"
                continue
            return resp
        tried = f"after {attempt + 1} attempt{'s' if attempt else ''}"
        raise SGLangError(f"SGLang {path} at {url} failed {tried} (last: {last}); is the server up? "
                          f"see its log and GET {url}/health_generate")

    async def _call(self, url: str, path: str, body: Any = None, *, method: str = "POST",
                    retry: str = "connect", timeout: Optional[float] = None) -> Any:
        """A control call that must succeed: non-2xx or {"success": false} raise one line."""
        resp = await self._request(method, url, path, body, retry=retry,
                                   timeout=self.control_timeout_s if timeout is None else timeout)
        if resp.status_code >= 400:
            raise SGLangError(f"SGLang {path} at {url} refused: HTTP {resp.status_code}: {error_detail(resp)}")
        try:
            data = resp.json()
        except ValueError:
            return resp.text
        if isinstance(data, dict) and data.get("success") is False:
            raise SGLangError(f"SGLang {path} at {url} failed: {_one_line(data.get('message'))}")
        return data

    async def _all(self, path: str, body: Any = None, **kw) -> list:
        """The same control call on every server, concurrently."""
        return list(await asyncio.gather(*(self._call(u, path, body, **kw) for u in self.server_urls)))

    # ------------------------------------------------------------------ generation
    async def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams, n: int = 1, *,
                       weight_version: int = 0, first_index: int = 0) -> RolloutBatch:
        """n samples of each prompt; samples of one prompt adjacent, in prompt order."""
        groups: list = [None] * len(prompts)
        async for group in self.iter_groups(prompts, params, n, weight_version=weight_version, first_index=first_index):
            groups[group[0].prompt_index - first_index] = group
        return RolloutBatch([s for g in groups for s in g])

    async def iter_groups(self, prompts: Sequence[Sequence[int]], params: SamplingParams, n: int = 1, *,
                          weight_version: int = 0, first_index: int = 0) -> AsyncIterator[list[Sample]]:
        """Yield each prompt's n samples as soon as all of them are done (completion order), for
        dynamic sampling. Closing the generator early cancels (and so aborts) what is still running."""
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        self._client()
        sp = sampling_payload(params)
        tasks = [asyncio.ensure_future(self._generate_group(first_index + i, list(p), sp, n, weight_version))
                 for i, p in enumerate(prompts)]
        try:
            for done in asyncio.as_completed(tasks):
                yield await done
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _pick_url(self) -> str:
        if self.generate_url:
            return self.generate_url
        avoid = self.avoid  # replaced whole by the engine, never mutated: read it once
        urls = [u for u in self.server_urls if u not in avoid] or self.server_urls
        return urls[next(self._next_server) % len(urls)]

    async def _generate_group(self, index: int, prompt: list[int], sp: dict, n: int, weight_version: int) -> list[Sample]:
        url = self._pick_url()
        samples: list[Sample] = []
        aborted_rounds, last_abort, stale_rounds = 0, "", 0
        while len(samples) < n:
            k = n - len(samples)  # only the aborted samples are asked for again
            if url in self.avoid:  # restarted since this group began: another server
                url = self._pick_url()

            def body(k=k):
                return {"rid": self.new_rid(), "input_ids": prompt,
                        "sampling_params": {**sp, "n": k} if k > 1 else sp, "return_logprob": True}

            since, failure = time.monotonic(), None
            async with self._limiter.hold(k):
                try:
                    resp = await self._request("POST", url, "/generate", body, timeout=self.request_timeout_s)
                except SGLangError as e:
                    if self.recover is None:
                        raise
                    failure = e
            if failure is not None:  # retries spent: a dead or hung server is restarted, then ask again
                again = await asyncio.get_running_loop().run_in_executor(None, self.recover, url, failure, since)
                url = again or self._pick_url()
                continue
            if resp.status_code >= 400:
                raise SGLangError(f"SGLang /generate at {url} refused prompt {index}: HTTP {resp.status_code}: "
                                  f"{error_detail(resp)}")
            data = resp.json()
            outs = data if isinstance(data, list) else [data]
            if len(outs) != k:
                raise SGLangError(f"SGLang /generate at {url} returned {len(outs)} outputs for n={k}")
            served = [reported_version(out.get("meta_info", {})) for out in outs]
            if any(v is not None and v < weight_version for v in served):
                # older weights than the rollout's: a restarted server that still has the checkpoint
                stale_rounds += 1
                if stale_rounds > self.max_retries:
                    raise SGLangStaleWeightsError(
                        f"SGLang /generate at {url}: prompt {index} was served with weight version "
                        f"{min(v for v in served if v is not None)} instead of {weight_version} {stale_rounds} times "
                        "(a restarted server has the checkpoint's weights until the next weight sync): sync the "
                        "weights and run the rollout again")
                url = self._pick_url()
                continue
            for out in outs:
                reason = (out.get("meta_info", {}).get("finish_reason") or {}).get("type")
                if reason == "abort":
                    last_abort = _one_line(out["meta_info"]["finish_reason"].get("message", "aborted"))
                elif reason in ("stop", "length"):
                    samples.append(parse_output(out, prompt, index, weight_version))
                else:
                    raise SGLangError(f"SGLang /generate at {url}: unexpected finish_reason {reason!r} for prompt {index}")
            if len(samples) < n:
                aborted_rounds += 1
                if aborted_rounds > self.max_retries:
                    raise SGLangError(
                        f"SGLang /generate at {url}: prompt {index} had samples aborted {aborted_rounds} times "
                        f"(last: {last_abort}); see the server log (out of memory? a weight update left it paused?)")
                await asyncio.sleep(self._backoff(aborted_rounds))
        return samples

    # ------------------------------------------------------------------ server facts
    async def server_info(self, url: str) -> dict:
        """`/server_info` (0.5.2x) or `/get_server_info` (older); cached."""
        if url not in self._server_info:
            resp = await self._request("GET", url, "/server_info", timeout=30.0)
            if resp.status_code == 404:
                resp = await self._request("GET", url, "/get_server_info", timeout=30.0)
            if resp.status_code >= 400:
                raise SGLangError(f"SGLang server info at {url}: HTTP {resp.status_code}: {error_detail(resp)}")
            self._server_info[url] = resp.json()
        return self._server_info[url]

    async def version(self, url: str) -> str:
        return str((await self.server_info(url)).get("version", ""))

    async def needs_session(self, url: str) -> bool:
        """Whether tensor/NCCL updates on `url` must sit between begin/end_weight_update."""
        if self.session_override is not None:
            return self.session_override
        return needs_weight_update_session(await self.version(url))

    async def tp_size(self, url: str) -> int:
        """The server's TP ranks (one tensor payload each); the config's value if it does not say."""
        return int((await self.server_info(url)).get("tp_size") or self.default_tp_size)

    async def health(self) -> bool:
        """Every server (and the router) answers /health_generate with 200."""
        urls = self.server_urls + ([self.generate_url] if self.generate_url else [])

        async def one(url):
            path = "/health" if url == self.generate_url else "/health_generate"
            try:
                resp = await self._request("GET", url, path, timeout=30.0, retry="none")
            except SGLangError:
                return False
            return resp.status_code == 200

        return all(await asyncio.gather(*(one(u) for u in urls)))

    # ------------------------------------------------------------------ control calls (every server)
    async def pause_generation(self, mode: str = "abort") -> None:
        """abort: running requests return finish_reason abort (the generate loop re-asks for them);
        retract: they wait and resume after continue_generation (with the new weights)."""
        await self._all("/pause_generation", {"mode": mode})

    async def continue_generation(self) -> None:
        await self._all("/continue_generation", {})

    async def flush_cache(self) -> None:
        """Drop the radix (prefix) cache: its KV was computed with the old weights."""
        await self._all("/flush_cache", None)

    async def abort_all(self) -> None:
        await self._all("/abort_request", {"abort_all": True})

    async def release_memory_occupation(self, tags: Optional[Sequence[str]] = None) -> None:
        """Free GPU memory (colocated placement; needs --enable-memory-saver and an idle server)."""
        await self._all("/release_memory_occupation", _tags_body(tags))

    async def resume_memory_occupation(self, tags: Optional[Sequence[str]] = None) -> None:
        await self._all("/resume_memory_occupation", _tags_body(tags))

    async def begin_weight_update(self, url: str) -> None:
        await self._call(url, "/begin_weight_update", {})

    async def end_weight_update(self, url: str) -> None:
        await self._call(url, "/end_weight_update", {})

    async def update_weights_from_tensor(self, url: str, payloads: Sequence[str], *,
                                         load_format: Optional[str] = "flattened_bucket",
                                         weight_version: Optional[int] = None, flush_cache: bool = False) -> None:
        """`payloads`: one base64 MultiprocessingSerializer string per TP rank of `url`."""
        body = {"serialized_named_tensors": list(payloads), "load_format": load_format, "flush_cache": flush_cache}
        if weight_version is not None:
            body["weight_version"] = str(weight_version)
        await self._call(url, "/update_weights_from_tensor", body)

    async def update_weights_from_disk(self, model_path: str, *, load_format: Optional[str] = None,
                                       weight_version: Optional[int] = None,
                                       urls: Optional[Sequence[str]] = None) -> None:
        """Every server (or only `urls`) loads the HF checkpoint at `model_path` (a path it sees)."""
        body = {"model_path": str(model_path)}
        if load_format is not None:
            body["load_format"] = load_format
        if weight_version is not None:
            body["weight_version"] = str(weight_version)
        if urls is None:
            await self._all("/update_weights_from_disk", body)
        else:
            await asyncio.gather(*(self._call(u, "/update_weights_from_disk", body) for u in urls))

    async def init_weights_update_group(self, url: str, *, master_address: str, master_port: int, rank_offset: int,
                                        world_size: int, group_name: str, backend: str = "nccl") -> None:
        await self._call(url, "/init_weights_update_group", {
            "master_address": master_address, "master_port": master_port, "rank_offset": rank_offset,
            "world_size": world_size, "group_name": group_name, "backend": backend})

    async def update_weights_from_distributed(self, url: str, *, names: Sequence[str], dtypes: Sequence[str],
                                              shapes: Sequence[Sequence[int]], group_name: str,
                                              load_format: Optional[str] = None,
                                              weight_version: Optional[int] = None, flush_cache: bool = False) -> None:
        body = {"names": list(names), "dtypes": list(dtypes), "shapes": [list(s) for s in shapes],
                "group_name": group_name, "flush_cache": flush_cache}
        if load_format is not None:
            body["load_format"] = load_format
        if weight_version is not None:
            body["weight_version"] = str(weight_version)
        await self._call(url, "/update_weights_from_distributed", body)

    async def destroy_weights_update_group(self, url: str, group_name: str) -> None:
        await self._call(url, "/destroy_weights_update_group", {"group_name": group_name})

    async def _session_urls(self) -> list[str]:
        return [u for u in self.server_urls if await self.needs_session(u)]

    async def open_weight_update(self, pause_mode: str = "abort") -> None:
        """pause -> flush -> begin (where the server's version needs a session), on every server.
        Paused first so no request runs on half-loaded weights; flushed while paused, so no prefix
        computed with the old weights survives."""
        await self.pause_generation(pause_mode)
        await self.flush_cache()
        await asyncio.gather(*(self.begin_weight_update(u) for u in await self._session_urls()))

    async def close_weight_update(self, *, resume: bool = True) -> None:
        """end (where a session is open) -> continue; `resume=False` leaves the servers paused (after
        a failed update: generating on partly updated weights would poison the batch)."""
        await asyncio.gather(*(self.end_weight_update(u) for u in await self._session_urls()))
        if resume:
            await self.continue_generation()


def _tags_body(tags: Optional[Sequence[str]]) -> dict:
    if tags is None:
        return {}
    bad = [t for t in tags if t not in MEMORY_TAGS]
    if bad:
        raise ValueError(f"unknown SGLang memory tags {bad}: use any of {list(MEMORY_TAGS)}")
    return {"tags": list(tags)}


class SGLangClient:
    """Synchronous face of AsyncSGLangClient: the async client runs on a private event-loop thread,
    so its connections and concurrency bound live across calls. Same constructor arguments."""

    def __init__(self, server_urls: Sequence[str] | str, **kwargs):
        self.aio = AsyncSGLangClient(server_urls, **kwargs)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sglang-client", daemon=True)
        self._thread.start()

    @property
    def server_urls(self) -> list[str]:
        return self.aio.server_urls

    def submit(self, coro) -> concurrent.futures.Future:
        """Start a coroutine of `self.aio` on the client's loop without waiting (to overlap work)."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def run(self, coro):
        fut = self.submit(coro)
        try:
            return fut.result()
        except BaseException:
            fut.cancel()  # e.g. KeyboardInterrupt: do not leave the call running on the loop
            raise

    def generate(self, prompts, params: SamplingParams, n: int = 1, **kw) -> RolloutBatch:
        return self.run(self.aio.generate(prompts, params, n, **kw))

    def iter_groups(self, prompts, params: SamplingParams, n: int = 1, **kw) -> Iterator[list[Sample]]:
        """Groups as they complete; stop iterating (or close the iterator) to cancel the rest."""
        agen = self.aio.iter_groups(prompts, params, n, **kw)
        try:
            while True:
                try:
                    yield self.run(agen.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self.run(agen.aclose())

    def health(self) -> bool:
        return self.run(self.aio.health())

    def server_info(self, url: str) -> dict:
        return self.run(self.aio.server_info(url))

    def needs_session(self, url: str) -> bool:
        return self.run(self.aio.needs_session(url))

    def tp_size(self, url: str) -> int:
        return self.run(self.aio.tp_size(url))

    def pause_generation(self, mode: str = "abort") -> None:
        self.run(self.aio.pause_generation(mode))

    def continue_generation(self) -> None:
        self.run(self.aio.continue_generation())

    def flush_cache(self) -> None:
        self.run(self.aio.flush_cache())

    def abort_all(self) -> None:
        self.run(self.aio.abort_all())

    def release_memory_occupation(self, tags: Optional[Sequence[str]] = None) -> None:
        self.run(self.aio.release_memory_occupation(tags))

    def resume_memory_occupation(self, tags: Optional[Sequence[str]] = None) -> None:
        self.run(self.aio.resume_memory_occupation(tags))

    def update_weights_from_disk(self, model_path: str, **kw) -> None:
        self.run(self.aio.update_weights_from_disk(model_path, **kw))

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self.run(self.aio.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

