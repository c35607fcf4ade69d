"""Start (or attach to) SGLang servers and the sglang-router in front of them.

One server per `dp` replica, each with `--dp-size 1`: SGLang's weight-update endpoints assert a
single data-parallel rank, so scaling out means several servers (GPUs `base_gpu_id .. +tp_size-1`
each) behind sglang-router, which balances `/generate` but does not forward weight updates (the
rollout code calls every server itself).

A launched server that dies or hangs can be restarted (`SGLangServers.recover`): same command, same
port, the same log file appended to, at most `max_restarts` times per server; what the restarted
server's weights mean is the engine's business (`sglang_engine.SGLangEngine`).

On a machine without a GPU (`rollout.sglang.device` cpu, or auto there) the servers are SGLang's own
server on the CPU, as launch/sglang_env.sh installs it: torch-native attention, no CUDA graphs, no
overlap scheduler, no memory saver (it is CUDA-only), `--sleep-on-idle` (an idle scheduler would
spin a core), a bounded KV cache, loopback only, SGLANG_USE_CPU_ENGINE=1. Their interpreter is
`rollout.sglang.python` (else $MEGATRON_RL_SGLANG_PYTHON, else this one). A stopped server's
/dev/shm files that no process uses any more are removed.

Only the standard library is used here (subprocess, urllib) so a launch script can import it without
the HTTP client's dependencies. Every failure a user can cause ends in one line naming the server,
its log and the fix.
"""
from __future__ import annotations

import atexit
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence
from urllib.parse import urlparse

SERVER_MODULE, ROUTER_MODULE = "sglang.launch_server", "sglang_router.launch_router"
SERVER_LAUNCHER = (sys.executable, "-m", SERVER_MODULE)
ROUTER_LAUNCHER = (sys.executable, "-m", ROUTER_MODULE)
PYTHON_ENV = "MEGATRON_RL_SGLANG_PYTHON"  # the server environment's interpreter (launch/sglang_env.sh)
# SGLang's server on the CPU (measured with sglang 0.5.23 on a 2-core machine without AMX): the only
# attention backend that runs there, no CUDA graphs or overlap thread, no warmup request (its
# freeze_gc step needs CUDA), and a scheduler that sleeps when idle instead of spinning a core
CPU_FLAGS = ("--device", "cpu", "--attention-backend", "torch_native", "--disable-cuda-graph",
             "--disable-overlap-schedule", "--skip-server-warmup", "--sleep-on-idle")
CPU_ENV = {"SGLANG_USE_CPU_ENGINE": "1"}  # without it the CPU model init looks for vllm
CPU_MAX_TOTAL_TOKENS = 16384  # KV-cache tokens of a CPU server when rollout.sglang.max_total_tokens is unset
LOOPBACK = ("127.0.0.1", "localhost", "::1")
SHM_PREFIXES = ("sglang_", "sgl_shm_", "sem.mp-")  # what SGLang's processes leave in /dev/shm when stopped
HEALTH_PATH = "/health_generate"  # runs one decode step: the server is loaded and can generate
ROUTER_HEALTH_PATH = "/health"

log = logging.getLogger(__name__)


class SGLangLaunchError(RuntimeError):
    """A server that did not come up; the message is one line naming the URL, the log and the fix."""


def check_url(url: str, key: str = "rollout.sglang.urls") -> str:
    """`url` without a trailing slash, or a one-line ValueError naming the config key."""
    parsed = urlparse(str(url))
    if parsed.scheme not in ("http", "https") or not parsed.hostname or parsed.port is None:
        raise ValueError(f"{key}: {url!r} is not an http://host:port URL; write it like http://10.0.0.1:30010")
    if parsed.path not in ("", "/") or parsed.query:
        raise ValueError(f"{key}: {url!r} has a path; give the server's root, like http://{parsed.netloc}")
    return f"{parsed.scheme}://{parsed.netloc}"


def expand_output_dir(path: str, output_dir: Optional[str], key: str) -> str:
    """`${run.output_dir}` in a path of a config the loader did not resolve (one built in Python)
    becomes `output_dir` (default "outputs"); any other `${...}` left is a one-line ValueError."""
    path = str(path).replace("${run.output_dir}", str(output_dir) if output_dir is not None else "outputs")
    if "${" in path:
        raise ValueError(f"{key} {path!r} has an unresolved ${{...}}: load the config with "
                         "megatron_rl.config.load_config, or give the path")
    return path


