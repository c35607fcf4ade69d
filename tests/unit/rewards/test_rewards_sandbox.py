"""Code-execution reward and its sandbox: scores, limits, and each isolation layer on its own.

Every "is it blocked" test has a control with the layers off showing the same check does see the
effect (a connection, a file), so the blocked case cannot pass by accident. Layers this machine
cannot give (user namespaces off, root and RLIMIT_NPROC) are skipped with the reason.
"""
import glob
import json
import logging
import os
import re
import select
import socket
import sys
import tempfile
import threading
import time

import pytest

from megatron_rl.config.schema import RewardConfig, RewardSource
from megatron_rl.rewards import CodeReward, RewardInput, build_reward_runner
from megatron_rl.rewards.code_exec import SandboxStopped, extract_program, parse_tests, same_output
from megatron_rl.rewards.sandbox import STARTUP_S, Limits, probe, run

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox is Linux-only")

NO_LAYERS = dict(namespaces=False, seccomp=False, audit_hook=False)
ADD = "a, b = map(int, input().split())\nprint(a + b)\n"
STDIO = {"inputs": ["1 2\n", "5 5\n", "-3 3\n", "10 -4\n"], "outputs": ["3\n", "10\n", "0\n", "6\n"]}


def _layers():
    return probe()


def _needs(layer):
    return pytest.mark.skipif(layer not in _layers(), reason=f"this machine gives the sandbox no {layer}")


def _sample(response, tests=STDIO, **kw):
    return RewardInput(prompt="add two numbers", response=response, answer=None, metadata={"tests": tests}, **kw)


# ---- program, tests, comparison ---------------------------------------------------------------


def test_extract_program():
    assert extract_program("text\n```python\nprint(1)\n```\nmore\n```python\nprint(2)\n```\n") == "print(2)\n"
    assert extract_program("```\nprint(3)\n```") == "print(3)\n"
    assert extract_program("```py\nA\n```\n```\nB\n```") == "A\n"  # a tagged block beats an untagged one
    assert extract_program("```bash\nls\n```\nprint(4)") == "```bash\nls\n```\nprint(4)"
    assert extract_program("print(5)") == "print(5)"


def test_parse_tests_and_output_comparison():
    assert parse_tests(json.dumps(STDIO)) == ("stdio", list(zip(STDIO["inputs"], STDIO["outputs"])))
    assert parse_tests([{"input": "1", "output": "2"}]) == ("stdio", [("1", "2")])
    assert parse_tests({"inputs": [["1", "2"]], "outputs": ["3"]}) == ("stdio", [("1\n2\n", "3")])
    assert parse_tests({"asserts": ["assert f()"]}) == ("asserts", ["assert f()"])
    assert parse_tests(["assert f()"]) == ("asserts", ["assert f()"])
    for bad, match in [(None, "needs tests"), ("  ", "needs tests"), ("{nope", "not JSON"),
                       ({"inputs": ["1"], "outputs": []}, "same length"), ({"fn_name": "f"}, "not supported"),
                       ([], "tests must be"), ({"asserts": [1]}, "tests must be")]:
        with pytest.raises(ValueError, match=match):
            parse_tests(bad)
    assert same_output("3  \n4\n\n\n", "3\n4") and same_output("a\r\nb", "a\nb")
    assert not same_output("3 4", "3\n4") and not same_output(" 3", "3")


# ---- scores -------------------------------------------------------------------------------------


def test_correct_wrong_and_partial_programs():
    reward = CodeReward(time_limit_s=2)
    assert reward(_sample(f"Here:\n```python\n{ADD}```")) == 1.0
    assert reward(_sample("```python\nprint(0)\n```")) == 0.25  # only "-3 3" gives 0
    partial = "a, b = map(int, input().split())\nprint(a + b if b > 0 else a)\n"  # wrong on "10 -4" only
    assert reward(_sample(f"```python\n{partial}```")) == 0.75
    assert reward(_sample("```python\nthis is not python\n```")) == 0.0


