"""The package as a user installs it: a wheel built from the checkout, installed non-editable into a
fresh virtual environment made from the lock, used from a directory outside the repository. It
must find its presets, import every module, and score a batch with a tiny Megatron model that
matches transformers."""
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "launch/requirements-cpu.lock"


def run(cmd, **kw):
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=900, **kw)
    assert out.returncode == 0, f"{' '.join(map(str, cmd))}\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(python, megatron-rl script, a work directory outside the repository)."""
    tmp = tmp_path_factory.mktemp("wheel")
    # build from a copy: no build/ or egg-info is written into the checkout, nothing of it leaks in
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "outputs", "build", "*.egg-info",
                                                             "__pycache__", ".pytest_cache", ".hypothesis"))
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", tmp / "dist", src])
    (wheel,) = (tmp / "dist").glob("megatron_rl-*.whl")
    run([sys.executable, "-m", "venv", tmp / "venv"])
    python = tmp / "venv/bin/python"
    run([python, "-m", "pip", "install", "--no-deps", "-r", LOCK])
    run([python, "-m", "pip", "install", "--no-deps", wheel])
    work = tmp / "work"
    work.mkdir()
    return python, tmp / "venv/bin/megatron-rl", work


def clean_env():
    # nothing of this checkout's environment: not its PYTHONPATH, not its venv
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def test_wheel_validates_the_shipped_demo_config(installed):
    python, cli, work = installed
    for name in ("configs/demo.yaml", "demo.yaml"):  # the README's spelling, and the preset's own name
        out = run([cli, "validate", name, "--world-size", "2"], cwd=work, env=clean_env())
        assert "tensor: 2" in out.stdout and "# layout" in out.stdout
    where = run([python, "-c", "from megatron_rl.config import CONFIGS_DIR; import megatron_rl; "
                               "print(CONFIGS_DIR); print(megatron_rl.__file__)"], cwd=work, env=clean_env())
    configs, package = map(Path, where.stdout.split())
    site = python.parent.parent / "lib"
    assert site in configs.parents and site in package.parents, where.stdout
    assert (configs / "models" / "tiny-qwen2.yaml").is_file() and (configs / "algorithms" / "grpo.yaml").is_file()
    bad = subprocess.run([cli, "validate", "nope.yaml"], cwd=work, env=clean_env(), capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: config file not found: nope.yaml"


def test_wheel_imports_every_module(installed):
    python, _, work = installed
    out = run([python, "-c", textwrap.dedent("""
        import importlib, pkgutil, megatron_rl
        # all but the `python -m megatron_rl` entry point, which runs the command line when imported
        names = [m.name for m in pkgutil.walk_packages(megatron_rl.__path__, "megatron_rl.")
                 if not m.name.endswith(".__main__")]
        for name in names:
            importlib.import_module(name)
        print(len(names))
        print(" ".join(names))
    """)], cwd=work, env=clean_env())
    count, names = out.stdout.split("\n", 1)
    names = set(names.split())
    # every package folder of the checkout is in the wheel, the kernels under their installed name
    expected = {"megatron_rl." + ".".join(p.relative_to(ROOT / "megatron_rl").parent.parts)
                for p in (ROOT / "megatron_rl").rglob("__init__.py") if p.parent != ROOT / "megatron_rl"}
    assert expected | {"megatron_rl.kernels", "megatron_rl.kernels.logprob_entropy", "megatron_rl.models.role"} <= names
    assert int(count) >= 80


def test_wheel_scores_a_batch_like_transformers(installed):
    python, _, work = installed
    script = work / "score.py"
    script.write_text(textwrap.dedent("""
        import torch, transformers
        from megatron_rl.config.schema import ModelConfig, ParallelConfig
        from megatron_rl.models.hf_mapping import hf_config_dict
        from megatron_rl.models.role import MegatronRole
        from megatron_rl.parallel import init_parallel

        model = ModelConfig(architecture="qwen2", num_layers=2, hidden_size=64, ffn_hidden_size=96,
                            num_attention_heads=4, num_query_groups=2, vocab_size=96, tie_word_embeddings=False,
                            rope_theta=10000.0, max_position_embeddings=64, rms_norm_eps=1e-6, dtype="fp32")
        cfg = {k: v for k, v in hf_config_dict(model).items() if k != "torch_dtype"}
        torch.manual_seed(0)
        hf = transformers.Qwen2ForCausalLM(transformers.AutoConfig.for_model(**cfg)).float().eval()
        hf.save_pretrained("hf", safe_serialization=True)
        ids = torch.randint(0, 96, (3, 7))
        with torch.no_grad():
            logp = torch.log_softmax(hf(ids).logits.double(), -1)[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
        init_parallel(ParallelConfig(), seed=1)
        out = MegatronRole.build("reference", model, ParallelConfig(), hf_path="hf").score(
            {"input_ids": ids}, micro_batch_size=2, with_entropy=True)
        err = (out["logprobs"][:, 1:].double() - logp).abs().max().item()
        print(f"max abs logprob error {err:.3e}")
        assert err < 1e-4, err
    """))
    out = run([python, script], cwd=work, env=clean_env())
    assert "max abs logprob error" in out.stdout
