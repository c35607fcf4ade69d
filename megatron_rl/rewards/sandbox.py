"""Run an untrusted Python program in a sandboxed subprocess (what the `code` reward builds on).

    result = run("print(int(input()) * 2)", stdin="21\\n", limits=Limits(time_s=2))
    result.status, result.stdout, result.layers   # "ok", "42\\n", ("parent_death_signal", "user_ns", ...)

Each run gets a fresh interpreter (`python -I -B`: no user site, no PYTHON* variables, no cwd on the
path) in a new session, with a scrubbed environment and a fresh temporary directory as its cwd that
is removed afterwards (with anything the program left in it). The child isolates itself before the
program starts (`sandbox_child.py`: namespaces, capabilities, rlimits, seccomp, audit hook) and
reports which layers took effect; the parent enforces the wall clock by killing the whole process
group. stdin, stdout and stderr are files outside the work directory, so output is bounded by the
file-size limit, not by the parent's memory.

Statuses: `ok` (exit code 0), `error` (non-zero exit: an exception, MemoryError, a blocked call),
`timeout` (wall clock: the process group was killed), `killed` (a signal: SIGXCPU at the CPU limit,
SIGKILL, SIGSEGV, ...). A sandbox that cannot start at all raises `SandboxError`: that is a problem
of the machine, not of the program.

It is not a container: see docs/rewards.md for what each layer does and what it does not stop.
"""
from __future__ import annotations

import functools
import json
import math
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

_CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_child.py")
STARTUP_S = 1.0  # wall clock granted on top of the limit for the interpreter to start
_TAIL = 2000  # characters of stderr kept


class SandboxError(RuntimeError):
    """The sandbox itself failed (no interpreter, no temp dir): not the program's fault."""


@dataclass(frozen=True)
class Limits:
    """Per run. The CPU limit is `time_s` rounded up; the wall clock is `time_s` + STARTUP_S."""

    time_s: float = 5.0
    memory_mb: int = 1024  # address space (RLIMIT_AS)
    file_mb: int = 64  # largest file the program may write, its stdout included (RLIMIT_FSIZE)
    processes: int = 32  # RLIMIT_NPROC (counts threads; see the docs for root)
    open_files: int = 64  # RLIMIT_NOFILE
    disk_mb: int = 128  # the work dir's size: everything the program writes, together (a tmpfs: RAM)


@dataclass
class RunResult:
    status: str  # ok | error | timeout | killed
    returncode: Optional[int]  # None on timeout; negative: the signal that ended it
    stdout: str
    stderr: str  # its last _TAIL characters
    elapsed_s: float
    layers: tuple  # the isolation layers that took effect (sandbox_child.py)
    reason: str = ""  # one line: why it was not ok
    verdicts: list = field(default_factory=list)  # asserts mode: True/False per test, in order


@functools.lru_cache(maxsize=1)
def _child_source() -> str:
    with open(_CHILD, encoding="utf-8") as f:
        return f.read()


def _env(work: str) -> dict:
    # nothing of the trainer's environment (tokens, paths, CUDA settings) reaches the program
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
    }


def _remove(path: str) -> None:
    """rmtree that also gets through directories the program made unreadable."""

    def fix(func, p, _exc):
        try:
            os.chmod(os.path.dirname(p), stat.S_IRWXU)
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, stat.S_IRWXU)
            func(p)
        except FileNotFoundError:
            pass

    shutil.rmtree(path, onerror=fix)


def _read(path: str, limit: int) -> str:
    with open(path, "rb") as f:
        return f.read(limit).decode("utf-8", errors="replace")


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def split_assert(test: str):
    """`assert <expr> == <literal>` (one statement, an optional message) -> (the expression's source,
    the literal's value); None for any other test. The expression is evaluated in the sandbox and
    its repr compared here, so the expected value never enters the program's process and a verdict
    cannot be forged from inside it (an object whose __eq__ always says True has no literal repr)."""
    import ast

    try:
        tree = ast.parse(test)
    except SyntaxError:
        return None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Assert):
        return None
    test_expr = tree.body[0].test
    if not (isinstance(test_expr, ast.Compare) and len(test_expr.ops) == 1 and isinstance(test_expr.ops[0], ast.Eq)):
        return None
    try:
        expected = ast.literal_eval(test_expr.comparators[0])
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None
    return ast.get_source_segment(test, test_expr.left), expected


def _judge_value(line: str, expected) -> bool:
    """The sandbox's repr of a value against the expected literal, with the test's own ==."""
    import ast

    try:
        got = ast.literal_eval(line)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False  # not a literal: a custom object, or a forged line
    try:
        return bool(got == expected)  # the assert's own comparison, on plain values
    except Exception:  # noqa: BLE001
        return False


