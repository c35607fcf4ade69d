"""`python -m megatron_rl validate ...` as a user runs it."""
import subprocess
import sys

import pytest
import yaml

from megatron_rl.cli import main

from megatron_rl.config import CONFIGS_DIR

CONFIGS = CONFIGS_DIR
REPO = CONFIGS_DIR.parent
FIXTURES = CONFIGS_DIR.parent / "tests" / "fixtures" / "bad_configs"


def run(*args):
    return subprocess.run([sys.executable, "-m", "megatron_rl", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_validate_demo_subprocess():
    proc = run("validate", "configs/demo.yaml")
    assert proc.returncode == 0, proc.stderr
    assert "DP" in proc.stdout and "TP [0, 1]" in proc.stdout
    resolved = yaml.safe_load(proc.stdout)  # the layout lines are YAML comments
    assert resolved["run"]["output_dir"] == "outputs/demo"


@pytest.mark.parametrize("fixture", ["unknown_key_typo.yaml", "yaml_syntax.yaml", "include_cycle.yaml"])
def test_validate_bad_config_subprocess(fixture):
    proc = run("validate", str(FIXTURES / fixture))
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "Traceback" not in proc.stderr + proc.stdout


def test_validate_overrides_and_world_size(capsys):
    # overrides may come before or after --world-size
    code = main(["validate", str(CONFIGS / "demo.yaml"), "parallel.tensor=1", "--world-size", "4",
                 "algorithm.prompts_per_step=8", "algorithm.mini_batch_prompts=8", "actor.micro_batch_size=4"])
    out = capsys.readouterr().out
    assert code == 0
    assert "world size 4 = TP 1 x CP 1 x PP 1 x DP 4" in out
    assert "prompts_per_step: 8" in out


def test_validate_bad_override(capsys):
    assert main(["validate", str(CONFIGS / "demo.yaml"), "algorithm.advantage=gea"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: algorithm.advantage: 'gea'") and "did you mean 'gae'" in err


def test_validate_missing_file(capsys):
    assert main(["validate", "no/such.yaml"]) == 2
    assert capsys.readouterr().err.strip() == "error: config file not found: no/such.yaml"


def test_validate_save(tmp_path, capsys):
    target = tmp_path / "resolved.yaml"
    assert main(["validate", str(CONFIGS / "demo.yaml"), "--save", str(target)]) == 0
    assert yaml.safe_load(target.read_text())["run"]["name"] == "demo"


def test_no_command_is_usage_error(capsys):
    assert main([]) == 2


def test_bad_world_size_is_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["validate", str(CONFIGS / "demo.yaml"), "--world-size", "0"])
    assert info.value.code == 2