# ---------------------------------------------------------------------------------------- commands
def resolve_device(device: str = "auto") -> str:
    """`rollout.sglang.device`: auto is cuda when this process sees a GPU, else cpu."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def server_python(python: Optional[str] = None) -> str:
    """The SGLang server environment's interpreter: `rollout.sglang.python`, else
    $MEGATRON_RL_SGLANG_PYTHON, else this process's."""
    return python or os.environ.get(PYTHON_ENV) or sys.executable


def server_env(device: str, base: Optional[dict] = None) -> Optional[dict]:
    """The servers' environment: `base` (None: ours), with CPU_ENV on the CPU."""
    if device != "cpu":
        return base
    return {**(os.environ if base is None else base), **CPU_ENV}


def check_server_python(python: str, modules: Sequence[str] = (SERVER_MODULE,)) -> None:
    """One line naming the fix when `python` is missing or lacks SGLang (or the router)."""
    fix = ("make the server environment with `bash launch/sglang_env.sh` (CPU) or use the Docker image, then set "
           f"rollout.sglang.python (or {PYTHON_ENV}) to its interpreter")
    probe_code = ("import importlib.util, sys; missing = [m for m in sys.argv[1:] "
                  "if importlib.util.find_spec(m.rsplit('.', 1)[0]) is None]; print(' '.join(missing))")
    try:
        out = subprocess.run([python, "-c", probe_code, *modules], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SGLangLaunchError(f"the SGLang server interpreter {python} does not run ({e}): {fix}") from None
    missing = out.stdout.split()
    if out.returncode != 0 or missing:
        raise SGLangLaunchError(f"the SGLang server interpreter {python} has no {' '.join(missing) or 'sglang'}: {fix}")


def server_command(model_path: str, *, port: int, tp_size: int = 1, base_gpu_id: int = 0,
                   mem_fraction: float = 0.8, enable_memory_saver: bool = True, host: str = "127.0.0.1",
                   seed: Optional[int] = None, extra_args: Sequence[str] = (),
                   launcher: Sequence[str] = SERVER_LAUNCHER, device: str = "cuda",
                   max_total_tokens: Optional[int] = None, dtype: Optional[str] = None) -> list[str]:
    """The `python -m sglang.launch_server ...` argv of one server. On the CPU: CPU_FLAGS, no GPU
    id, no memory saver (CUDA-only), and a KV cache of `max_total_tokens` (default
    CPU_MAX_TOTAL_TOKENS). `dtype` (SGLang's name: bfloat16, float16, float32) unless `extra_args`
    give --dtype: the trainer's dtype, so the server's logprobs are comparable with its own."""
    cmd = [*launcher, "--model-path", str(model_path), "--host", host, "--port", str(port),
           "--tp-size", str(tp_size),
           "--dp-size", "1"]  # weight updates assert one DP rank: scale out with servers, not dp
    if device != "cpu":
        cmd += ["--base-gpu-id", str(base_gpu_id)]
    cmd += ["--mem-fraction-static", str(mem_fraction)]
    if device == "cpu":
        cmd += [*CPU_FLAGS, "--max-total-tokens", str(max_total_tokens or CPU_MAX_TOTAL_TOKENS)]
    else:
        if enable_memory_saver:  # release/resume_memory_occupation (colocated placement) need it
            cmd.append("--enable-memory-saver")
        if max_total_tokens:
            cmd += ["--max-total-tokens", str(max_total_tokens)]
    if seed is not None:
        cmd += ["--random-seed", str(seed)]
    if dtype and not any(str(a).split("=", 1)[0] == "--dtype" for a in extra_args):
        cmd += ["--dtype", dtype]
    return cmd + [str(a) for a in extra_args]


SGLANG_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}  # model.dtype -> --dtype


def router_command(worker_urls: Sequence[str], *, port: int, host: str = "127.0.0.1",
                   policy: str = "cache_aware", launcher: Sequence[str] = ROUTER_LAUNCHER) -> list[str]:
    """The `python -m sglang_router.launch_router ...` argv over the given servers."""
    return [*launcher, "--worker-urls", *worker_urls, "--host", host, "--port", str(port), "--policy", policy]