def run(
    program: str,
    *,
    stdin: str = "",
    asserts: Optional[Sequence[str]] = None,
    limits: Limits = Limits(),
    namespaces: bool = True,
    seccomp: bool = True,
    audit_hook: bool = True,
    python: str = sys.executable,
) -> RunResult:
    """Run `program` once. With `asserts`, run it as a module (`__name__ == "solution"`), then each
    test in its namespace; `verdicts` says which passed. A test `assert <expr> == <literal>` is
    judged here: the sandbox sends back repr(<expr>) and this process compares it with the literal,
    which the program never sees; any other test block passes when it runs without raising, a
    verdict the program could forge (docs/rewards.md). The switches turn layers off (for tests of
    one layer alone); they never fail when a layer is unavailable."""
    root = tempfile.mkdtemp(prefix="megatron_rl_sandbox_")
    proc = None
    try:
        work = os.path.join(root, "work")
        os.mkdir(work, 0o700)
        with open(os.path.join(work, "solution.py"), "w", encoding="utf-8") as f:
            f.write(program)
        tests_file = None
        judged = [split_assert(t) for t in asserts] if asserts is not None else []
        if asserts is not None:  # read (and deleted) by the child before the program starts
            tests_file = os.path.join(work, ".tests.json")
            with open(tests_file, "w", encoding="utf-8") as f:  # the expected literals stay here
                json.dump([{"expr": j[0]} if j else {"block": t} for t, j in zip(asserts, judged)], f)
        paths = {name: os.path.join(root, name) for name in ("stdin", "stdout", "stderr", "report")}
        with open(paths["stdin"], "w", encoding="utf-8") as f:
            f.write(stdin)
        cfg = {
            "parent": os.getpid(), "program": "solution.py", "asserts": tests_file,
            "namespaces": namespaces, "seccomp": seccomp, "audit_hook": audit_hook,
            "limits": {"cpu_s": max(1, math.ceil(limits.time_s)), "memory_bytes": limits.memory_mb << 20,
                       "file_bytes": limits.file_mb << 20, "processes": limits.processes,
                       "open_files": limits.open_files, "disk_bytes": limits.disk_mb << 20},
        }
        t0 = time.monotonic()
        with open(paths["stdin"], "rb") as fin, open(paths["stdout"], "wb") as fout, \
                open(paths["stderr"], "wb") as ferr, open(paths["report"], "wb") as frep:
            cfg["report_fd"] = frep.fileno()
            # an alarm (the reward runner's per-call timeout) must not land between fork and `proc = `
            old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
            try:
                proc = subprocess.Popen(
                    [python, "-I", "-B", "-c", _child_source(), json.dumps(cfg)],
                    cwd=work, env=_env(work), stdin=fin, stdout=fout, stderr=ferr, pass_fds=(frep.fileno(),),
                    start_new_session=True, close_fds=True,
                )
            except OSError as exc:
                raise SandboxError(f"cannot start the sandbox interpreter {python!r}: {exc}") from None
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        try:
            proc.wait(timeout=limits.time_s + STARTUP_S)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
        elapsed = time.monotonic() - t0
        _kill_group(proc)
        report = _read(paths["report"], 1 << 20).splitlines()
        stderr = _read(paths["stderr"], 1 << 24)[-_TAIL:]
        if not report:
            if timed_out:
                raise SandboxError(f"the sandbox did not start within {limits.time_s + STARTUP_S:g} s")
            raise SandboxError(f"the sandbox did not start (exit code {proc.returncode}): "
                               f"{' '.join(stderr.split())[-300:]}")
        layers = tuple(json.loads(report[0])["layers"])
        stdout = _read(paths["stdout"], limits.file_mb << 20)
        verdicts = []
        program_error = ""
        if asserts is not None:
            verdicts = [False] * len(asserts)
            values: dict[int, list[str]] = {}
            for line in report[1:]:
                kind, _, rest = line.partition(" ")
                index, _, value = rest.partition(" ")
                k = int(index) if index.isdigit() and int(index) < len(verdicts) else None
                if kind == "pass" and k is not None and judged[k] is None and not value:
                    verdicts[k] = True
                elif kind == "value" and k is not None:
                    values.setdefault(k, []).append(value)
                elif kind == "program":
                    program_error = rest
            for k, sent in values.items():  # one value per judged test: a second line is a forgery
                verdicts[k] = judged[k] is not None and len(sent) == 1 and _judge_value(sent[0], judged[k][1])
        if timed_out:
            status, reason = "timeout", f"wall-clock limit of {limits.time_s:g} s"
        elif proc.returncode < 0:
            name = _signal_name(-proc.returncode)
            why = {"SIGXCPU": " (CPU time limit)", "SIGXFSZ": " (file size limit)"}.get(name, "")
            status, reason = "killed", f"killed by {name}{why}"
        elif proc.returncode == 0:
            status, reason = "ok", ""
        else:
            status, reason = "error", program_error or _exception_line(stderr) or f"exit code {proc.returncode}"
        return RunResult(status=status, returncode=None if timed_out else proc.returncode, stdout=stdout,
                         stderr=stderr, elapsed_s=elapsed, layers=layers, reason=reason, verdicts=verdicts)
    finally:
        # an alarm arriving now is delivered after the cleanup, not in the middle of it
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        try:
            if proc is not None:  # interrupted (e.g. the runner's timeout): nothing of it may survive
                _kill_group(proc)
            _remove(root)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def _exception_line(stderr: str) -> str:
    """The `Name: message` line of the last traceback in `stderr`, else its last non-blank line."""
    lines = stderr.splitlines()
    starts = [k for k, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")]
    if starts:
        for line in lines[starts[-1] + 1:]:
            if line.strip() and not line.startswith(" "):
                return line.strip()
    rest = [line.strip() for line in lines if line.strip()]
    return rest[-1] if rest else ""


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the run's whole process group (forks included) and reap the leader."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


@functools.lru_cache(maxsize=1)
def probe() -> tuple:
    """The layers a run gets on this machine (runs an empty program once; cached)."""
    return run("pass", limits=Limits(time_s=5)).layers


# every layer `run` can set up, in the order the report lists them
ALL_LAYERS = ("parent_death_signal", "user_ns", "net_ns", "readonly_fs", "hidden_fs", "disk_quota",
              "no_capabilities", "rlimits", "seccomp", "audit_hook")
