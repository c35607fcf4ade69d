"""RewardRunner: every (sample, source) call in worker processes, with a per-call timeout.

Why processes: a reward function may hang (a sympy simplification that never ends, a user function
waiting on a socket). A thread cannot be killed, so the runner keeps `workers` long-lived worker
processes and can kill and replace one that is stuck. They are started with `subprocess` (fork +
exec of a fresh interpreter), never a bare fork of the trainer, which holds torch, CUDA and gloo
state; unlike multiprocessing's spawn they also do not re-import the trainer's `__main__`. They
import only `megatron_rl.rewards` and the sources' own modules (math-verify/sympy for `math`).

How a batch runs: the inputs are cut into chunks (about four per worker, for load balance) and each
idle worker is sent the next chunk; it runs every source on each of its samples in order and sends
back one message per call. Timeouts, in two layers:

1. in the worker, each call runs under `signal.setitimer` (the worker's main thread): after
   `timeout_s` a `CallTimeout` (a BaseException, so `except Exception` in user code does not swallow
   it) interrupts Python code, including `time.sleep`; the worker carries on with the next call;
2. in the runner, a call still running `kill_grace_s` after its timeout (stuck in C code, or its
   code caught the exception) gets its worker killed; the call counts as timed out, the rest of
   that worker's chunk goes back to the queue and a fresh worker is started in the background.

A call that raises, times out or whose worker died scores 0 for that source and marks its sample
failed; the batch always completes and one warning line summarises what failed. A worker that cannot
start (its source cannot be rebuilt there) is a setup error: `score` raises `RuntimeError`.

Batched sources: a source with `score_batch(inputs) -> list` (one score, or an Exception for a
failed sample, per input) is called once per chunk of its `batch_size` samples instead of once per
sample (the remote source sends one HTTP request per chunk). Each such call is one timed call: it
timing out, raising, returning the wrong number of scores or losing its worker fails every sample
of the chunk for that source (each counted in the metrics as a per-sample call would be). A source
with a `call_timeout_s` attribute gets that timeout instead of `timeout_s` (the remote source's
covers its own retries).

The worker sets `SIGINT` to ignored (Ctrl-C is the trainer's to handle), and exits when its
connection closes or its parent process goes away.
"""
from __future__ import annotations

import atexit
import collections
import logging
import math
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any, Optional, Sequence

from .base import RewardFunction, RewardInput, RewardResult, as_score, as_step_scores

logger = logging.getLogger("megatron_rl.rewards")

_ERROR_CHARS = 300
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class CallTimeout(BaseException):
    """Raised inside a worker when one reward call runs past the timeout."""


# --------------------------------------------------------------------------------------------
# the worker process


def _one_line(exc: BaseException) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= _ERROR_CHARS else text[: _ERROR_CHARS - 3] + "..."


def _on_alarm(signum, frame):
    raise CallTimeout()


def _watch_parent(parent_pid: int) -> None:
    while True:
        time.sleep(0.5)
        if os.getppid() != parent_pid:
            os._exit(1)


def _run_batch(fn: Any, inputs: list, timeout_s: float) -> tuple[str, Any]:
    """One `score_batch` call: ("ok", [(status, value) per input]) or (status, message) for all."""
    name = getattr(fn, "name", "reward")
    try:
        try:
            signal.setitimer(signal.ITIMER_REAL, timeout_s)
            values = list(fn.score_batch(inputs))
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except CallTimeout:
        return "timeout", f"timed out after {timeout_s:g} s"
    except BaseException as exc:  # noqa: BLE001
        return "error", _one_line(exc)
    if len(values) != len(inputs):
        return "error", f"score_batch returned {len(values)} scores for {len(inputs)} samples"
    out = []
    for value in values:
        if isinstance(value, BaseException):
            out.append(("error", _one_line(value)))
            continue
        try:
            out.append(("ok", as_score(value, name)))
        except (TypeError, ValueError) as exc:
            out.append(("error", _one_line(exc)))
    return "ok", out