def server_commands(cfg, model_path: str, *, host: Optional[str] = None, gpu_offset: Optional[int] = None,
                    seed: Optional[int] = None, extra_args: Optional[Sequence[str]] = None,
                    launcher: Optional[Sequence[str]] = None, device: Optional[str] = None,
                    dtype: Optional[str] = None) -> list[tuple[str, list[str]]]:
    """(url, argv) of each of `cfg.num_servers` servers (an SGLangConfig): consecutive ports from
    `base_port`, consecutive GPU blocks of `tp_size` from `gpu_offset`; server i gets seed + i.
    `host`, `gpu_offset`, `seed`, `extra_args`, `device` default to the config's host, base_gpu_id,
    seed, extra_args, device (auto resolved); `launcher` to the config's interpreter with
    `-m sglang.launch_server`."""
    device = resolve_device(cfg.device if device is None else device)
    launcher = (server_python(cfg.python), "-m", SERVER_MODULE) if launcher is None else launcher
    host = cfg.host if host is None else host
    gpu_offset = cfg.base_gpu_id if gpu_offset is None else gpu_offset
    seed = cfg.seed if seed is None else seed
    extra_args = cfg.extra_args if extra_args is None else extra_args
    out = []
    for i in range(cfg.num_servers):
        port = cfg.base_port + i
        cmd = server_command(model_path, port=port, tp_size=cfg.tp_size, base_gpu_id=gpu_offset + i * cfg.tp_size,
                             mem_fraction=cfg.mem_fraction, enable_memory_saver=cfg.enable_memory_saver, host=host,
                             seed=None if seed is None else seed + i, extra_args=extra_args, launcher=launcher,
                             device=device, max_total_tokens=cfg.max_total_tokens, dtype=dtype)
        out.append((f"http://{_client_host(host)}:{port}", cmd))
    return out


def _client_host(host: str) -> str:
    # a server bound to all interfaces is reached through loopback from this node
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


# ------------------------------------------------------------------------------------ health wait
@dataclass
class Target:
    """Something to wait for: a URL, and when we launched it, its process, log and command (to
    restart it with)."""

    url: str
    process: Optional[subprocess.Popen] = None
    log_path: Optional[str] = None
    health_path: str = HEALTH_PATH
    last: str = "no answer yet"
    cmd: Optional[list[str]] = None
    env: Optional[dict] = None
    name: str = "sglang server"  # "sglang server 1", "sglang router": how log lines and errors call it
    restarts: int = 0
    started_at: float = 0.0  # time.monotonic() of the last (re)start


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never route 127.0.0.1 via a proxy


def probe(url: str, path: str = HEALTH_PATH, timeout_s: float = 5.0) -> tuple[bool, str]:
    """(healthy, what happened) for one GET."""
    try:
        with _OPENER.open(url + path, timeout=timeout_s) as resp:
            return resp.status == 200, f"HTTP {resp.status}"
    except urllib.error.HTTPError as e:
        return False, f"HTTP {e.code}"
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        if isinstance(reason, ConnectionRefusedError):
            return False, "connection refused"
        if isinstance(reason, (socket.timeout, TimeoutError)):
            return False, f"no reply within {timeout_s:g}s"
        return False, str(reason).replace("\n", " ")


