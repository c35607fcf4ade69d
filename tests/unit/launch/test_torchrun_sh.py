"""launch/torchrun.sh: the torchrun command it prints for a given environment (read back with
torchrun's own argument parser), and the one-line failures before anything starts."""
import subprocess
import sys

from launch_helpers import ROOT, clean_env, commands, one_error_line, run_script
from torch.distributed.run import get_args_parser

CONFIG = "configs/demo.yaml"  # tensor parallel 2: valid on world sizes 2, 4, ...


def torchrun_args(proc):
    """The single command the script printed, parsed as torchrun parses it."""
    assert proc.returncode == 0, proc.stderr
    (cmd,) = commands(proc.stdout)
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    return get_args_parser().parse_args(cmd[3:])


def assert_launch(args, *, nnodes, node_rank, master_addr, master_port, nproc, script_args):
    assert args.nnodes == str(nnodes) and args.node_rank == node_rank and args.nproc_per_node == str(nproc)
    assert args.master_addr == master_addr and args.master_port == master_port
    assert args.module and args.training_script == "megatron_rl" and args.training_script_args == script_args
    assert args.rdzv_backend == "static" and not args.standalone  # node_rank + master: static rendezvous


def test_single_node_defaults_to_the_configs_cluster(fake_bin):
    fake_bin.gpus(4)  # the demo's cluster is 1 node x 2 ranks: two of the four GPUs
    proc = run_script("launch/torchrun.sh", "--dry-run", CONFIG, "trainer.total_steps=3", env=fake_bin.env())
    assert_launch(torchrun_args(proc), nnodes=1, node_rank=0, master_addr="127.0.0.1", master_port=29500, nproc=2,
                  script_args=["train", CONFIG, "trainer.total_steps=3"])
    assert "world 2" in proc.stdout


def test_the_config_default_follows_the_overrides(fake_bin):
    """Disaggregated on one node: the trainer's ranks are cluster.gpus_per_node, not every GPU."""
    fake_bin.gpus(8)
    proc = run_script("launch/torchrun.sh", "--dry-run", CONFIG, "cluster.gpus_per_node=4", env=fake_bin.env())
    assert_launch(torchrun_args(proc), nnodes=1, node_rank=0, master_addr="127.0.0.1", master_port=29500, nproc=4,
                  script_args=["train", CONFIG, "cluster.gpus_per_node=4"])


def test_multi_node_from_the_environment(fake_bin):
    fake_bin.gpus(8)
    env = fake_bin.env(NNODES="2", NODE_RANK="1", MASTER_ADDR="10.1.2.3", MASTER_PORT="29555", GPUS_PER_NODE="2")
    proc = run_script("launch/torchrun.sh", "--dry-run", CONFIG, env=env)
    assert_launch(torchrun_args(proc), nnodes=2, node_rank=1, master_addr="10.1.2.3", master_port=29555, nproc=2,
                  script_args=["train", CONFIG])


def test_flags_win_over_the_environment(fake_bin):
    fake_bin.gpus(8)
    env = fake_bin.env(NNODES="4", NODE_RANK="3", MASTER_ADDR="10.1.2.3", GPUS_PER_NODE="8")
    proc = run_script("launch/torchrun.sh", "--nnodes", "2", "--node-rank", "0", "--master-addr", "head",
                      "--master-port", "31000", "--gpus-per-node", "2", "--dry-run", CONFIG, env=env)
    assert_launch(torchrun_args(proc), nnodes=2, node_rank=0, master_addr="head", master_port=31000, nproc=2,
                  script_args=["train", CONFIG])


def test_slurm_variables_and_the_first_host_of_the_allocation(fake_bin):
    """Nodes and node rank from SLURM; the ranks per node from the config (2), not SLURM's GPU count."""
    fake_bin.gpus(8)
    fake_bin.add("scontrol", '[ "$1 $2 $3" = "show hostnames gpu[07-08]" ] || exit 9\necho gpu07\necho gpu08\n')
    env = fake_bin.env(SLURM_NNODES="2", SLURM_NODEID="1", SLURM_GPUS_ON_NODE="8", SLURM_JOB_NODELIST="gpu[07-08]")
    proc = run_script("launch/torchrun.sh", "--dry-run", CONFIG, env=env)
    assert_launch(torchrun_args(proc), nnodes=2, node_rank=1, master_addr="gpu07", master_port=29500, nproc=2,
                  script_args=["train", CONFIG])


