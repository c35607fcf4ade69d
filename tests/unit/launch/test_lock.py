"""The lock (launch/requirements-cpu.lock): the environment the tests run in is exactly the lock, the
lock satisfies setup.py's ranges and the pins it was made from, and it agrees with the SGLang server
stack wherever the two share a library."""
import json
import subprocess
import sys
from importlib.metadata import distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name as canonical
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[3]
LOCK = ROOT / "launch/requirements-cpu.lock"
INPUTS = ROOT / "launch/constraints-cpu.txt"
EXTRAS = ("train", "test", "sglang-client")  # what launch/dev.sh and launch/lock.sh install


def read_pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version and not any(c in version for c in "<>=!~,;"), f"{path.name}: not an exact pin: {line!r}"
            assert canonical(name) not in pins, f"{path.name}: {name} pinned twice"
            pins[canonical(name)] = version
    return pins


LOCKED = read_pins(LOCK)


def installed_distributions() -> dict[str, str]:
    """What the environment holds, read by a fresh isolated interpreter (-I: no working directory,
    no PYTHONPATH): this process's sys.path is not the environment's (setuptools, once imported,
    appends its own vendored distributions to it)."""
    out = subprocess.run([sys.executable, "-I", "-c", "import json; from importlib.metadata import distributions; "
                          "print(json.dumps([[d.metadata['Name'], d.version] for d in distributions()]))"],
                         capture_output=True, text=True, check=True)
    return {canonical(name): version for name, version in json.loads(out.stdout)}


def test_every_installed_distribution_is_locked_at_its_version():
    installed = installed_distributions()
    installed.pop("megatron-rl")  # the project itself, installed on top of the lock
    unlocked = sorted(f"{n}=={v}" for n, v in installed.items() if n not in LOCKED)
    assert not unlocked, f"installed but not in the lock (re-run bash launch/dev.sh, or add them via bash launch/lock.sh): {unlocked}"
    moved = sorted(f"{n}: installed {v}, locked {LOCKED[n]}" for n, v in installed.items() if v != LOCKED[n])
    assert not moved, moved
    missing = sorted(set(LOCKED) - set(installed))
    assert not missing, f"locked but not installed: {missing}"


def test_the_check_fails_on_a_distribution_the_lock_does_not_pin(tmp_path):
    """The helper launch/dev.sh uses to remove strays names exactly what the lock leaves out."""
    lock = tmp_path / "lock.txt"
    lock.write_text("".join(f"{n}=={v}\n" for n, v in LOCKED.items() if n != "pytest-timeout"))
    out = subprocess.run([sys.executable, str(ROOT / "launch/unlocked.py"), str(lock)],
                         capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["pytest-timeout"]
    out = subprocess.run([sys.executable, str(ROOT / "launch/unlocked.py"), str(LOCK)],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def _satisfied(req: Requirement, version: str) -> bool:
    # a local label (torch's +cpu) is a build of the same release
    return req.specifier.contains(Version(version).public, prereleases=True) or req.specifier.contains(version)


def test_the_lock_satisfies_setup_py_ranges():
    project = distribution("megatron-rl")
    checked = 0
    for text in project.requires:
        req = Requirement(text)
        if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in EXTRAS):
            continue
        name = canonical(req.name)
        assert name in LOCKED, f"setup.py needs {req} but the lock has no {req.name}: run bash launch/lock.sh"
        assert _satisfied(req, LOCKED[name]), f"setup.py needs {req}, the lock has {LOCKED[name]}: run bash launch/lock.sh"
        checked += 1
    assert checked >= 20  # install_requires plus the three extras


def test_the_lock_keeps_the_pins_it_was_made_from():
    for line in INPUTS.read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        req = Requirement(line)
        assert _satisfied(req, LOCKED[canonical(req.name)]), f"{INPUTS.name} says {req}, the lock has {LOCKED[canonical(req.name)]}"
    assert LOCKED["torch"] == "2.13.0+cpu"  # the CPU build: an unpinned torch is a multi-GB CUDA build
    assert {"pip", "setuptools", "wheel"} <= set(LOCKED)  # the build tools are locked too (--no-build-isolation)


def test_the_lock_agrees_with_the_sglang_server_stack():
    """sglang's own requirement list (its installed metadata): every library both environments have
    is at a version SGLang's server accepts, except torch (the server runs its CUDA build 2.14.1,
    development the 2.13.0 CPU build that triton 3.7.1's interpreter matches)."""
    sglang = distribution("sglang")
    assert sglang.version == LOCKED["sglang"] == "0.5.23"
    shared = 0
    for text in sglang.requires:
        req = Requirement(text)
        name = canonical(req.name)
        if name not in LOCKED or name == "torch" or (req.marker is not None and not req.marker.evaluate({"extra": ""})):
            continue
        assert _satisfied(req, LOCKED[name]), f"sglang {sglang.version} needs {req}, the lock has {LOCKED[name]}"
        shared += 1
    assert shared >= 15
    assert LOCKED["transformers"] == "5.19.0" and LOCKED["tokenizers"] == "0.23.2"