def last_log_line(path: Optional[str]) -> str:
    if not path or not os.path.exists(path):
        return ""
    with open(path, "rb") as f:
        f.seek(max(0, os.path.getsize(path) - 8192))
        lines = [ln.strip() for ln in f.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def wait_healthy(targets: Sequence[Target], timeout_s: float, *, poll_s: float = 0.5,
                 timeout_fix: str = "raise rollout.sglang.health_timeout_s if it is still loading") -> None:
    """Return when every target answers 200 on its health path; raise SGLangLaunchError (one line)
    as soon as a launched process dies, or at the deadline."""
    deadline = time.monotonic() + timeout_s
    pending = list(targets)
    while True:
        for t in list(pending):
            if t.process is not None and t.process.poll() is not None:
                line = last_log_line(t.log_path)
                raise SGLangLaunchError(
                    f"SGLang process for {t.url} exited with code {t.process.returncode} before it was healthy"
                    + (f"; last log line: {line!r}" if line else "")
                    + f"; full log: {t.log_path}; fix what the log says (model path, GPU memory: "
                    "rollout.sglang.mem_fraction, a busy port: rollout.sglang.base_port) and rerun")
            ok, t.last = probe(t.url, t.health_path, timeout_s=max(0.2, min(10.0, deadline - time.monotonic())))
            if ok:
                pending.remove(t)
        if not pending:
            return
        if time.monotonic() >= deadline:
            t = pending[0]
            where = (f"; log: {t.log_path}; {timeout_fix}" if t.process is not None
                     else "; is it running and reachable from this node? check rollout.sglang.urls")
            raise SGLangLaunchError(f"SGLang server {t.url} not healthy after {timeout_s:g}s (last: {t.last}){where}")
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((_client_host(host), port)) == 0


# ---------------------------------------------------------------------------------- the servers
@dataclass
class SGLangServers:
    """The servers (and router) a rollout engine talks to; launched by us or attached to."""

    server_urls: list[str]
    router_url: Optional[str] = None
    targets: list[Target] = field(default_factory=list)  # what we launched, servers then router
    max_restarts: int = 3  # per launched process, over the life of this object
    health_timeout_s: float = 600.0  # for a restarted process
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _closed: bool = False  # shut down: a restart still under way stops what it started

    @property
    def generate_url(self) -> Optional[str]:
        """Where `/generate` goes: the router when there is one (None: the client balances itself)."""
        return self.router_url

    @property
    def restart_count(self) -> int:
        """Restarts so far, all processes together (a weight-update group must be formed again after one)."""
        return sum(t.restarts for t in self.targets)

    @classmethod
    def attach(cls, urls: Sequence[str], *, router_url: Optional[str] = None, health_timeout_s: float = 60.0,
               key: str = "rollout.sglang.urls") -> "SGLangServers":
        """Running servers: no launch, only the health wait."""
        if not urls:
            raise ValueError(f"{key} is empty: give the running servers' URLs, or leave it empty to launch servers")
        servers = cls([check_url(u, key) for u in urls],
                      check_url(router_url, "rollout.sglang.router_url") if router_url else None,
                      health_timeout_s=health_timeout_s)
        targets = [Target(u) for u in servers.server_urls]
        if servers.router_url:
            targets.append(Target(servers.router_url, health_path=ROUTER_HEALTH_PATH))
        wait_healthy(targets, health_timeout_s)
        return servers

    @classmethod
    def launch(cls, cfg, model_path: str, *, log_dir: str, host: Optional[str] = None,
               gpu_offset: Optional[int] = None, seed: Optional[int] = None,
               extra_args: Optional[Sequence[str]] = None, router: Optional[bool] = None,
               router_policy: Optional[str] = None, launcher: Optional[Sequence[str]] = None,
               router_launcher: Optional[Sequence[str]] = None, env: Optional[dict] = None,
               device: Optional[str] = None, dtype: Optional[str] = None) -> "SGLangServers":
        """Start `cfg.num_servers` servers (an SGLangConfig) and, when `router` (default
        `cfg.router`; auto: more than one server and sglang_router in the servers' interpreter), the
        router; wait until all are healthy. The keyword arguments left None come from the config;
        `launcher` / `router_launcher` replace `<rollout.sglang.python> -m sglang.launch_server` /
        `-m sglang_router.launch_router` (tests)."""
        host = cfg.host if host is None else host
        device = resolve_device(cfg.device if device is None else device)
        if device == "cpu" and host not in LOOPBACK:
            raise SGLangLaunchError(
                f"rollout.sglang.host {host}: SGLang servers on the CPU serve this machine only; set "
                "rollout.sglang.host=127.0.0.1 (GPU servers may bind other addresses)")
        python = server_python(cfg.python)
        router = cfg.router if router is None else router
        if launcher is None:
            check_server_python(python)
        if router_launcher is None:
            # one interpreter start to ask, and only when the answer matters (a single server never gets a router)
            wanted = router is True or (router == "auto" and cfg.num_servers > 1)
            has_router = wanted and _has_module(python, "sglang_router")
            if router is True and not has_router:
                raise SGLangLaunchError(
                    f"rollout.sglang.router is true but {python} has no sglang_router: pip install sglang-router "
                    "there (launch/sglang_env.sh does), or set rollout.sglang.router to auto or false")
            if router == "auto":
                router = cfg.num_servers > 1 and has_router
            router_launcher = (python, "-m", ROUTER_MODULE)
        elif router == "auto":
            router = cfg.num_servers > 1
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        commands = server_commands(cfg, model_path, host=host, gpu_offset=gpu_offset, seed=seed,
                                   extra_args=extra_args, launcher=launcher, device=device, dtype=dtype)
        env = server_env(device, env)
        ports = [cfg.base_port + i for i in range(cfg.num_servers)] + ([cfg.router_port] if router else [])
        for port in ports:
            if _port_in_use(host, port):
                raise SGLangLaunchError(
                    f"port {port} on {_client_host(host)} is already in use: attach to a running server with "
                    "rollout.sglang.urls, stop it, or move rollout.sglang.base_port / router_port")
        servers = cls([url for url, _ in commands], max_restarts=cfg.max_restarts,
                      health_timeout_s=cfg.health_timeout_s)
        atexit.register(servers.shutdown)  # never leave GPU servers behind when the trainer dies
        try:
            for i, (url, cmd) in enumerate(commands):
                target = _start(url, cmd, Path(log_dir) / f"sglang-server-{i}.log", env)
                target.name = f"sglang server {i}"
                servers.targets.append(target)
            wait_healthy(servers.targets, cfg.health_timeout_s)
            if router:
                servers.router_url = f"http://{_client_host(host)}:{cfg.router_port}"
                cmd = router_command(servers.server_urls, port=cfg.router_port, host=host,
                                     policy=router_policy or cfg.router_policy, launcher=router_launcher)
                target = _start(servers.router_url, cmd, Path(log_dir) / "sglang-router.log", env)
                target.health_path, target.name = ROUTER_HEALTH_PATH, "sglang router"
                servers.targets.append(target)
                wait_healthy([target], cfg.health_timeout_s)
        except BaseException:
            servers.shutdown()
            raise
        return servers

    # ------------------------------------------------------------------ dead or hung processes
    def target_of(self, url: str) -> Optional[Target]:
        """The launched process serving `url` (None: attached, not ours)."""
        return next((t for t in self.targets if t.url == url and t.process is not None), None)

    def diagnose(self, target: Target, probe_timeout_s: float = 30.0) -> Optional[str]:
        """What is wrong with a launched process ("died (exit code -9)", "hung (...)"), or None
        when it is alive and answers its health probe."""
        code = target.process.poll()
        if code is not None:
            return f"died (exit code {code})"
        ok, what = probe(target.url, target.health_path, timeout_s=probe_timeout_s)
        if ok:
            return None
        if what.startswith("no reply"):
            return f"hung (alive, but its health probe got no reply within {probe_timeout_s:g}s)"
        return f"is unhealthy (alive, but its health probe got {what})"

    def recover(self, url: str, since: float, *, probe_timeout_s: float = 30.0) -> tuple[bool, list[str]]:
        """After a request to `url` (a server or the router) failed for good: restart whichever of
        the launched processes behind it is dead or hung. `since`: time.monotonic() when the failed
        request was first sent (a process restarted after that is not restarted again: another
        request's recovery already did it). Returns (recovered, restarted URLs): recovered False
        means every process is alive and healthy (the failure was not theirs). Raises
        SGLangLaunchError (one line) for an attached server, after `max_restarts`, or when the
        restarted process does not come up."""
        with self._lock:
            if url == self.router_url:
                behind = [t for t in self.targets if t.process is not None]
                if not behind:
                    raise SGLangLaunchError(
                        f"sglang router {url} and its servers were attached (rollout.sglang.router_url, urls), not "
                        "launched by us, so they cannot be restarted: restart them and rerun")
            else:
                target = self.target_of(url)
                if target is None:
                    raise SGLangLaunchError(
                        f"SGLang server {url} was attached (rollout.sglang.urls), not launched by us, so it cannot "
                        "be restarted: restart it (check its log) and rerun")
                behind = [target]
            recovered, restarted = False, []
            for t in behind:
                if t.started_at > since:
                    recovered = True  # restarted after the request was sent: send it again
                    continue
                why = self.diagnose(t, probe_timeout_s)
                if why is not None:
                    self.restart(t, why)
                    recovered = True
                    restarted.append(t.url)
            return recovered, restarted

    def restart(self, target: Target, why: str, *, grace_s: float = 5.0) -> None:
        """Kill what is left of `target`'s process group, start the same command on the same port
        (its log appended to) and wait until it is healthy."""
        if target.cmd is None:
            raise SGLangLaunchError(f"{target.name} ({target.url}) {why} and was not launched by us: restart it")
        where = f"log: {target.log_path}"
        if target.restarts >= self.max_restarts:
            line = last_log_line(target.log_path)
            raise SGLangLaunchError(
                f"{target.name} ({target.url}) {why} after {target.restarts} restart"
                f"{'' if target.restarts == 1 else 's'} (rollout.sglang.max_restarts {self.max_restarts}); {where}"
                + (f"; last log line: {line!r}" if line else "")
                + "; fix what the log says or raise rollout.sglang.max_restarts")
        target.restarts += 1
        message = (f"{target.name} ({target.url}) {why}; restarting (restart {target.restarts} of "
                   f"{self.max_restarts}), {where}")
        log.warning(message)
        _stop(target.process, grace_s)  # a hung process and whatever its workers left
        if self._closed:
            raise SGLangLaunchError(f"{target.name} ({target.url}) not restarted: the servers were shut down")
        fresh = _start(target.url, target.cmd, Path(target.log_path), target.env, note=message)
        target.process, target.started_at, target.last = fresh.process, fresh.started_at, "no answer yet"
        if self._closed:  # shutdown ran while it started: do not leave it behind
            _stop(target.process, grace_s)
            raise SGLangLaunchError(f"{target.name} ({target.url}) not restarted: the servers were shut down")
        wait_healthy([target], self.health_timeout_s,
                     timeout_fix="raise rollout.sglang.health_timeout_s if it is still loading")

    def shutdown(self, grace_s: float = 20.0) -> None:
        """Stop what we launched (router first): SIGTERM to each process group, SIGKILL after `grace_s`."""
        self._closed = True
        for t in reversed(self.targets):
            _stop(t.process, grace_s)
        self.targets = [t for t in self.targets if t.process is None]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.shutdown()


def _start(url: str, cmd: list[str], log_path: Path, env: Optional[dict], note: Optional[str] = None) -> Target:
    log_file = open(log_path, "ab")
    if note:
        log_file.write(f"\n[megatron-rl] {note}\n".encode())
    log_file.write(f"\n$ {' '.join(cmd)}\n".encode())
    log_file.flush()
    # a session of its own: shutdown can signal the server and every TP worker it spawned at once
    proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, env=env)
    log_file.close()  # the child keeps its own descriptor
    return Target(url, proc, str(log_path), cmd=list(cmd), env=env, started_at=time.monotonic())