def _run_call(fn: RewardFunction, inp: RewardInput, timeout_s: float) -> tuple[str, Any]:
    try:
        try:
            signal.setitimer(signal.ITIMER_REAL, timeout_s)
            value = fn(inp)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        name = getattr(fn, "name", "reward")
        if getattr(fn, "per_step", False):  # a list, one score per step (validated by the source)
            return "ok", as_step_scores(value, len(inp.steps), name)
        return "ok", as_score(value, name)
    except CallTimeout:
        return "timeout", f"timed out after {timeout_s:g} s"
    except BaseException as exc:  # noqa: BLE001 - SystemExit from user code is a failed call too
        return "error", _one_line(exc)


def _worker_main(fd: int) -> None:
    """Entry point of a worker process (see `_start_worker`): serve chunks until told to stop."""
    conn = Connection(fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGALRM, _on_alarm)
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout disabled": we time calls
    try:
        _, sys_path, timeouts, payload = conn.recv()
        for entry in reversed(sys_path):
            if entry not in sys.path:
                sys.path.insert(0, entry)
        sources = pickle.loads(payload)
        for fn in sources:  # e.g. import math-verify now, not inside the first timed call
            warmup = getattr(fn, "warmup", None)
            if warmup is not None:
                warmup()
    except BaseException as exc:  # noqa: BLE001
        conn.send(("init_error", _one_line(exc)))
        return
    conn.send(("ready", os.getpid()))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg[0] != "run":
            return
        _, batch, tasks = msg
        for key, js, payload in tasks:  # key: a sample index, or a tuple of them for a batch call
            for j in js:
                if isinstance(key, tuple):
                    status, value = _run_batch(sources[j], payload, timeouts[j])
                else:
                    status, value = _run_call(sources[j], payload, timeouts[j])
                conn.send(("done", batch, key, j, status, value))


# --------------------------------------------------------------------------------------------
# the runner side


@dataclass
class _Worker:
    proc: subprocess.Popen
    conn: Connection
    started: float  # when the process was started
    ready: bool = False
    calls: collections.deque = field(default_factory=collections.deque)  # (i, j) still to come, in order
    inputs: dict = field(default_factory=dict)  # i -> RewardInput, for requeueing
    call_started: float = 0.0  # when the head of `calls` started (estimate: last message)


def _kill(worker: _Worker) -> None:
    try:
        worker.proc.kill()
        worker.proc.wait(timeout=5)
    except Exception:  # noqa: BLE001 - already gone
        pass
    worker.conn.close()


def _shutdown(workers: list) -> None:
    for w in workers:
        try:
            w.conn.send(("stop",))
        except Exception:  # noqa: BLE001
            pass
    deadline = time.monotonic() + 1.0
    for w in workers:
        try:
            w.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        _kill(w)
    workers.clear()


def _task_inputs(tasks: list) -> dict:
    """sample index -> RewardInput over a chunk's tasks (per-sample and batch ones)."""
    out = {}
    for key, _, payload in tasks:
        if isinstance(key, tuple):
            out.update(zip(key, payload))
        else:
            out[key] = payload
    return out


_LIVE: "weakref.WeakSet[RewardRunner]" = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for runner in list(_LIVE):
        runner.close()