def test_multi_node_without_master_addr_fails_in_one_line(fake_bin):
    fake_bin.gpus(8)
    proc = run_script("launch/torchrun.sh", "--dry-run", CONFIG,
                      env=fake_bin.env(NNODES="2", NODE_RANK="0", GPUS_PER_NODE="2"))
    line = one_error_line(proc)
    assert "MASTER_ADDR is not set" in line and "--master-addr" in line


def test_multi_node_without_node_rank_fails_in_one_line(fake_bin):
    fake_bin.gpus(8)
    proc = run_script("launch/torchrun.sh", "--dry-run", CONFIG,
                      env=fake_bin.env(NNODES="2", MASTER_ADDR="h0", GPUS_PER_NODE="2"))
    assert "NODE_RANK is not set and NNODES=2:" in one_error_line(proc)
    # two nodes in the config itself, nothing in the environment
    proc = run_script("launch/torchrun.sh", "--dry-run", CONFIG, "cluster.nnodes=2", env=fake_bin.env())
    assert "NODE_RANK is not set and NNODES=2 (from cluster.nnodes)" in one_error_line(proc)


def test_too_few_gpus_fails_in_one_line(fake_bin):
    fake_bin.gpus(2)
    line = one_error_line(run_script("launch/torchrun.sh", "--dry-run", CONFIG, env=fake_bin.env(GPUS_PER_NODE="4")))
    assert "GPUS_PER_NODE=4 but only 2 GPU(s) visible" in line and "nvidia-smi -L lists 2" in line


def test_cuda_visible_devices_narrows_the_gpus(fake_bin):
    fake_bin.gpus(8)
    line = one_error_line(run_script("launch/torchrun.sh", "--dry-run", CONFIG,
                                     env=fake_bin.env(GPUS_PER_NODE="4", CUDA_VISIBLE_DEVICES="0,1")))
    assert "only 2 GPU(s) visible" in line and "CUDA_VISIBLE_DEVICES='0,1'" in line


def test_no_gpu_at_all_fails_in_one_line(fake_bin):
    fake_bin.gpus(0)
    line = one_error_line(run_script("launch/torchrun.sh", "--dry-run", CONFIG, env=fake_bin.env()))
    assert "GPUS_PER_NODE=2 (from cluster.gpus_per_node) but only 0 GPU(s) visible" in line and "--no-gpu-check" in line


def test_bad_config_fails_with_validates_own_line(fake_bin):
    """World 3 does not fit tensor parallel 2: the script ends in exactly the line `megatron-rl
    validate --world-size 3` gives for this config."""
    fake_bin.gpus(3)
    line = one_error_line(run_script("launch/torchrun.sh", "--dry-run", CONFIG, env=fake_bin.env(GPUS_PER_NODE="3")))
    direct = subprocess.run([sys.executable, "-m", "megatron_rl", "validate", CONFIG, "--world-size", "3"], cwd=ROOT,
                            capture_output=True, text=True, env=clean_env())
    assert direct.returncode == 2 and line == direct.stderr.strip()
    assert "does not divide the world size 3" in line


def test_bad_override_and_missing_config_fail_in_one_line(fake_bin):
    fake_bin.gpus(2)
    env = fake_bin.env()
    assert "parallel.tensor" in one_error_line(run_script("launch/torchrun.sh", "--dry-run", CONFIG, "parallel.tensor=0",
                                                          env=env))
    assert "configs/missing.yaml" in one_error_line(run_script("launch/torchrun.sh", "--dry-run", "configs/missing.yaml",
                                                               env=env))
    assert "no CONFIG given" in one_error_line(run_script("launch/torchrun.sh", "--dry-run", env=env))
    assert "options go before CONFIG" in one_error_line(run_script("launch/torchrun.sh", CONFIG, "--dry-run", env=env))


def test_no_gpu_check_runs_cpu_ranks(fake_bin):
    fake_bin.gpus(0)
    proc = run_script("launch/torchrun.sh", "--no-gpu-check", "--dry-run", CONFIG, env=fake_bin.env())
    assert_launch(torchrun_args(proc), nnodes=1, node_rank=0, master_addr="127.0.0.1", master_port=29500, nproc=2,
                  script_args=["train", CONFIG])