def test_asserts_give_the_share_and_a_broken_program_fails_them_all():
    reward = CodeReward(time_limit_s=2)
    tests = {"asserts": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) == 5"]}
    assert reward(_sample("def add(a, b):\n    return a + b\n", tests)) == pytest.approx(2 / 3)
    # the demo under __main__ does not run in asserts mode (it would wait on stdin)
    demo = "def add(a, b):\n    return a + b\nif __name__ == '__main__':\n    print(add(int(input()), 1))\n"
    assert reward(_sample(demo, tests)) == pytest.approx(2 / 3)
    res = run("raise SystemExit(3)\ndef add(a, b): return a + b", asserts=tests["asserts"])
    assert res.verdicts == [False] * 3 and res.status == "error" and "SystemExit: 3" in res.reason
    # a block that loops ends the run; the blocks that passed before it still count
    res = run("def add(a, b): return a + b", asserts=[tests["asserts"][0], "while True: pass", tests["asserts"][1]],
              limits=Limits(time_s=0.5))
    assert res.verdicts == [True, False, False] and res.status in ("killed", "timeout")


ADD_TESTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) == 4"]
FORGERIES = {
    # writes passing verdicts for every test to the inherited report descriptor, then leaves
    "report_fd": "import os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, b''.join(b'pass %d\\n' % k "
                 "for k in range(3)) + b''.join(b'value %d 7\\n' % k for k in range(3)) + b'end\\n')\n"
                 "    except OSError:\n        pass\nos._exit(0)\n",
    # replaces the builtins the harness runs tests with, so no assert would run
    "builtins": "import builtins\nbuiltins.exec = lambda *a, **k: None\nbuiltins.eval = lambda *a, **k: 3\n"
                "def add(a, b):\n    return -5\n",
    # an object equal to everything
    "always_equal": "class Yes:\n    def __eq__(self, other):\n        return True\n    __hash__ = None\n"
                    "def add(a, b):\n    return Yes()\n",
    # a repr that claims the value of the first test
    "lying_repr": "class Three:\n    def __repr__(self):\n        return '3'\n    def __eq__(self, o):\n"
                  "        return True\ndef add(a, b):\n    return Three()\n",
}


@pytest.mark.parametrize("kind", sorted(FORGERIES))
def test_a_program_cannot_forge_its_asserts_verdicts(kind):
    """Each exploit scored 1.0 before (verdicts came from the program's own process); now the
    `assert <expr> == <literal>` tests are judged in the parent, against literals the program never
    sees. The lying repr can only claim a value: here the one of the first test, which it guessed."""
    res = run(FORGERIES[kind], asserts=ADD_TESTS, limits=Limits(time_s=3))
    expected = [True, False, False] if kind == "lying_repr" else [False, False, False]
    assert res.verdicts == expected, (kind, res.verdicts, res.reason)
    honest = run("import threading\ndef add(a, b):\n    t = threading.Thread(target=lambda: None)\n    t.start()\n"
                 "    t.join()\n    return a + b\n", asserts=ADD_TESTS, limits=Limits(time_s=3))
    assert honest.verdicts == [True, True, True]  # legitimate programs (threads included) still pass


def test_the_code_reward_refuses_forgeable_test_blocks_unless_accepted():
    program = "def add(a, b):\n    return a + b\n"
    tests = {"asserts": ["assert add(1, 2) == 3", "r = add(2, 2)\nassert r == 4"]}
    with pytest.raises(ValueError, match=r"test 1 is not of the form 'assert <expr> == <literal>'.*unjudged_asserts: true"):
        CodeReward(time_limit_s=3)(_sample(program, tests))
    reward = CodeReward.from_source(RewardSource(type="code", time_limit_s=3, unjudged_asserts=True), "k")
    assert reward(_sample(program, tests)) == 1.0