class RewardRunner:
    """Scores batches with weighted reward sources in `workers` worker processes.

    sources: (name, weight, function) triples; functions must be picklable (the built-in sources
    and `PythonFunctionReward` are). Workers start at construction, in the background.
    """

    def __init__(
        self,
        sources: Sequence[tuple[str, float, RewardFunction]],
        *,
        timeout_s: float = 10.0,
        workers: int = 4,
        kill_grace_s: float = 1.0,
        start_timeout_s: float = 120.0,
        chunks_per_worker: int = 4,
    ):
        if not sources:
            raise ValueError("RewardRunner needs at least one source")
        self.names = [name for name, _, _ in sources]
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"source names must be unique, got {self.names}")
        self.weights = [float(w) for _, w, _ in sources]
        self.timeout_s = float(timeout_s)
        self.num_workers = int(workers)
        self.kill_grace_s = float(kill_grace_s)
        self.start_timeout_s = float(start_timeout_s)
        self.chunks_per_worker = int(chunks_per_worker)
        fns = [fn for _, _, fn in sources]
        self._batched = [callable(getattr(fn, "score_batch", None)) for fn in fns]
        self._batch_sizes = [max(1, int(getattr(fn, "batch_size", None) or 32)) for fn in fns]
        self._timeouts = [float(getattr(fn, "call_timeout_s", None) or self.timeout_s) for fn in fns]
        self._per_step = [bool(getattr(fn, "per_step", False)) for fn in fns]
        if any(p and b for p, b in zip(self._per_step, self._batched)):
            raise ValueError("a batched source (score_batch) cannot score per step")
        self._payload = pickle.dumps(fns)
        self._workers: list[_Worker] = []
        self._batch = 0
        self._closed = False
        self._finalizer = weakref.finalize(self, _shutdown, self._workers)
        _LIVE.add(self)
        self._fill()

    # ---- worker management -------------------------------------------------------------------

    def _start_worker(self) -> _Worker:
        import socket

        parent_sock, child_sock = socket.socketpair()
        # the package's parent directory goes last on the child's path: found there only when not
        # installed (a source checkout run from elsewhere)
        code = (f"import sys; sys.path.append({_PACKAGE_PARENT!r}); "
                "from megatron_rl.rewards.runner import _worker_main; _worker_main(int(sys.argv[1]))")
        try:
            proc = subprocess.Popen(
                [sys.executable, "-c", code, str(child_sock.fileno())],
                pass_fds=(child_sock.fileno(),), stdin=subprocess.DEVNULL,
            )
        finally:
            child_sock.close()
        conn = Connection(parent_sock.detach())
        conn.send(("init", list(sys.path), self._timeouts, self._payload))
        return _Worker(proc=proc, conn=conn, started=time.monotonic())

    def _fill(self) -> None:
        """Replace exited workers and start missing ones (they get ready in the background)."""
        for w in [w for w in self._workers if w.proc.poll() is not None]:
            self._workers.remove(w)
            _kill(w)
        while len(self._workers) < self.num_workers:
            self._workers.append(self._start_worker())

    def _replace(self, worker: _Worker) -> None:
        _kill(worker)
        self._workers.remove(worker)
        self._workers.append(self._start_worker())

    def close(self) -> None:
        """Stop the workers (idempotent; also runs at interpreter exit)."""
        self._closed = True
        self._finalizer()

    def __enter__(self) -> "RewardRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- scoring ------------------------------------------------------------------------------

    def score(self, inputs: Sequence[RewardInput]) -> RewardResult:
        """Score `inputs` with every source; never raises for a failing or hanging source."""
        if self._closed:
            raise RuntimeError("RewardRunner.score called after close()")
        t0 = time.monotonic()
        n, s = len(inputs), len(self.names)
        values = [[0.0] * s for _ in range(n)]
        status: list[list[Optional[str]]] = [[None] * s for _ in range(n)]
        messages: list[list[Optional[str]]] = [[None] * s for _ in range(n)]
        self._batch += 1
        batch = self._batch
        restarts = 0

        def finish(i: int, j: int, st: str, value: Any) -> None:
            if status[i][j] is not None:
                return
            status[i][j] = st
            if st == "ok":
                values[i][j] = list(value) if isinstance(value, list) else float(value)  # a list: per-step
            else:
                messages[i][j] = str(value)

        def finish_call(key: Any, j: int, st: str, value: Any) -> None:
            if not isinstance(key, tuple):
                finish(key, j, st, value)
            elif st == "ok":  # a batch call: one (status, value) per sample
                for i, (st_i, value_i) in zip(key, value):
                    finish(i, j, st_i, value_i)
            else:
                for i in key:
                    finish(i, j, st, value)

        # batch calls first (they mostly wait on a server), then per-sample chunks
        queue = collections.deque(
            [(tuple(range(lo, min(n, lo + self._batch_sizes[j]))), [j], list(inputs[lo:lo + self._batch_sizes[j]]))]
            for j in range(s) if self._batched[j] for lo in range(0, n, self._batch_sizes[j])
        )
        per_sample = [j for j in range(s) if not self._batched[j]]
        if per_sample:
            size = max(1, math.ceil(n / (self.num_workers * self.chunks_per_worker)))
            queue.extend(
                [(i, per_sample, inputs[i]) for i in range(lo, min(n, lo + size))] for lo in range(0, n, size)
            )
        self._fill()
        clean = False
        try:
            while queue or any(w.calls for w in self._workers):
                now = time.monotonic()
                # hand chunks to idle ready workers
                for w in list(self._workers):
                    if not (w.ready and not w.calls and queue):
                        continue
                    tasks = queue.popleft()
                    try:
                        w.conn.send(("run", batch, tasks))
                    except (pickle.PicklingError, TypeError, AttributeError) as exc:
                        for key, js, _ in tasks:
                            for j in js:
                                finish_call(key, j, "error", f"cannot send the sample to a worker: {_one_line(exc)}")
                        continue
                    except OSError:
                        queue.appendleft(tasks)
                        self._replace(w)
                        restarts += 1
                        continue
                    w.calls.extend((key, j) for key, js, _ in tasks for j in js)
                    w.inputs = _task_inputs(tasks)
                    w.call_started = now
                # wait for messages or the next deadline
                deadlines = [w.call_started + self._timeouts[w.calls[0][1]] + self.kill_grace_s
                             for w in self._workers if w.calls]
                deadlines += [w.started + self.start_timeout_s for w in self._workers if not w.ready]
                wait_s = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
                ready = wait([w.conn for w in self._workers], timeout=wait_s)
                now = time.monotonic()
                for w in list(self._workers):
                    if w.conn not in ready:
                        continue
                    try:
                        while w.conn.poll():
                            msg = w.conn.recv()
                            now = time.monotonic()
                            if msg[0] == "ready":
                                w.ready = True
                            elif msg[0] == "init_error":
                                raise RuntimeError(
                                    f"a reward worker could not start: {msg[1]} (the sources were built here "
                                    "but not in a fresh process: check that their modules import there)"
                                )
                            elif msg[0] == "done" and msg[1] == batch:
                                _, _, i, j, st, value = msg
                                finish_call(i, j, st, value)
                                if w.calls and w.calls[0] == (i, j):
                                    w.calls.popleft()
                                w.call_started = now
                    except (EOFError, OSError):  # the worker died: its current call fails
                        code = w.proc.wait()
                        if w.calls:
                            i, j = w.calls.popleft()
                            finish_call(i, j, "error", f"the reward worker died (exit code {code}) during this call")
                        self._requeue(w, queue)
                        self._replace(w)
                        restarts += 1
                # calls past their deadline: kill the worker, requeue the rest of its chunk
                for w in list(self._workers):
                    if w.calls and now > w.call_started + self._timeouts[w.calls[0][1]] + self.kill_grace_s:
                        i, j = w.calls.popleft()
                        finish_call(i, j, "timeout", f"timed out after {self._timeouts[j]:g} s (worker killed)")
                        self._requeue(w, queue)
                        self._replace(w)
                        restarts += 1
                    elif not w.ready and now > w.started + self.start_timeout_s:
                        if not any(o.ready for o in self._workers):
                            raise RuntimeError(
                                f"no reward worker started within {self.start_timeout_s:g} s: check that "
                                "the reward sources' modules import quickly in a fresh process"
                            )
                        self._replace(w)  # the others carry the batch meanwhile
                        restarts += 1
            clean = True
            for w in self._workers:
                w.inputs = {}
        finally:
            if not clean:  # interrupted: workers still busy with this batch would confuse the next
                for w in [w for w in self._workers if w.calls]:
                    self._workers.remove(w)
                    _kill(w)
        return self._result(values, status, messages, restarts, time.monotonic() - t0,
                            steps=[len(inp.steps) for inp in inputs])

    @staticmethod
    def _requeue(worker: _Worker, queue: collections.deque) -> None:
        rest: dict[Any, list[int]] = {}
        for key, j in worker.calls:
            rest.setdefault(key, []).append(j)
        worker.calls.clear()
        if rest:
            inputs = worker.inputs
            queue.appendleft([
                (key, js, [inputs[i] for i in key] if isinstance(key, tuple) else inputs[key])
                for key, js in rest.items()
            ])

    def _result(self, values, status, messages, restarts: int, elapsed: float, steps: Sequence[int]) -> RewardResult:
        """`steps`: each input's number of steps (per-step sources score each; a failed call scores 0s)."""
        n, names = len(values), self.names
        per_step = self._per_step
        # a per-step call that failed left its scalar 0.0: its steps score 0
        step_values = [[v if isinstance(v, list) else [0.0] * steps[i] for v in row] for i, row in enumerate(values)]
        # a per-step source's scalar is the mean of its step scores (reward/mean, accuracy, filters)
        values = [[(sum(v) / len(v) if v else 0.0) if isinstance(v, list) else v for v in row] for row in values]
        scores = [sum(w * v for w, v in zip(self.weights, row)) for row in values]
        step_scores = None
        if any(per_step):
            step_scores = []
            for i, row in enumerate(step_values):
                outcome = sum(w * values[i][j] for j, w in enumerate(self.weights) if not per_step[j])
                rewards = [sum(w * row[j][k] for j, w in enumerate(self.weights) if per_step[j]) for k in range(steps[i])]
                if rewards:
                    rewards[-1] += outcome
                step_scores.append(rewards)
        failed = [any(st != "ok" for st in row) for row in status]
        errors = [
            next((f"{names[j]}: {m}" for j, m in enumerate(row) if m is not None), None) for row in messages
        ]
        metrics: dict[str, float] = {
            "reward/mean": sum(scores) / n if n else 0.0,
            "reward/failed": float(sum(failed)),
            "reward/timeouts": float(sum(st == "timeout" for row in status for st in row)),
            "reward/errors": float(sum(st == "error" for row in status for st in row)),
            "reward/worker_restarts": float(restarts),
            "reward/time_s": elapsed,
        }
        source_scores = {}
        for j, name in enumerate(names):
            column = [row[j] for row in values]
            source_scores[name] = column
            metrics[f"reward/{name}_mean"] = sum(column) / n if n else 0.0
            metrics[f"reward/{name}_failed"] = float(sum(row[j] != "ok" for row in status))
        if any(failed):
            logger.warning(self._summary(status, messages, sum(failed), n, restarts))
        return RewardResult(scores=scores, failed=failed, errors=errors, source_scores=source_scores, metrics=metrics,
                            step_scores=step_scores)

    def _summary(self, status, messages, n_failed: int, n: int, restarts: int) -> str:
        parts = []
        for j, name in enumerate(self.names):
            timeouts = sum(row[j] == "timeout" for row in status)
            errs = [m[j] for row, m in zip(status, messages) if row[j] == "error"]
            bits = []
            if errs:
                bits.append(f"{len(errs)} raised, first: {errs[0]}")
            if timeouts:
                bits.append(f"{timeouts} timed out")
            if bits:
                parts.append(f"{name}: {', '.join(bits)}")
        tail = f"; restarted {restarts} worker{'s' if restarts != 1 else ''}" if restarts else ""
        return f"reward: {n_failed} of {n} samples failed ({'; '.join(parts)}{tail})"


class NoWorkerRewards:
    """The reward runner of a run whose only source is the reward model: every rule-based sum is 0."""

    def score(self, inputs: Sequence[RewardInput]) -> RewardResult:
        n = len(inputs)
        return RewardResult(scores=[0.0] * n, failed=[False] * n, errors=[None] * n, source_scores={},
                            metrics={"reward/failed": 0.0, "reward/timeouts": 0.0})

    def close(self) -> None:
        pass
