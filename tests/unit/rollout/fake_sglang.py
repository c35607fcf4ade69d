"""STAND-IN, NOT SGLang: an imitation SGLang server, kept only for what the real one cannot be made to
show on demand. SGLang 0.5.23's real server runs on the CPU here and is what the rollout tests talk
to (tests/sglang_server: generation, stops, logprobs, tensor / disk / distributed weight sync from
Megatron at TP=2 and PP=2, restarts, the router). This imitation remains for faults and situations:
a hung server, 5xx replies and their retries, aborted samples, older servers (< 0.5.21, no weight
update session; only /get_server_info), a GPU server's memory release and resume, several servers'
weight groups, and failures injected mid-update. Each test that uses it is one of those.

The HTTP endpoints the rollout code uses, request validation modelled on sglang 0.5.23's structs,
deterministic generation and failure injection.

Validation is deliberately stricter than SGLang in one way: unknown top-level fields are refused
(SGLang's control structs silently ignore them, so a misspelled field would be lost without an
error); unknown `sampling_params` keys are refused by SGLang too. Field names, types and which are
required follow `srt/managers/io_struct.py`; versions >= 0.5.21 refuse tensor/distributed weight
updates outside a begin/end_weight_update session, as `SchedulerWeightUpdaterManager` does.

Generation: sample j of a prompt starts at token (last prompt token + 1 + j) % vocab and counts up
by one; the logprob of the t-th response token is -(t + 1) / 100 - j / 1000. `max_new_tokens`,
`stop_token_ids` and `n` are honoured; stop strings are not (no tokenizer).

Failure injection: `fail_next` (statuses), `abort_next`, `delay_s`, `unhealthy_probes`, `hang` (every
request, health probes included, waits forever); in a fake run as a process, POST them to
`/fake_config` and read `/fake_state`.

Tensor updates are decoded with the real `MultiprocessingSerializer` / `FlattenedTensorBucket`
(every TP rank's payload, which must all hold the same tensors) and recorded in `weights`.

Run as a script it takes `sglang.launch_server`'s arguments, so the launcher can start it.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Optional

# ------------------------------------------------------------------------------ validation tables
_is_bool = lambda v: isinstance(v, bool)  # noqa: E731
_is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
_is_num = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
_is_str = lambda v: isinstance(v, str)  # noqa: E731
_is_dict = lambda v: isinstance(v, dict)  # noqa: E731


def _opt(check):
    return lambda v: v is None or check(v)


def _list_of(check):
    return lambda v: isinstance(v, list) and all(check(x) for x in v)


def _one_of(*values):
    return lambda v: v in values


_BASE = {"rid": (_opt(_is_str), False), "http_worker_ipc": (_opt(_is_str), False)}  # BaseReq
_SELECTOR = (_one_of("target", "draft", "all"), False)

STRUCTS: dict[str, dict[str, tuple[Callable, bool]]] = {
    "/pause_generation": {"mode": (_one_of("abort", "retract", "in_place"), False)},
    "/continue_generation": {"torch_empty_cache": (_is_bool, False)},
    "/abort_request": {"abort_all": (_is_bool, False), "finished_reason": (_opt(_is_dict), False),
                       "abort_message": (_opt(_is_str), False)},
    "/release_memory_occupation": {"tags": (_opt(_list_of(_is_str)), False)},
    "/resume_memory_occupation": {"tags": (_opt(_list_of(_is_str)), False)},
    "/begin_weight_update": {"selector": _SELECTOR},
    "/end_weight_update": {},
    "/update_weights_from_disk": {
        "model_path": (_is_str, True), "load_format": (_opt(_is_str), False),
        "abort_all_requests": (_is_bool, False), "weight_version": (_opt(_is_str), False),
        "is_async": (_is_bool, False), "torch_empty_cache": (_is_bool, False), "keep_pause": (_is_bool, False),
        "recapture_cuda_graph": (_is_bool, False), "token_step": (_is_int, False), "flush_cache": (_is_bool, False),
        "manifest": (_opt(_is_dict), False)},
    "/update_weights_from_tensor": {
        "serialized_named_tensors": (_list_of(_is_str), True), "load_format": (_opt(_is_str), False),
        "flush_cache": (_is_bool, False), "abort_all_requests": (_is_bool, False),
        "weight_version": (_opt(_is_str), False), "selector": _SELECTOR, "torch_empty_cache": (_is_bool, False)},
    "/init_weights_update_group": {
        "master_address": (_is_str, True), "master_port": (_is_int, True), "rank_offset": (_is_int, True),
        "world_size": (_is_int, True), "group_name": (_is_str, False), "backend": (_is_str, False)},
    "/update_weights_from_distributed": {
        "names": (_list_of(_is_str), True), "dtypes": (_list_of(_is_str), True),
        "shapes": (_list_of(_list_of(_is_int)), True), "group_name": (_is_str, False),
        "flush_cache": (_is_bool, False), "abort_all_requests": (_is_bool, False),
        "weight_version": (_opt(_is_str), False), "load_format": (_opt(_is_str), False), "selector": _SELECTOR,
        "torch_empty_cache": (_is_bool, False)},
    "/destroy_weights_update_group": {"group_name": (_is_str, False)},
}

GENERATE_FIELDS = {  # the GenerateReqInput fields a token-in/token-out client may send
    "rid": (_opt(lambda v: _is_str(v) or _list_of(_is_str)(v)), False),
    "input_ids": (lambda v: _list_of(_is_int)(v) and len(v) > 0, True),
    "sampling_params": (_opt(_is_dict), False),
    "return_logprob": (_opt(_is_bool), False),
    "logprob_start_len": (_opt(_is_int), False),
    "top_logprobs_num": (_opt(_is_int), False),
    "return_text_in_logprobs": (_is_bool, False),
    "stream": (_is_bool, False),
}
SAMPLING_FIELDS = {  # SGLang refuses unknown sampling_params keys itself
    "max_new_tokens": _opt(_is_int), "stop": _opt(lambda v: _is_str(v) or _list_of(_is_str)(v)),
    "stop_token_ids": _opt(_list_of(_is_int)), "temperature": _is_num, "top_p": _is_num, "top_k": _is_int,
    "min_p": _is_num, "frequency_penalty": _is_num, "presence_penalty": _is_num, "repetition_penalty": _is_num,
    "min_new_tokens": _is_int, "n": _is_int, "ignore_eos": _is_bool, "skip_special_tokens": _is_bool,
    "spaces_between_special_tokens": _is_bool, "no_stop_trim": _is_bool, "sampling_seed": _opt(_is_int),
}


class BadRequest(Exception):
    def __init__(self, status: int, body: Any):
        self.status, self.body = status, body


def validate(body: Any, fields: dict[str, tuple[Callable, bool]], what: str) -> dict:
    """What FastAPI would answer 422 for: not an object, a missing required field, a wrong type;
    plus (stricter than SGLang) an unknown field."""
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise BadRequest(422, {"detail": [{"msg": f"{what}: the body must be a JSON object"}]})
    for name, value in body.items():
        if name not in fields:
            raise BadRequest(422, {"detail": [{"loc": ["body", name], "msg": f"{what}: unknown field {name!r}"}]})
        if not fields[name][0](value):
            raise BadRequest(422, {"detail": [{"loc": ["body", name], "msg": f"{what}: bad type for {name}: {value!r}"[:300]}]})
    for name, (_, required) in fields.items():
        if required and name not in body:
            raise BadRequest(422, {"detail": [{"loc": ["body", name], "msg": f"{what}: field required: {name}"}]})
    return body


def _version_tuple(v: str) -> tuple:
    m = re.match(r"(\d+)\.(\d+)\.(\d+)", v)
    return tuple(int(x) for x in m.groups()) if m else (99,)


# ------------------------------------------------------------------------------------ the server
class FakeSGLang:
    def __init__(self, *, version: str = "0.5.23", tp_size: int = 1, vocab_size: int = 1000, host: str = "127.0.0.1",
                 port: int = 0, model_path: str = "fake/model", legacy_info_route: bool = False,
                 unhealthy_probes: int = 0, join_groups: bool = False, device: str = "cuda",
                 enable_memory_saver: bool = True):
        self.version, self.tp_size, self.vocab_size = version, tp_size, vocab_size
        self.device, self.enable_memory_saver = device, enable_memory_saver  # as /server_info reports them
        self.model_path = model_path
        self.needs_session = _version_tuple(version) >= (0, 5, 21)
        self.legacy_info_route = legacy_info_route  # old servers: only /get_server_info
        self.lock = threading.Condition()
        # failure injection
        self.fail_next: list[int] = []  # statuses for the next generate requests
        self.abort_next: list[Optional[int]] = []  # per next generate request: outputs to abort (None: all)
        self.delay_s = 0.0
        self.unhealthy_probes = unhealthy_probes
        self.hang = False  # every request (health probes too) waits forever: a hung server
        # records
        self.events: list[str] = []  # control calls in arrival order
        self.requests: list[tuple[str, Any]] = []  # every (path, body)
        self.rids: list[str] = []
        self.in_flight = self.max_in_flight = 0  # sequences (a request with n counts n)
        self.weights: dict[str, Any] = {}
        self.tensor_updates: list[dict] = []
        self.disk_updates: list[dict] = []
        # state
        self.session_open = False
        self.paused = False
        self.abort_epoch = 0  # bumped by pause(mode=abort): requests running then come back aborted
        self.released: set[str] = set()
        self.weight_version = "default"
        self.group: Optional[dict] = None
        self.join_groups = join_groups
        self.pgs: dict[str, Any] = {}
        self.distributed_updates: list[dict] = []
        self.httpd = ThreadingHTTPServer((host, port), _handler(self))
        self.httpd.daemon_threads = True
        self.thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FakeSGLang":
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped = True  # a kept-alive connection's handler thread outlives shutdown(): it drops the request
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # ------------------------------------------------------------------ dispatch
    def handle(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        with self.lock:
            self.requests.append((path, body))
        while self.hang and not path.startswith("/fake_"):
            time.sleep(0.05)
        get_routes = {"/health": self.health, "/health_generate": self.health, "/get_server_info": self.server_info,
                      "/model_info": self.model_info, "/fake_state": self.fake_state}
        if not self.legacy_info_route:
            get_routes["/server_info"] = self.server_info
        post_routes = {"/generate": self.generate, "/pause_generation": self.pause, "/continue_generation": self.resume,
                       "/flush_cache": self.flush_cache, "/abort_request": self.abort_request,
                       "/release_memory_occupation": self.release, "/resume_memory_occupation": self.resume_memory,
                       "/update_weights_from_disk": self.update_from_disk,
                       "/update_weights_from_tensor": self.update_from_tensor,
                       "/init_weights_update_group": self.init_group,
                       "/update_weights_from_distributed": self.update_from_distributed,
                       "/destroy_weights_update_group": self.destroy_group, "/fake_reset": self.fake_reset,
                       "/fake_config": self.fake_config}
        if self.needs_session:
            post_routes.update({"/begin_weight_update": self.begin, "/end_weight_update": self.end})
        routes = get_routes if method == "GET" else post_routes
        if path == "/flush_cache":  # GET or POST in SGLang
            routes = post_routes
        if path not in routes:
            return 404, {"detail": "Not Found"}
        try:
            if path in STRUCTS:
                validate(body, STRUCTS[path], path)
            return routes[path](body or {})
        except BadRequest as e:
            return e.status, e.body

    # ------------------------------------------------------------------ info / health
    def health(self, body):
        with self.lock:
            if self.unhealthy_probes > 0:
                self.unhealthy_probes -= 1
                return 503, None
        return 200, None

    def server_info(self, body):
        return 200, {"version": self.version, "tp_size": self.tp_size, "dp_size": 1, "model_path": self.model_path,
                     "device": self.device, "enable_memory_saver": self.enable_memory_saver}

    def model_info(self, body):
        return 200, {"model_path": self.model_path, "weight_version": self.weight_version, "is_generation": True}

    # ------------------------------------------------------------------ generation
    def generate(self, body):
        validate(body, GENERATE_FIELDS, "/generate")
        sp = body.get("sampling_params") or {}
        for name, value in sp.items():
            if name not in SAMPLING_FIELDS:
                return 400, {"error": f"unknown field `{name}`"}
            if not SAMPLING_FIELDS[name](value):
                return 400, {"error": f"invalid type for sampling_params.{name}: {value!r}"}
        n = sp.get("n", 1)
        rid = body.get("rid")
        with self.lock:
            if rid is not None:
                if rid in self.rids:
                    return 400, {"error": {"message": f"Duplicate request ID: {rid}"}}
                self.rids.append(rid)
            if self.fail_next:
                return self.fail_next.pop(0), {"error": {"message": "injected failure"}}
            if self.released & {"weights", "kv_cache"}:
                return 400, {"error": {"message": f"fake: generate while {sorted(self.released)} released"}}
            aborts = self.abort_next.pop(0) if self.abort_next else 0
            while self.paused:  # SGLang holds new requests while paused
                self.lock.wait()
            epoch = self.abort_epoch
            self.in_flight += n
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay_s:
                time.sleep(self.delay_s)
        finally:
            with self.lock:
                self.in_flight -= n
                if epoch != self.abort_epoch:
                    aborts = None  # a pause(abort) arrived while this request ran
        prompt = body["input_ids"]
        outs = []
        for j in range(n):
            if aborts is None or j < aborts:
                outs.append(self._output(f"{rid}_{j}", prompt, [], {"type": "abort", "message": "Abort in waiting queue"}))
                continue
            outs.append(self._sample(f"{rid}_{j}", prompt, j, sp))
        return 200, (outs if n > 1 else outs[0])

    def _sample(self, rid, prompt, j, sp):
        max_new = sp.get("max_new_tokens", 128)
        stops = set(sp.get("stop_token_ids") or [])
        tokens, reason = [], {"type": "length", "length": max_new}
        tok = prompt[-1] + j
        for _ in range(max_new):
            tok = (tok + 1) % self.vocab_size
            tokens.append(tok)
            if tok in stops and not sp.get("ignore_eos", False):
                reason = {"type": "stop", "matched": tok}
                break
        if reason["type"] == "stop" and not sp.get("no_stop_trim", False):
            tokens = tokens[:-1]  # trimmed: the trainer would never see the stop token
        return self._output(rid, prompt, [[self.logprob(t, j), tok, None] for t, tok in enumerate(tokens)], reason)

    @staticmethod
    def logprob(position: int, sample: int) -> float:
        return -(position + 1) / 100 - sample / 1000

    def _output(self, rid, prompt, token_lps, reason):
        return {"text": "", "output_ids": [t[1] for t in token_lps],
                "meta_info": {"id": rid, "finish_reason": reason, "prompt_tokens": len(prompt),
                              "completion_tokens": len(token_lps), "cached_tokens": 0,
                              "weight_version": self.weight_version, "output_token_logprobs": token_lps}}

    # ------------------------------------------------------------------ control
    def _event(self, name):
        with self.lock:
            self.events.append(name)

    def pause(self, body):
        self._event("pause")
        with self.lock:
            self.paused = True
            if body.get("mode", "abort") == "abort":
                self.abort_epoch += 1
        return 200, {"message": "Generation paused successfully.", "status": "ok"}

    def resume(self, body):
        self._event("continue")
        with self.lock:
            self.paused = False
            self.lock.notify_all()
        return 200, {"message": "Generation continued successfully.", "status": "ok"}

    def flush_cache(self, body):
        self._event("flush")
        if self.in_flight:
            return 400, "Flush cache failed: requests are running.\n"
        return 200, "Cache flushed.\n"

    def abort_request(self, body):
        self._event("abort")
        with self.lock:
            self.abort_epoch += 1
        return 200, None

    def release(self, body):
        tags = body.get("tags") or ["weights", "kv_cache", "cuda_graph"]
        self._check_tags(tags)
        if self.in_flight:
            return 400, {"error": {"message": "release_memory_occupation should be called only when server is idle."}}
        self._event("release:" + ",".join(tags))
        self.released |= set(tags)
        return 200, None

    def resume_memory(self, body):
        tags = body.get("tags") or ["weights", "kv_cache", "cuda_graph"]
        self._check_tags(tags)
        if set(tags) - self.released:  # 0.5.23: offload_tags.remove(tag) raises in the scheduler
            return 500, {"error": {"message": f"fake: resume of {sorted(set(tags) - self.released)}, which is not "
                                              "released (sglang 0.5.23's scheduler raises KeyError)"}}
        self._event("resume:" + ",".join(tags))
        self.released -= set(tags)
        return 200, None

    @staticmethod
    def _check_tags(tags):
        bad = [t for t in tags if t not in ("weights", "kv_cache", "cuda_graph")]
        if bad:
            raise BadRequest(400, {"error": {"message": f"unknown memory tags {bad}"}})

    def begin(self, body):
        self._event("begin")
        if self.session_open:
            return 400, {"success": False, "message": "a weight-update session is already open; call end_weight_update() first"}
        self.session_open = True
        return 200, {"success": True, "message": "Success"}

    def end(self, body):
        self._event("end")
        if not self.session_open:
            return 400, {"success": False, "message": "no weight-update session is open; call begin_weight_update() first"}
        self.session_open = False
        return 200, {"success": True, "message": "Success"}

    def _refuse_outside_session(self, what):
        if self.needs_session and not self.session_open:
            raise BadRequest(400, {"success": False,
                                   "message": f"{what} must run between begin_weight_update() and end_weight_update()"})
        if "weights" in self.released:
            raise BadRequest(400, {"success": False, "message": f"fake: {what} while the weights are released"})

    def update_from_tensor(self, body):
        self._event("update_tensor")
        self._refuse_outside_session("update_weights_from_tensor")
        import torch
        from sglang.srt.utils import MultiprocessingSerializer
        from sglang.srt.weight_sync.tensor_bucket import FlattenedTensorBucket

        payloads = body["serialized_named_tensors"]
        if len(payloads) != self.tp_size:
            return 400, {"success": False, "message": f"got {len(payloads)} payloads for {self.tp_size} TP ranks"}
        per_rank = []
        for payload in payloads:  # each TP rank decodes its own payload (a CPU one can be opened once)
            data = MultiprocessingSerializer.deserialize(payload)
            if body.get("load_format") == "flattened_bucket":
                named = FlattenedTensorBucket(flattened_tensor=data["flattened_tensor"],
                                              metadata=data["metadata"]).reconstruct_tensors()
            else:
                named = list(data)
            per_rank.append([(n, t.clone()) for n, t in named])
        first = per_rank[0]
        for other in per_rank[1:]:
            same = [n for n, _ in other] == [n for n, _ in first] and all(
                a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b) for (_, a), (_, b) in zip(first, other))
            if not same:
                return 400, {"success": False, "message": "TP ranks got different tensors"}
        with self.lock:
            self.weights.update(first)
            self.tensor_updates.append({"names": [n for n, _ in first], "dtypes": {t.dtype for _, t in first},
                                        "load_format": body.get("load_format"), "flush_cache": body.get("flush_cache", True),
                                        "weight_version": body.get("weight_version")})
            if body.get("weight_version") is not None:
                self.weight_version = body["weight_version"]
        return 200, {"success": True, "message": "Success"}

    def update_from_disk(self, body):
        self._event("update_disk")
        path = Path(body["model_path"])
        files = sorted(path.glob("*.safetensors")) if path.is_dir() else []
        if not files:
            return 400, {"success": False, "message": f"Failed to get weights iterator: no safetensors in {path}.",
                         "num_paused_requests": 0}
        from safetensors.torch import load_file

        with self.lock:
            for f in files:
                self.weights.update(load_file(str(f)))
            self.disk_updates.append(dict(body))
            if body.get("weight_version") is not None:
                self.weight_version = body["weight_version"]
        return 200, {"success": True, "message": "Succeeded to update model weights.", "num_paused_requests": 0}

    # NCCL-style updates. With join_groups (a fake run as its own process) the fake joins the group
    # through sglang's own init_custom_process_group, as rank rank_offset, and receives the
    # broadcasts the way the server does (one TP rank: two joins of one group name need two processes).
    def init_group(self, body):
        self._event("init_group")
        self.group = dict(body)
        if self.join_groups:
            if self.tp_size != 1:
                return 400, {"success": False, "message": "the fake joins weight groups with tp_size 1 only"}
            from sglang.srt.utils.common import init_custom_process_group

            self.pgs[body["group_name"]] = init_custom_process_group(
                backend=body.get("backend", "nccl"), init_method=f"tcp://{body['master_address']}:{body['master_port']}",
                world_size=body["world_size"], rank=body["rank_offset"], group_name=body["group_name"])
        return 200, {"success": True, "message": "Succeeded to initialize custom process group."}

    def update_from_distributed(self, body):
        self._event("update_distributed")
        self._refuse_outside_session("update_weights_from_distributed")
        name = body.get("group_name", "weight_update_group")
        received = {}
        if self.join_groups:
            if name not in self.pgs:
                return 400, {"success": False, "message": f"Group {name} not in {list(self.pgs)}"}
            received = self._receive(self.pgs[name], body)
        with self.lock:
            self.weights.update(received)
            self.distributed_updates.append({k: v for k, v in body.items()})
            if body.get("weight_version") is not None:
                self.weight_version = body["weight_version"]
        return 200, {"success": True, "message": "Succeeded to update parameter online."}

    @staticmethod
    def _receive(pg, body):
        import torch
        import torch.distributed as dist

        if body.get("load_format") == "flattened_bucket":
            from sglang.srt.weight_sync.tensor_bucket import FlattenedTensorBucket

            bucket = FlattenedTensorBucket.empty(body["names"], body["dtypes"], body["shapes"], "cpu")
            dist.broadcast(bucket.get_flattened_tensor(), src=0, group=pg)
            return {n: t.clone() for n, t in bucket.reconstruct_tensors()}
        out = {n: torch.empty(s, dtype=getattr(torch, d)) for n, d, s in zip(body["names"], body["dtypes"], body["shapes"])}
        for handle in [dist.broadcast(t, src=0, group=pg, async_op=True) for t in out.values()]:
            handle.wait()
        return out

    def destroy_group(self, body):
        self._event("destroy_group")
        pg = self.pgs.pop(body.get("group_name", "weight_update_group"), None)
        if pg is not None:
            import torch.distributed as dist

            dist.destroy_process_group(pg)
        return 200, {"success": True, "message": "Succeeded to destroy custom process group."}

    def fake_reset(self, body):
        """Fake-only: forget received weights and events (between transports in one test)."""
        with self.lock:
            self.weights.clear()
            self.events.clear()
        return 200, {}

    def fake_config(self, body):
        """Fake-only: failure injection in a fake run as its own process (delay_s, hang, fail_next,
        abort_next, weight_version)."""
        with self.lock:
            for key in ("delay_s", "hang", "fail_next", "abort_next", "weight_version"):
                if key in body:
                    setattr(self, key, body[key])
        return 200, {}

    def fake_state(self, body):
        """Fake-only: what a test in another process needs to see (events, received weights, load)."""
        with self.lock:
            weights = {n: {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape),
                           "values": t.double().flatten().tolist()} for n, t in self.weights.items()}
            return 200, {"events": list(self.events), "weights": weights, "weight_version": self.weight_version,
                         "in_flight": self.in_flight,
                         "generate_requests": sum(p == "/generate" for p, _ in self.requests)}


def _handler(fake: FakeSGLang):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as uvicorn

        def log_message(self, *args):  # quiet
            pass

        def _serve(self, method):
            if getattr(fake, "stopped", False):  # a dead server answers nothing, on old connections too
                self.close_connection = True
                return
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                status, reply = 400, {"detail": "body is not JSON"}
            else:
                status, reply = fake.handle(method, self.path.split("?")[0], body)
            data = reply.encode() if isinstance(reply, str) else json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain" if isinstance(reply, str) else "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self._serve("GET")

        def do_POST(self):
            self._serve("POST")

    return Handler


ThreadingHTTPServer.request_queue_size = 1024  # bursts of hundreds of connections in the concurrency tests


def free_port_pair() -> int:
    """A port p with p and p + 1 free (servers launched on consecutive ports)."""
    from free_ports import free_port_range

    return free_port_range(2)


FAKE_LAUNCHER = [sys.executable, str(Path(__file__).resolve())]  # in place of `python -m sglang.launch_server`


def main(argv=None) -> int:
    """`sglang.launch_server`'s arguments (those our launcher passes), plus --fake-* knobs."""
    p = argparse.ArgumentParser()
    p.add_argument("--model-path", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=30000)
    p.add_argument("--tp-size", type=int, default=1)
    p.add_argument("--dp-size", type=int, default=1)
    p.add_argument("--device", default="cuda")
    p.add_argument("--enable-memory-saver", action="store_true")
    p.add_argument("--fake-version", default="0.5.23")
    p.add_argument("--fake-exit-code", type=int, default=None)  # die at start, like a bad model path
    p.add_argument("--fake-startup-s", type=float, default=0.0)
    p.add_argument("--fake-join-groups", action="store_true")  # take part in weight-update process groups
    p.add_argument("--fake-delay-s", type=float, default=0.0)  # every /generate takes this long
    args, _ = p.parse_known_args(argv)
    print(f"fake sglang: model {args.model_path} tp {args.tp_size} port {args.port}", flush=True)
    if args.fake_exit_code is not None:
        print("RuntimeError: fake startup failure: CUDA out of memory", flush=True)
        return args.fake_exit_code
    time.sleep(args.fake_startup_s)
    fake = FakeSGLang(version=args.fake_version, tp_size=args.tp_size, host=args.host, port=args.port,
                      model_path=args.model_path, join_groups=args.fake_join_groups, device=args.device,
                      enable_memory_saver=args.enable_memory_saver)
    fake.delay_s = args.fake_delay_s
    print("fake sglang: ready", flush=True)
    fake.httpd.serve_forever(poll_interval=0.05)
    return 0


if __name__ == "__main__":
    sys.exit(main())