def test_judged_and_block_tests_side_by_side():
    from megatron_rl.rewards.sandbox import split_assert

    assert split_assert("assert f(1) == [1, (2, 3)]") == ("f(1)", [1, (2, 3)])
    assert split_assert("assert f(1) == 2, 'message'") == ("f(1)", 2)
    for other in ("assert f(1)", "assert f(1) == g(2)", "x = f(1)\nassert x == 2", "assert f(1) < 2", "assert ("):
        assert split_assert(other) is None, other
    tests = ["assert add(1, 2) == 3", "r = add(2, 2)\nassert r == 4", "assert add(1, 1) == 2.0", "assert add(0, 0) == 1"]
    res = run("def add(a, b):\n    return a + b\n", asserts=tests, limits=Limits(time_s=3))
    assert res.verdicts == [True, True, True, False]  # 2 == 2.0 as in the assert itself


def test_code_reward_through_build_reward_runner():
    cfg = RewardConfig(sources=[RewardSource(type="code", time_limit_s=0.5, memory_mb=256)], workers=2, timeout_s=20)
    inputs = [
        _sample(f"```python\n{ADD}```"),
        _sample("```python\nprint(0)\n```"),
        _sample("```python\nwhile True: pass\n```"),  # a runaway: stopped by the sandbox, a failed sample
        _sample(f"```python\n{ADD}```", tests=None),  # no tests: a data problem, the sample fails
    ]
    with build_reward_runner(cfg) as runner:
        res = runner.score(inputs)
    assert res.source_scores["code"] == [1.0, 0.25, 0.0, 0.0]
    assert res.failed == [False, False, True, True]
    assert re.match(r"code: SandboxStopped: program (killed|timeout): ", res.errors[2]), res.errors[2]
    assert res.errors[3].startswith("code: ValueError: code reward needs tests")
    assert res.metrics["reward/failed"] == 2 and res.metrics["reward/code_failed"] == 2


def test_one_timed_out_test_ends_the_judging():
    reward = CodeReward(time_limit_s=0.5)
    t0 = time.monotonic()
    with pytest.raises(SandboxStopped, match="program timeout: wall-clock limit of 0.5 s"):
        reward(_sample("import time\ntime.sleep(30)"))
    assert time.monotonic() - t0 < 0.5 + STARTUP_S + 1.5  # one run's limit, not four


def test_a_network_attempt_fails_the_sample(listener):
    program = _connect_program(listener.getsockname()[1])
    with pytest.raises(SandboxStopped, match="sandbox: network access is blocked"):
        CodeReward(time_limit_s=3)(_sample(f"```python\n{program}```"))
    assert not _connected(listener)


def test_the_runner_timeout_kills_the_sandbox_and_removes_its_dir():
    """reward.timeout_s shorter than the program's limit: the runner interrupts the call; the
    program's process group is killed and its directory removed all the same."""
    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "megatron_rl_sandbox_*")))
    cfg = RewardConfig(sources=[RewardSource(type="code", time_limit_s=30)], workers=1, timeout_s=1)
    with build_reward_runner(cfg, kill_grace_s=3) as runner:
        res = runner.score([_sample("import time\ntime.sleep(60)")])
    assert res.failed == [True] and res.errors[0] == "code: timed out after 1 s"
    assert res.metrics["reward/worker_restarts"] == 0  # interrupted in the worker, not killed
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "megatron_rl_sandbox_*"))) <= before
    assert not _sandbox_processes()


# ---- limits ----------------------------------------------------------------------------------------


def test_an_infinite_loop_is_killed_within_its_limit():
    res = run("while True: pass", limits=Limits(time_s=1))
    # the CPU limit (SIGXCPU) or the wall clock, whichever comes first on a loaded machine
    assert res.status in ("killed", "timeout"), res
    assert res.elapsed_s < 1 + STARTUP_S + 1.0
    assert res.reason in ("killed by SIGXCPU (CPU time limit)", "wall-clock limit of 1 s")


