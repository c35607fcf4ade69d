"""Import hygiene at the repository root. Every command we document runs with the root on sys.path
(`python -m`, `torchrun -m`, pytest), so a folder there that is a regular package shadows any
installed distribution of the same top-level name: kernels/ once hid the Hugging Face kernel hub
package (`kernels`, which transformers and SGLang import) and broke every run. The checks run in
fresh interpreters whose working directory is the root, as a user's would."""
import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def python_at_root(code: str) -> subprocess.CompletedProcess:
    # `-c` puts the working directory first on sys.path, exactly as `-m` and torchrun's workers do
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_import_kernels_at_the_root_is_the_hub_distribution():
    hub = importlib.metadata.distribution("kernels")
    out = python_at_root(
        "import kernels, transformers.activations\n"
        # what transformers' hub integration imports (the ImportError users saw came from this line)
        "from kernels import CUDAProperties, Device, LayerRepository, Mode, kernelize, register_kernel_mapping\n"
        "print(kernels.__file__)")
    assert out.returncode == 0, out.stderr[-3000:]
    found = Path(out.stdout.strip()).resolve()
    assert found == Path(hub.locate_file("kernels/__init__.py")).resolve()
    assert ROOT / "kernels" not in found.parents


def test_our_kernels_are_megatron_rl_kernels_at_the_root():
    out = python_at_root("import megatron_rl.kernels as k; print(k.__file__); print(k.logprobs_and_entropy.__module__)")
    assert out.returncode == 0, out.stderr[-3000:]
    path, module = out.stdout.split()
    assert module == "megatron_rl.kernels" and Path(path).name == "__init__.py"


def test_the_root_shadows_no_installed_distribution():
    """The root's importable names are our package (and setup.py); a root folder that is no package
    (kernels/, configs/, tests/, ...) can never win over a distribution's top-level package."""
    regular = sorted(p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert regular == ["megatron_rl"]
    modules = sorted(p.stem for p in ROOT.glob("*.py"))
    assert modules == ["setup"]
    owners = importlib.metadata.packages_distributions()
    for name in ["megatron_rl", "setup"]:
        assert set(owners.get(name, [])) <= {"megatron-rl"}, f"{name} is also a top-level name of {owners[name]}"
    # every root folder that another distribution also installs as a top-level package
    clashes = [p.name for p in ROOT.iterdir() if p.is_dir() and p.name in owners and p.name != "megatron_rl"]
    assert "kernels" in clashes
    out = python_at_root("import importlib, sys\n"
                         f"for name in {clashes!r}:\n"
                         "    print(importlib.import_module(name).__file__)")
    assert out.returncode == 0, out.stderr[-3000:]
    for name, file in zip(clashes, out.stdout.split()):
        assert ROOT / name not in Path(file).resolve().parents, f"import {name} at the root found our {file}"


def test_two_rank_torchrun_of_the_cli_at_the_root(tmp_path):
    """torchrun's workers run `python -m megatron_rl.cli` with the root first on sys.path; the SFT
    command imports transformers (tokenizer, HF export) in both ranks."""
    from megatron_rl.cli import DEMO_TASK
    from megatron_rl.data.synthetic import prepare_demo_data

    prepare_demo_data(tmp_path / "data", **DEMO_TASK)
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "megatron_rl.cli",
         "sft", "configs/demo.yaml", f"run.output_dir={tmp_path}", "sft.steps=2", "sft.batch_size=8",
         "sft.micro_batch_size=4"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    assert (tmp_path / "sft" / "hf" / "config.json").is_file() and list((tmp_path / "sft" / "hf").glob("*.safetensors"))
