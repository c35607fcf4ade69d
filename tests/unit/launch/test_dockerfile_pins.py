"""The Dockerfile's pinned versions (its ARGs) agree with what the rest of the repository requires:

- MEGATRON_CORE_VERSION satisfies setup.py's `train` extra, and megatron-core 0.17+ only with
  PYTHON_VERSION >= 3.12 (its wheels require it);
- TRANSFORMER_ENGINE_VERSION lies in the range the pinned megatron-core declares for TransformerEngine
  (read from its installed metadata when the installed megatron-core is the pinned one, as in CI);
- SGLANG_VERSION is launch/constraints-cpu.txt's sglang pin (the client pieces CI tests are the
  server the image runs), and the default base image is that version's tag.

Each rule is also run against copies with one side bumped: a check that cannot fail proves nothing.
"""
from __future__ import annotations

import ast
import re
import shutil
from importlib.metadata import PackageNotFoundError, requires
from importlib.metadata import version as installed_version
from pathlib import Path

import pytest
from launch_helpers import ROOT
from packaging.requirements import Requirement
from packaging.version import InvalidVersion, Version

PINS = ("SGLANG_VERSION", "PYTHON_VERSION", "MEGATRON_CORE_VERSION", "TRANSFORMER_ENGINE_VERSION")


def dockerfile_args(path: Path) -> dict[str, str]:
    """`ARG NAME=value` defaults (an ARG re-declared without a value keeps the first default)."""
    args: dict[str, str] = {}
    for m in re.finditer(r"^ARG\s+(\w+)=(\S+)\s*$", path.read_text(), re.MULTILINE):
        args.setdefault(m.group(1), m.group(2))
    return args


def base_image(path: Path, args: dict[str, str]) -> str:
    (line,) = re.findall(r"^FROM\s+(\S+)", path.read_text(), re.MULTILINE)
    for _ in range(3):  # ${A} inside ${B}'s default
        line = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), line)
    return line


def setup_extras(path: Path) -> dict[str, dict[str, Requirement]]:
    """setup.py's extras_require, read without running setup(): {extra: {name: Requirement}}."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup":
            for kw in node.keywords:
                if kw.arg == "extras_require":
                    extras = ast.literal_eval(kw.value)
                    return {extra: {Requirement(r).name: Requirement(r) for r in reqs} for extra, reqs in extras.items()}
    raise AssertionError(f"no setup(extras_require=...) in {path}")


def constraint_pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", line
            pins[req.name] = spec.version
    return pins


def megatron_core_te_range(mcore_pin: str) -> Requirement | None:
    """The TransformerEngine requirement megatron-core `mcore_pin` declares, from the installed
    package's metadata; None when the installed megatron-core is another version (or absent)."""
    try:
        if installed_version("megatron-core") != mcore_pin:
            return None
        reqs = [Requirement(r) for r in requires("megatron-core") or []]
    except PackageNotFoundError:
        return None
    te = [r for r in reqs if r.name == "transformer-engine"]
    return te[0] if te else None


def disagreements(root: Path, *, check_te: bool = True) -> list[str]:
    """Every way the Dockerfile's pins disagree with setup.py / the constraints; [] when they agree."""
    args = dockerfile_args(root / "Dockerfile")
    missing = [name for name in PINS if name not in args]
    if missing:
        return [f"Dockerfile has no ARG {name}=..." for name in missing]
    problems = []
    pins = {}
    for name in PINS:
        try:
            pins[name] = Version(args[name])
        except InvalidVersion:
            problems.append(f"ARG {name}={args[name]} is not an exact version")
    if problems:
        return problems

    mcore_spec = setup_extras(root / "setup.py")["train"]["megatron-core"].specifier
    if not mcore_spec.contains(pins["MEGATRON_CORE_VERSION"], prereleases=True):
        problems.append(f"MEGATRON_CORE_VERSION={pins['MEGATRON_CORE_VERSION']} is outside setup.py's "
                        f"megatron-core{mcore_spec}")
    if pins["MEGATRON_CORE_VERSION"] >= Version("0.17") and pins["PYTHON_VERSION"] < Version("3.12"):
        problems.append(f"megatron-core {pins['MEGATRON_CORE_VERSION']} needs Python >= 3.12, "
                        f"PYTHON_VERSION is {pins['PYTHON_VERSION']}")

    sglang_pin = constraint_pins(root / "launch/constraints-cpu.txt").get("sglang")
    if sglang_pin is None or Version(sglang_pin) != pins["SGLANG_VERSION"]:
        problems.append(f"SGLANG_VERSION={pins['SGLANG_VERSION']} but launch/constraints-cpu.txt pins sglang=={sglang_pin}")
    image = base_image(root / "Dockerfile", args)
    if not re.fullmatch(rf"lmsysorg/sglang:v{re.escape(args['SGLANG_VERSION'])}(-[\w.]+)?", image):
        problems.append(f"the default base image {image} is not lmsysorg/sglang:v{args['SGLANG_VERSION']}")

    if check_te:
        te = megatron_core_te_range(args["MEGATRON_CORE_VERSION"])
        if te is None:
            pytest.skip(f"megatron-core {args['MEGATRON_CORE_VERSION']} is not the installed one: its TE range is unknown")
        if not te.specifier.contains(pins["TRANSFORMER_ENGINE_VERSION"], prereleases=True):
            problems.append(f"TRANSFORMER_ENGINE_VERSION={pins['TRANSFORMER_ENGINE_VERSION']} is outside megatron-core "
                            f"{args['MEGATRON_CORE_VERSION']}'s transformer-engine{te.specifier}")
    return problems