def test_a_sleeping_program_hits_the_wall_clock():
    res = run("import time\ntime.sleep(30)", limits=Limits(time_s=0.5))
    assert res.status == "timeout" and res.returncode is None
    assert 0.5 <= res.elapsed_s < 0.5 + STARTUP_S + 1.0


def test_a_memory_bomb_is_stopped():
    bomb = "chunks = []\nwhile True:\n    chunks.append(bytearray(50 << 20))\n"
    res = run(bomb, limits=Limits(time_s=5, memory_mb=256))
    assert res.status == "error" and res.reason == "MemoryError"
    assert res.elapsed_s < 3


def test_file_size_and_output_are_bounded():
    res = run("open('big', 'wb').write(b'x' * (8 << 20))", limits=Limits(file_mb=2))
    assert res.status == "error" and "File too large" in res.reason
    res = run("while True: print('y' * 4096)", limits=Limits(file_mb=2))
    assert res.status == "error" and len(res.stdout) <= 2 << 20


BOMB = ("import os, time\nn = 0\ntry:\n    while n < 200:\n        if os.fork() == 0:\n"
        "            time.sleep(30)\n            os._exit(0)\n        n += 1\n"
        "except OSError as e:\n    print(n, type(e).__name__)\n")


def test_a_fork_bomb_is_contained():
    res = run(BOMB, limits=Limits(time_s=3, processes=16))
    assert res.status == "ok" and res.stdout == "0 PermissionError\n"  # not one fork
    assert not _sandbox_processes()


@_needs("seccomp")
def test_a_fork_bomb_is_contained_by_seccomp_alone():
    res = run(BOMB, limits=Limits(time_s=3, processes=16), namespaces=False, audit_hook=False)
    assert res.status == "ok" and res.stdout == "0 PermissionError\n"
    assert not _sandbox_processes()


@pytest.mark.skipif(os.geteuid() == 0, reason="RLIMIT_NPROC does not apply to root (the kernel exempts uid 0)")
def test_rlimit_nproc_alone_bounds_forks_and_the_group_is_killed():
    res = run(BOMB, limits=Limits(time_s=3, processes=8), seccomp=False, audit_hook=False)
    n, error = res.stdout.split()
    assert res.status == "ok" and int(n) < 8 and error == "BlockingIOError"  # EAGAIN
    assert not _sandbox_processes()  # the sleeping children went with the process group


# ---- isolation layers ----------------------------------------------------------------------------


@pytest.fixture
def listener():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    yield srv
    srv.close()


def _connected(srv) -> bool:
    """A completed TCP connection waits in the backlog whether or not anyone accepts it."""
    return bool(select.select([srv], [], [], 0.2)[0])


def _connect_program(port):
    return f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\nprint('connected')\n"


def test_the_check_sees_a_connection_without_the_layers(listener):
    res = run(_connect_program(listener.getsockname()[1]), **NO_LAYERS)
    assert res.status == "ok" and res.stdout == "connected\n" and _connected(listener)


def test_network_is_blocked(listener):
    res = run(_connect_program(listener.getsockname()[1]))
    assert res.status == "error" and "sandbox: network access is blocked" in res.reason
    assert not _connected(listener)


def test_network_blocked_by_the_audit_hook_alone(listener):
    res = run(_connect_program(listener.getsockname()[1]), namespaces=False, seccomp=False)
    assert res.layers[-1] == "audit_hook" and "net_ns" not in res.layers and "seccomp" not in res.layers
    assert res.status == "error" and "sandbox: network access is blocked" in res.reason
    assert not _connected(listener)


@_needs("seccomp")
def test_network_blocked_by_seccomp_alone(listener):
    res = run(_connect_program(listener.getsockname()[1]), namespaces=False, audit_hook=False)
    assert res.status == "error" and res.reason == "PermissionError: [Errno 1] Operation not permitted"
    assert not _connected(listener)


