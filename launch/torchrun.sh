#!/usr/bin/env bash
# Start `megatron-rl train` on this node under torchrun: one call per node, the same on every node
# except the node rank. Run it by hand on each node, or from launch/slurm.sbatch.
#
#   launch/torchrun.sh [options] CONFIG [key.path=value ...]
#
# Options (each overrides its environment variable; SLURM's are read when the generic one is unset):
#   --nnodes N         NNODES         SLURM_NNODES          default: the config's cluster.nnodes
#   --node-rank R      NODE_RANK      SLURM_NODEID          default 0 on one node; required on several
#   --master-addr A    MASTER_ADDR    first host of SLURM_JOB_NODELIST (scontrol)   default 127.0.0.1
#                                     on one node; required on several
#   --master-port P    MASTER_PORT                          default 29500
#   --gpus-per-node G  GPUS_PER_NODE                        default: the config's cluster.gpus_per_node
#                      (the trainer's ranks per node; not SLURM's GPU count: disaggregated on one
#                      node, SGLang servers have the other GPUs)
#   --no-gpu-check     skip the visible-GPU check (a CPU / gloo run)
#   --dry-run          do every check, print the command, do not launch
#   PYTHON             the interpreter that has megatron-rl (default .venv/bin/python if present, else python3)
#
# Before anything starts, the config is validated for the world size NNODES*GPUS_PER_NODE
# (`megatron-rl validate CONFIG ... --world-size N`). Every mistake ends in one `error:` line, exit 2.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

die() { echo "error: $*" >&2; exit 2; }

nnodes=${NNODES:-${SLURM_NNODES:-}}
node_rank=${NODE_RANK:-${SLURM_NODEID:-}}
master_addr=${MASTER_ADDR:-}
master_port=${MASTER_PORT:-29500}
gpus_per_node=${GPUS_PER_NODE:-}
gpu_check=1
dry_run=0

need_value() { [ "$2" -ge 2 ] || die "$1 needs a value (launch/torchrun.sh --help)"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --nnodes) need_value "$1" $#; nnodes=$2; shift 2 ;;
    --node-rank) need_value "$1" $#; node_rank=$2; shift 2 ;;
    --master-addr) need_value "$1" $#; master_addr=$2; shift 2 ;;
    --master-port) need_value "$1" $#; master_port=$2; shift 2 ;;
    --gpus-per-node) need_value "$1" $#; gpus_per_node=$2; shift 2 ;;
    --no-gpu-check) gpu_check=0; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 0 ;;
    --) shift; break ;;
    -*) die "unknown option $1 (options come before CONFIG; see launch/torchrun.sh --help)" ;;
    *) break ;;
  esac
done
[ $# -ge 1 ] || die "no CONFIG given: launch/torchrun.sh [options] CONFIG [key.path=value ...]"
config=$1
shift
for override in "$@"; do
  case "$override" in
    -*) die "$override after CONFIG: options go before CONFIG, only key.path=value overrides after it" ;;
    *=*) ;;
    *) die "$override is not a key.path=value override (a second CONFIG?)" ;;
  esac
done

if [ -z "${PYTHON:-}" ]; then
  if [ -x "$root/.venv/bin/python" ]; then PYTHON=$root/.venv/bin/python; else PYTHON=python3; fi
fi
command -v "$PYTHON" >/dev/null || die "PYTHON=$PYTHON not found: export PYTHON=<the interpreter where megatron-rl is installed>"