def _has_module(python: str, module: str) -> bool:
    try:
        return subprocess.run([python, "-c", f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"],
                              capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def shm_in_use(shm_dir: str = "/dev/shm") -> set[str]:
    """Names in `shm_dir` that a live process has open or mapped (from /proc; those we may not read
    are skipped: they belong to other users, whose files we do not remove either)."""
    used = set()
    prefix = shm_dir.rstrip("/") + "/"
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith(prefix):
                    used.add(target[len(prefix):].split(" ")[0])
            with open(f"/proc/{pid}/maps") as maps:
                for line in maps:
                    at = line.find(prefix)
                    if at >= 0:
                        used.add(line[at + len(prefix):].split(" ")[0].strip())
        except OSError:
            continue
    return used


def remove_shm_leftovers(prefixes: Sequence[str] = SHM_PREFIXES, shm_dir: str = "/dev/shm") -> list[str]:
    """Remove this user's files in `shm_dir` with one of `prefixes` that no live process uses (what
    stopped SGLang processes leave behind: load snapshots, shared buffers, multiprocessing
    semaphores; seen after every stop); returns their names."""
    try:
        names = [n for n in os.listdir(shm_dir) if n.startswith(tuple(prefixes))]
    except OSError:
        return []
    if not names:
        return []
    used, removed = shm_in_use(shm_dir), []
    for name in names:
        path = os.path.join(shm_dir, name)
        try:
            if name not in used and os.stat(path).st_uid == os.getuid():
                os.unlink(path)
                removed.append(name)
        except OSError:
            continue
    return removed


def _stop(proc: Optional[subprocess.Popen], grace_s: float) -> None:
    if proc is None:
        return
    if proc.poll() is None:
        _signal_group(proc.pid, signal.SIGTERM)  # sglang's launcher stops its TP workers on SIGTERM
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    _signal_group(proc.pid, signal.SIGKILL)  # whatever is left of the group (a hung worker)
    try:
        proc.wait(timeout=10.0)
    except subprocess.TimeoutExpired:
        pass
    removed = remove_shm_leftovers()
    if removed:
        log.info("removed %d SGLang file(s) left in /dev/shm: %s", len(removed), " ".join(removed))


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)  # start_new_session: the group id is our child's pid
    except (ProcessLookupError, PermissionError):
        pass
