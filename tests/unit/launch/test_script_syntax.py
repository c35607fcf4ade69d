"""Every launch script parses (`bash -n`): a syntax error would otherwise surface on a cluster node."""
import subprocess

import pytest
from launch_helpers import ROOT

SCRIPTS = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "launch").iterdir() if p.suffix in (".sh", ".sbatch"))


def test_the_scripts_are_all_here():
    assert {"launch/torchrun.sh", "launch/slurm.sbatch", "launch/sglang_servers.sh"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_bash_syntax(script):
    proc = subprocess.run(["bash", "-n", str(ROOT / script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (ROOT / script).read_text().startswith("#!/usr/bin/env bash\n")