validate() {  # [--world-size N]: `megatron-rl validate` of the config; its output, or its one error line and exit 2
  local out
  if ! out=$("$PYTHON" -m megatron_rl validate "$config" "${overrides[@]}" "$@" 2>&1); then
    local line
    line=$(grep -m 1 '^error: ' <<<"$out" || true)
    [ -n "$line" ] && { echo "$line" >&2; exit 2; }
    die "$PYTHON -m megatron_rl validate failed: $(tail -n 1 <<<"$out") (is megatron-rl installed for PYTHON=$PYTHON?)"
  fi
  printf '%s\n' "$out"
}
overrides=("$@")
nnodes_from='' gpus_from=''  # where a value came from, when not the environment
if [ -z "$nnodes" ] || [ -z "$gpus_per_node" ]; then
  # not given: the config's own cluster section (the resolved YAML that validate prints)
  resolved=$(validate) || exit 2
  read -r cfg_nnodes cfg_gpus < <(awk '/^cluster:/ { c = 1; next } /^[^ ]/ { c = 0 }
    c && $1 == "nnodes:" { n = $2 } c && $1 == "gpus_per_node:" { g = $2 } END { print n, g }' <<<"$resolved")
  [ -n "$nnodes" ] || { nnodes=$cfg_nnodes; nnodes_from=" (from cluster.nnodes)"; }
  [ -n "$gpus_per_node" ] || { gpus_per_node=$cfg_gpus; gpus_from=" (from cluster.gpus_per_node)"; }
  checked_world=$((cfg_nnodes * cfg_gpus))  # validate just checked the config against its own world
fi

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
is_uint "$nnodes" && [ "$nnodes" -ge 1 ] || die "NNODES=$nnodes$nnodes_from is not a positive integer: export NNODES=<number of nodes> or pass --nnodes"
if [ "$nnodes" -gt 1 ]; then
  [ -n "$node_rank" ] || die "NODE_RANK is not set and NNODES=$nnodes$nnodes_from: export NODE_RANK=<0..$((nnodes - 1))>, different on every node, or pass --node-rank"
  if [ -z "$master_addr" ] && [ -n "${SLURM_JOB_NODELIST:-}" ] && command -v scontrol >/dev/null; then
    master_addr=$(scontrol show hostnames "$SLURM_JOB_NODELIST")  # no `| head`: SIGPIPE under pipefail
    master_addr=${master_addr%%$'\n'*}
  fi
  [ -n "$master_addr" ] || die "MASTER_ADDR is not set and NNODES=$nnodes$nnodes_from: export MASTER_ADDR=<hostname or IP of node rank 0>, the same on every node, or pass --master-addr"
else
  node_rank=${node_rank:-0}
  master_addr=${master_addr:-127.0.0.1}
fi
is_uint "$node_rank" && [ "$node_rank" -lt "$nnodes" ] || die "NODE_RANK=$node_rank is not in 0..$((nnodes - 1)) (NNODES=$nnodes): give each node its own rank from 0"
is_uint "$master_port" && [ "$master_port" -ge 1 ] && [ "$master_port" -le 65535 ] || die "MASTER_PORT=$master_port is not a port (1..65535): export MASTER_PORT or pass --master-port"

# GPUs this process can use: nvidia-smi's list, narrowed by CUDA_VISIBLE_DEVICES when it is set
visible_gpus() {
  local n=0 how
  if command -v nvidia-smi >/dev/null; then
    n=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
    how="nvidia-smi -L lists $n"
  else
    how="no nvidia-smi"
  fi
  if [ -n "${CUDA_VISIBLE_DEVICES+set}" ]; then
    local listed=0
    [ -n "$CUDA_VISIBLE_DEVICES" ] && listed=$(tr ',' '\n' <<<"$CUDA_VISIBLE_DEVICES" | grep -c . || true)
    if ! command -v nvidia-smi >/dev/null || [ "$listed" -lt "$n" ]; then n=$listed; fi
    how="$how, CUDA_VISIBLE_DEVICES='$CUDA_VISIBLE_DEVICES'"
  fi
  echo "$n" "$how"
}
is_uint "$gpus_per_node" && [ "$gpus_per_node" -ge 1 ] || die "GPUS_PER_NODE=$gpus_per_node$gpus_from is not a positive integer: export GPUS_PER_NODE or pass --gpus-per-node"
read -r visible visible_how < <(visible_gpus)
if [ "$gpu_check" = 1 ] && [ "$visible" -lt "$gpus_per_node" ]; then
  die "GPUS_PER_NODE=$gpus_per_node$gpus_from but only $visible GPU(s) visible on $HOSTNAME ($visible_how): lower GPUS_PER_NODE / --gpus-per-node to $visible, expose more GPUs (CUDA_VISIBLE_DEVICES, srun --gpus-per-node), or pass --no-gpu-check for a CPU run"
fi
world=$((nnodes * gpus_per_node))

# the config must hold for this world size before any rank starts
[ "$world" = "${checked_world:-}" ] || validate --world-size "$world" >/dev/null || exit 2

cmd=("$PYTHON" -m torch.distributed.run
     --nnodes "$nnodes" --node-rank "$node_rank" --master-addr "$master_addr" --master-port "$master_port"
     --nproc-per-node "$gpus_per_node"
     -m megatron_rl train "$config" "${overrides[@]}")
echo "megatron-rl: node $node_rank of $nnodes x $gpus_per_node ranks (world $world), master $master_addr:$master_port, on $HOSTNAME ($visible GPU(s) visible)"
printf '+'; printf ' %q' "${cmd[@]}"; printf '\n'
[ "$dry_run" = 1 ] && exit 0
exec "${cmd[@]}"