@_needs("net_ns")
def test_network_blocked_by_the_network_namespace_alone(listener):
    res = run(_connect_program(listener.getsockname()[1]), seccomp=False, audit_hook=False)
    assert res.status == "error" and "Network is unreachable" in res.reason
    assert not _connected(listener)


def _write_program(path):
    return f"open({str(path)!r}, 'w').write('escaped')\n"


def test_writing_outside_the_work_dir(tmp_path):
    target = tmp_path / "outside.txt"
    res = run(_write_program(target), **NO_LAYERS)  # control: with no layer the write lands
    assert res.status == "ok" and target.read_text() == "escaped"
    target.unlink()
    res = run(_write_program(target))
    assert res.status == "error" and not target.exists()
    res = run(_write_program(target), namespaces=False, seccomp=False)
    assert "sandbox: writing outside the work directory is blocked" in res.reason and not target.exists()


@_needs("readonly_fs")
def test_writing_outside_blocked_by_the_read_only_mounts_alone(tmp_path):
    target = tmp_path / "outside.txt"
    res = run(_write_program(target), seccomp=False, audit_hook=False)
    # hidden (not in the sandbox's filesystem at all) or, without hidden_fs, read-only
    assert res.status == "error" and not target.exists()
    assert ("No such file or directory" if "hidden_fs" in res.layers else "Read-only file system") in res.reason
    # what it does see, the interpreter's runtime, is read-only
    res = run(_write_program(os.path.join(sys.base_prefix, "sandbox_was_here.txt")), seccomp=False, audit_hook=False)
    assert res.status == "error" and "Read-only file system" in res.reason
    # its own directory stays writable
    res = run("open('mine.txt', 'w').write('ok')\nprint(open('mine.txt').read())", seccomp=False, audit_hook=False)
    assert res.status == "ok" and res.stdout == "ok\n"


def test_signals_to_other_processes_are_blocked():
    res = run(f"import os\nos.kill({os.getpid()}, 0)\n")
    assert res.status == "error" and "PermissionError" in res.reason
    assert run(f"import os\nos.kill({os.getpid()}, 0)\n", **NO_LAYERS).status == "ok"  # control