def test_dockerfile_pins_agree_with_setup_py_and_the_constraints():
    args = dockerfile_args(ROOT / "Dockerfile")
    assert set(PINS) <= set(args)
    assert disagreements(ROOT) == []


@pytest.fixture
def copy(tmp_path):
    """A copy of the files the rule reads, to bump one side of a pin in."""
    for rel in ("Dockerfile", "setup.py", "launch/constraints-cpu.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, tmp_path / rel)

    def edit(rel: str, old: str, new: str) -> Path:
        path = tmp_path / rel
        text = path.read_text()
        assert re.search(old, text, re.MULTILINE), (rel, old)
        path.write_text(re.sub(old, new, text, count=1, flags=re.MULTILINE))
        return tmp_path

    return edit


def test_setup_py_bumped_alone_is_caught(copy):
    root = copy("setup.py", r'"megatron-core>=[^"]+"', '"megatron-core>=0.17.0"')
    (problem,) = disagreements(root, check_te=False)
    assert "outside setup.py's megatron-core>=0.17.0" in problem


def test_dockerfile_megatron_core_bumped_past_the_python_is_caught(copy):
    copy("Dockerfile", r"^ARG MEGATRON_CORE_VERSION=.*$", "ARG MEGATRON_CORE_VERSION=0.19.2")
    root = copy("Dockerfile", r"^ARG PYTHON_VERSION=.*$", "ARG PYTHON_VERSION=3.11")
    assert disagreements(root, check_te=False) == ["megatron-core 0.19.2 needs Python >= 3.12, PYTHON_VERSION is 3.11"]


def test_sglang_bumped_on_one_side_only_is_caught(copy, tmp_path):
    root = copy("launch/constraints-cpu.txt", r"^sglang==.*$", "sglang==0.5.99")
    assert any("constraints-cpu.txt pins sglang==0.5.99" in p for p in disagreements(root, check_te=False))
    shutil.copy(ROOT / "launch/constraints-cpu.txt", tmp_path / "launch/constraints-cpu.txt")
    root = copy("Dockerfile", r"^ARG SGLANG_VERSION=.*$", "ARG SGLANG_VERSION=0.5.99")
    assert any("SGLANG_VERSION=0.5.99 but" in p for p in disagreements(root, check_te=False))


def test_base_image_tag_apart_from_the_version_is_caught(copy):
    root = copy("Dockerfile", r"^ARG SGLANG_IMAGE=.*$", "ARG SGLANG_IMAGE=lmsysorg/sglang:v0.5.19-cu129")
    assert disagreements(root, check_te=False) == [
        f"the default base image lmsysorg/sglang:v0.5.19-cu129 is not lmsysorg/sglang:v{dockerfile_args(ROOT / 'Dockerfile')['SGLANG_VERSION']}"]


def test_transformer_engine_outside_megatron_cores_range_is_caught(copy):
    root = copy("Dockerfile", r"^ARG TRANSFORMER_ENGINE_VERSION=.*$", "ARG TRANSFORMER_ENGINE_VERSION=2.20.2")
    (problem,) = disagreements(root)
    assert problem.startswith("TRANSFORMER_ENGINE_VERSION=2.20.2 is outside megatron-core")
