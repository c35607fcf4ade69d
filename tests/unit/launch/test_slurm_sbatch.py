"""launch/slurm.sbatch under a fake SLURM: `srun` runs its command once per node with that node's
SLURM_NODEID, `scontrol` expands the node list. Every node must get the same rendezvous (the first
host, a port from the job id) and its own node rank."""
import sys

from launch_helpers import ROOT, commands, run_script
from torch.distributed.run import get_args_parser

FAKE_SRUN = """\
echo "$*" > "$SRUN_ARGS_FILE"
while [ $# -gt 0 ] && [ "${1#-}" != "$1" ]; do shift; done   # srun's own options
rc=0
for ((node = 0; node < SLURM_NNODES; node++)); do
  SLURM_NODEID=$node SLURM_PROCID=$node "$@" || rc=$?
done
exit $rc
"""


def slurm_env(fake_bin, tmp_path, **extra):
    fake_bin.gpus(2)
    fake_bin.add("srun", FAKE_SRUN)
    fake_bin.add("scontrol", '[ "$1 $2" = "show hostnames" ] || exit 9\necho gpu07\necho gpu08\n')
    env = dict(SLURM_JOB_ID="54321", SLURM_JOB_NODELIST="gpu[07-08]", SLURM_NNODES="2", SLURM_GPUS_ON_NODE="2",
               SLURM_CPUS_PER_TASK="16", SLURM_SUBMIT_DIR=str(ROOT), SRUN_ARGS_FILE=str(tmp_path / "srun-args"))
    return fake_bin.env(**{**env, **extra})


def test_every_node_runs_torchrun_with_its_rank_and_the_same_rendezvous(fake_bin, tmp_path):
    proc = run_script("launch/slurm.sbatch", "--dry-run", "configs/demo.yaml", "trainer.total_steps=5",
                      env=slurm_env(fake_bin, tmp_path))
    assert proc.returncode == 0, proc.stderr
    cmds = commands(proc.stdout)
    assert len(cmds) == 2
    parsed = [get_args_parser().parse_args(cmd[3:]) for cmd in cmds]
    assert [cmd[:3] for cmd in cmds] == [[sys.executable, "-m", "torch.distributed.run"]] * 2
    assert [a.node_rank for a in parsed] == [0, 1]
    for a in parsed:
        assert (a.nnodes, a.nproc_per_node, a.master_addr) == ("2", "2", "gpu07")
        assert a.master_port == 20000 + 54321 % 20000
        assert a.training_script_args == ["train", "configs/demo.yaml", "trainer.total_steps=5"]
    srun_args = (tmp_path / "srun-args").read_text().split()
    assert srun_args[:3] == ["--ntasks-per-node=1", "--cpus-per-task=16", "--kill-on-bad-exit=1"]
    assert srun_args[3] == str(ROOT / "launch/torchrun.sh")


def test_a_bad_config_ends_the_job_with_one_line_per_node(fake_bin, tmp_path):
    proc = run_script("launch/slurm.sbatch", "--dry-run", "configs/demo.yaml", "parallel.tensor=3",
                      env=slurm_env(fake_bin, tmp_path))
    assert proc.returncode == 2 and not commands(proc.stdout)
    lines = proc.stderr.splitlines()
    assert len(lines) == 2 and lines[0] == lines[1] and lines[0].startswith("error: ")  # one per node, the same


def test_outside_the_repository_it_says_where_to_submit_from(fake_bin, tmp_path):
    proc = run_script("launch/slurm.sbatch", "configs/demo.yaml",
                      env=slurm_env(fake_bin, tmp_path, SLURM_SUBMIT_DIR=str(tmp_path)))
    assert proc.returncode == 2 and "MEGATRON_RL_ROOT" in proc.stderr and len(proc.stderr.splitlines()) == 1