def test_fresh_dir_scrubbed_environment_isolated_interpreter(monkeypatch):
    monkeypatch.setenv("SECRET_TOKEN", "hunter2")
    prog = ("import os, sys, json\nopen('f', 'w').write('x')\n"
            "print(json.dumps([os.getcwd(), sorted(os.environ), sys.flags.isolated, os.listdir('.')]))\n")
    res = run(prog)
    cwd, env, isolated, files = json.loads(res.stdout)
    assert res.status == "ok" and isolated == 1 and sorted(files) == ["f", "solution.py"]
    assert "SECRET_TOKEN" not in env and set(env) <= {"PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "OMP_NUM_THREADS",
                                                       "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "LC_CTYPE"}
    assert os.path.basename(cwd) == "work" and not os.path.exists(os.path.dirname(cwd))  # removed afterwards


def test_the_layers_are_reported(caplog):
    layers = _layers()
    for always in ("rlimits", "audit_hook", "no_capabilities"):
        assert always in layers
    assert "audit_hook" not in run("pass", audit_hook=False).layers
    assert "net_ns" not in run("pass", namespaces=False).layers
    with caplog.at_level(logging.INFO, logger="megatron_rl.rewards"):
        CodeReward.from_source(RewardSource(type="code"), "reward.sources[0]")
    assert any(", ".join(layers) in r.getMessage() for r in caplog.records)


def test_without_the_kernel_layers_code_rewards_are_refused_unless_accepted(monkeypatch, caplog):
    """Where user namespaces are off (Docker's default seccomp profile) the audit hook would be the
    only write guard, and a program can switch it off: building the source fails in one line naming
    the key and both ways out; weak_sandbox: true accepts it with a warning. (It used to warn and run.)"""
    from megatron_rl.config import ConfigError
    from megatron_rl.rewards import code_exec

    monkeypatch.setattr(code_exec, "probe", lambda: ("parent_death_signal", "no_capabilities", "rlimits",
                                                     "audit_hook"))
    with pytest.raises(ConfigError, match=r"^reward.sources\[1\]: the code sandbox lacks its kernel-level layers here "
                                          r"\(user_ns, net_ns, readonly_fs, hidden_fs, disk_quota, seccomp;.*"
                                          r"reward.sources\[1\].weak_sandbox=true"):
        CodeReward.from_source(RewardSource(type="code"), "reward.sources[1]")
    with caplog.at_level(logging.WARNING, logger="megatron_rl.rewards"):
        CodeReward.from_source(RewardSource(type="code", weak_sandbox=True), "reward.sources[1]")
    assert any("not available here: user_ns" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="weak_sandbox applies to type code only"):
        RewardSource(type="math", weak_sandbox=True)


def test_the_program_sees_only_its_work_dir_and_the_runtime(tmp_path):
    """The training data, $HOME and /proc are not there (they were readable before: the mounts were
    read-only, not hidden); the interpreter's standard library and site-packages still import."""
    if "hidden_fs" not in _layers():
        pytest.skip("no hidden filesystem on this machine (needs user namespaces)")
    secret = tmp_path / "train.jsonl"
    secret.write_text('{"answer": "42"}\n')
    program = (f"import os, json, decimal, threading, numpy\n"
               f"print(os.path.exists({str(secret)!r}), os.path.exists(os.path.expanduser('~/.bashrc')),\n"
               f"      os.path.exists('/proc/self'), os.path.exists({os.path.join(os.getcwd(), 'README.md')!r}))\n"
               f"print(sorted(os.listdir(os.getcwd() and '/')))\n")
    res = run(program, limits=Limits(time_s=10))
    assert res.status == "ok", res.reason
    first, listing = res.stdout.splitlines()
    assert first == "False False False False"
    assert "proc" not in listing and "home" not in listing and "sys" not in listing


def test_the_work_dir_has_a_total_disk_quota():
    """Two 3 MiB files under a 4 MiB quota: the second does not fit (each is within the per-file limit)."""
    if "disk_quota" not in _layers():
        pytest.skip("no disk quota on this machine (needs user namespaces)")
    program = "open('a', 'wb').write(b'x' * (3 << 20))\nprint('first')\nopen('b', 'wb').write(b'x' * (3 << 20))\n"
    res = run(program, limits=Limits(time_s=5, disk_mb=4))
    assert res.stdout == "first\n" and res.status == "error" and "No space left on device" in res.reason


def test_code_config_fields():
    reward = CodeReward.from_source(RewardSource(type="code", time_limit_s=2.5, memory_mb=300), "k")
    assert (reward.limits.time_s, reward.limits.memory_mb) == (2.5, 300)
    with pytest.raises(ValueError, match="time_limit_s applies to type code only, not 'math'"):
        RewardSource(type="math", time_limit_s=1)


def _sandbox_processes() -> list:
    """Processes whose working directory is (or was) a sandbox's."""
    found = []
    for pid in os.listdir("/proc"):
        try:
            if pid.isdigit() and "megatron_rl_sandbox_" in os.readlink(f"/proc/{pid}/cwd"):
                found.append(int(pid))
        except OSError:
            continue
    return found


def test_the_process_check_sees_a_running_sandbox():
    """Control for `_sandbox_processes`: it finds a run while it lasts, and nothing after it."""
    done = threading.Event()
    thread = threading.Thread(target=lambda: (run("import time\ntime.sleep(30)", limits=Limits(time_s=0.5)),
                                              done.set()))
    thread.start()
    seen = []
    while not done.is_set() and not seen:
        seen = _sandbox_processes()
        time.sleep(0.05)
    thread.join()
    assert seen and not _sandbox_processes()
