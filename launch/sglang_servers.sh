#!/usr/bin/env bash
# SGLang servers on this node for a disaggregated run (rollouts on their own GPUs / nodes), and on
# one node optionally sglang-router in front of every node's servers. The trainer then attaches to
# them with the overrides this script prints (rollout.sglang.urls / router_url).
#
#   launch/sglang_servers.sh [options] MODEL_PATH [-- more sglang.launch_server flags]
#
#   --device D          SGLANG_DEVICE        cuda, or cpu (SGLang's own server on the CPU: torch-native
#                       attention, no CUDA graphs, --sleep-on-idle, loopback only)  default: cuda when
#                       nvidia-smi lists a GPU, else cpu
#   --num-servers K     SGLANG_NUM_SERVERS   servers on this node, each --dp-size 1      default 1
#   --tp-size T         SGLANG_TP_SIZE       tensor parallel size of each server        default 1
#   --base-gpu-id G     SGLANG_BASE_GPU_ID   server i uses GPUs G+i*T .. G+i*T+T-1       default 0
#   --base-port P       SGLANG_BASE_PORT     server i listens on P+i                     default 30010
#   --host H            SGLANG_HOST          address the servers (and router) bind      default 0.0.0.0
#                       (cpu: 127.0.0.1, and nothing else)
#   --max-total-tokens N KV-cache tokens per server (cpu default 16384; cuda: from --mem-fraction)
#   --advertise-host A  how the trainer's nodes reach this node, in the printed URLs   default: H, or the
#                       hostname when H is 0.0.0.0
#   --mem-fraction F    SGLANG_MEM_FRACTION  --mem-fraction-static                      default 0.85
#   --log-dir DIR       SGLANG_LOG_DIR       sglang-server-<i>.log, sglang-router.log    default sglang-logs
#   --health-timeout S  seconds each server (and the router) gets to answer its health probe; default 1200
#   --router            also start sglang-router here, over this node's servers and --worker-hosts'
#   --worker-hosts LIST other nodes running this script with the same K and P, comma-separated (router)
#   --no-local-servers  start only the router (the servers run on the --worker-hosts)
#   --router-port P     SGLANG_ROUTER_PORT                                               default 30000
#   --router-policy POL cache_aware | round_robin | random | power_of_two               default cache_aware
#   --dry-run           do every check, print the commands and the trainer's overrides, start nothing
#   PYTHON              interpreter with sglang (default $MEGATRON_RL_SGLANG_PYTHON, else .venv-sglang/bin/python
#                       when launch/sglang_env.sh made it, else python3); SGLANG_LAUNCH_SERVER / SGLANG_LAUNCH_ROUTER
#                       replace `$PYTHON -m sglang.launch_server` / `$PYTHON -m sglang_router.launch_router`
#
# It waits for each server's /health_generate (one decode step: loaded and able to generate) and the
# router's /health, prints the URLs and the trainer's overrides, then stays in the foreground: Ctrl-C
# or SIGTERM (the end of a SLURM step) stops everything it started (then removes the /dev/shm files
# SGLang left that no process uses); a server that exits stops the rest.
# Mistakes end in one `error:` line, exit 2.
set -euo pipefail

die() { echo "error: $*" >&2; exit 2; }

device=${SGLANG_DEVICE:-}
max_total_tokens=
num_servers=${SGLANG_NUM_SERVERS:-1}
tp_size=${SGLANG_TP_SIZE:-1}
base_gpu_id=${SGLANG_BASE_GPU_ID:-0}
base_port=${SGLANG_BASE_PORT:-30010}
host=${SGLANG_HOST:-}
advertise_host=
mem_fraction=${SGLANG_MEM_FRACTION:-0.85}
log_dir=${SGLANG_LOG_DIR:-sglang-logs}
health_timeout=1200
router=0
worker_hosts=
local_servers=1
router_port=${SGLANG_ROUTER_PORT:-30000}
router_policy=cache_aware
dry_run=0

need_value() { [ "$2" -ge 2 ] || die "$1 needs a value (launch/sglang_servers.sh --help)"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --device) need_value "$1" $#; device=$2; shift 2 ;;
    --max-total-tokens) need_value "$1" $#; max_total_tokens=$2; shift 2 ;;
    --num-servers) need_value "$1" $#; num_servers=$2; shift 2 ;;
    --tp-size) need_value "$1" $#; tp_size=$2; shift 2 ;;
    --base-gpu-id) need_value "$1" $#; base_gpu_id=$2; shift 2 ;;
    --base-port) need_value "$1" $#; base_port=$2; shift 2 ;;
    --host) need_value "$1" $#; host=$2; shift 2 ;;
    --advertise-host) need_value "$1" $#; advertise_host=$2; shift 2 ;;
    --mem-fraction) need_value "$1" $#; mem_fraction=$2; shift 2 ;;
    --log-dir) need_value "$1" $#; log_dir=$2; shift 2 ;;
    --health-timeout) need_value "$1" $#; health_timeout=$2; shift 2 ;;
    --router) router=1; shift ;;
    --worker-hosts) need_value "$1" $#; worker_hosts=$2; shift 2 ;;
    --no-local-servers) local_servers=0; shift ;;
    --router-port) need_value "$1" $#; router_port=$2; shift 2 ;;
    --router-policy) need_value "$1" $#; router_policy=$2; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 0 ;;
    --) shift; break ;;
    -*) die "unknown option $1 (see launch/sglang_servers.sh --help)" ;;
    *) [ -z "${model:-}" ] || die "a second MODEL_PATH $1: more launch_server flags go after --"; model=$1; shift ;;
  esac
done
extra_args=("$@")
[ -n "${model:-}" ] || [ "$local_servers" = 0 ] || die "no MODEL_PATH given: launch/sglang_servers.sh [options] MODEL_PATH [-- launch_server flags]"

if [ -z "$device" ]; then
  device=cpu
  command -v nvidia-smi >/dev/null && [ "$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)" -gt 0 ] && device=cuda
fi
case "$device" in cuda|cpu) ;; *) die "--device / SGLANG_DEVICE=$device: use cuda or cpu" ;; esac
if [ "$device" = cpu ]; then
  host=${host:-127.0.0.1}
  case "$host" in 127.0.0.1|localhost|::1) ;; *) die "--host $host: SGLang servers on the CPU serve this machine only; use 127.0.0.1" ;; esac
  [ "$router" = 0 ] || [ -z "$worker_hosts" ] || die "--worker-hosts: CPU servers serve this machine only"
else
  host=${host:-0.0.0.0}
fi
is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
is_port() { is_uint "$1" && [ "$1" -ge 1 ] && [ "$1" -le 65535 ]; }
is_uint "$num_servers" && [ "$num_servers" -ge 1 ] || die "--num-servers / SGLANG_NUM_SERVERS=$num_servers is not a positive integer"
is_uint "$tp_size" && [ "$tp_size" -ge 1 ] || die "--tp-size / SGLANG_TP_SIZE=$tp_size is not a positive integer"
is_uint "$base_gpu_id" || die "--base-gpu-id / SGLANG_BASE_GPU_ID=$base_gpu_id is not a GPU index (0, 1, ...)"
is_port "$base_port" && is_port "$((base_port + num_servers - 1))" \
  || die "ports $base_port..$((base_port + num_servers - 1)) are not all valid (1..65535): change --base-port / SGLANG_BASE_PORT"
is_port "$router_port" || die "--router-port / SGLANG_ROUTER_PORT=$router_port is not a port (1..65535)"
[[ $mem_fraction =~ ^(0?\.[0-9]+|1(\.0*)?)$ ]] && [[ ! $mem_fraction =~ ^0?\.0*$ ]] \
  || die "--mem-fraction / SGLANG_MEM_FRACTION=$mem_fraction is not a fraction in (0, 1]"
[ -z "$max_total_tokens" ] || is_uint "$max_total_tokens" || die "--max-total-tokens $max_total_tokens is not a positive integer"
is_uint "$health_timeout" && [ "$health_timeout" -ge 1 ] || die "--health-timeout $health_timeout is not a positive number of seconds"
case "$router_policy" in
  cache_aware|round_robin|random|power_of_two) ;;
  *) die "--router-policy $router_policy: use cache_aware, round_robin, random or power_of_two" ;;
esac
if [ "$router" = 0 ]; then
  [ -z "$worker_hosts" ] || die "--worker-hosts needs --router (they are the router's other workers)"
  [ "$local_servers" = 1 ] || die "--no-local-servers needs --router (otherwise nothing would start)"
elif [ "$local_servers" = 0 ] && [ -z "$worker_hosts" ]; then
  die "--no-local-servers needs --worker-hosts: the router would have no server behind it"
fi
if [ "$router" = 1 ] && [ "$local_servers" = 1 ] && [ "$router_port" -ge "$base_port" ] && [ "$router_port" -lt "$((base_port + num_servers))" ]; then
  die "--router-port $router_port is one of the servers' ports ($base_port..$((base_port + num_servers - 1))): move --router-port or --base-port"
fi
# flags this script sets itself: a second copy in the extra flags would silently win (argparse keeps the last)
for flag in "${extra_args[@]}"; do
  case "${flag%%=*}" in
    --model-path|--model|--host|--port|--tp-size|--tp|--tensor-parallel-size|--dp-size|--dp|--data-parallel-size|--base-gpu-id|--mem-fraction-static|--device|--max-total-tokens)
      die "${flag%%=*} after --: this script sets it; use its own option (launch/sglang_servers.sh --help)" ;;
  esac
done
# the URLs name the address the servers bind, or this host's name when they bind every interface
if [ -z "$advertise_host" ]; then
  case "$host" in 0.0.0.0|::) advertise_host=$HOSTNAME ;; *) advertise_host=$host ;; esac
fi

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -z "${PYTHON:-}" ]; then
  PYTHON=python3
  [ -x "$root/.venv-sglang/bin/python" ] && PYTHON=$root/.venv-sglang/bin/python
  [ -n "${MEGATRON_RL_SGLANG_PYTHON:-}" ] && PYTHON=$MEGATRON_RL_SGLANG_PYTHON
fi
if [ -n "${SGLANG_LAUNCH_SERVER:-}" ]; then
  read -r -a server_launcher <<<"$SGLANG_LAUNCH_SERVER"
else
  server_launcher=("$PYTHON" -m sglang.launch_server)
fi
if [ -n "${SGLANG_LAUNCH_ROUTER:-}" ]; then
  read -r -a router_launcher <<<"$SGLANG_LAUNCH_ROUTER"
else
  router_launcher=("$PYTHON" -m sglang_router.launch_router)
fi
has_module() { "$PYTHON" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$1') is None)" 2>/dev/null; }
if [ "$local_servers" = 1 ] && [ -z "${SGLANG_LAUNCH_SERVER:-}" ]; then
  command -v "$PYTHON" >/dev/null || die "PYTHON=$PYTHON not found: export PYTHON=<the interpreter with sglang>"
  has_module sglang || die "sglang is not installed for PYTHON=$PYTHON: use the Docker image, make the CPU server environment with bash launch/sglang_env.sh, or export PYTHON"
fi
if [ "$router" = 1 ] && [ -z "${SGLANG_LAUNCH_ROUTER:-}" ]; then
  has_module sglang_router || die "sglang_router is not installed for PYTHON=$PYTHON: pip install sglang-router, or drop --router"
fi

if [ "$local_servers" = 1 ]; then
  # an HF hub id (org/name) is fetched by the server; anything else must be a directory here
  [ -d "$model" ] || [[ $model =~ ^[A-Za-z0-9._-]+/[A-Za-z0-9._-]+$ && ! -e $model ]] \
    || die "MODEL_PATH $model is not a directory (nor an HF hub id org/name): give the checkpoint directory"
  # GPUs: nvidia-smi's list, narrowed by CUDA_VISIBLE_DEVICES when it is set (ids are then relative to it)
  [ "$device" = cpu ] || {
  visible=0
  command -v nvidia-smi >/dev/null && visible=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
  if [ -n "${CUDA_VISIBLE_DEVICES+set}" ]; then
    listed=0
    [ -n "$CUDA_VISIBLE_DEVICES" ] && listed=$(tr ',' '\n' <<<"$CUDA_VISIBLE_DEVICES" | grep -c . || true)
    if ! command -v nvidia-smi >/dev/null || [ "$listed" -lt "$visible" ]; then visible=$listed; fi
  fi
  needed=$((base_gpu_id + num_servers * tp_size))
  [ "$visible" -ge "$needed" ] || die "$num_servers server(s) x tp $tp_size from GPU $base_gpu_id need GPUs 0..$((needed - 1)), but $visible GPU(s) are visible on $HOSTNAME: lower --num-servers / --tp-size / --base-gpu-id, or expose more GPUs (CUDA_VISIBLE_DEVICES), or use --device cpu"
  }
fi
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }  # something already answers there
ports=()
[ "$local_servers" = 1 ] && for ((i = 0; i < num_servers; i++)); do ports+=($((base_port + i))); done
[ "$router" = 1 ] && ports+=("$router_port")
for port in "${ports[@]}"; do
  port_busy "$port" && die "port $port on $HOSTNAME is already in use: stop what listens there, or move --base-port / --router-port"
done

# commands, URLs, and what the trainer needs
server_cmd() {  # i -> cmd=(the argv of server i), as rollout/sglang_launch.py's server_command builds it
  cmd=("${server_launcher[@]}" --model-path "$model" --host "$host" --port $((base_port + $1))
       --tp-size "$tp_size" --dp-size 1)
  if [ "$device" = cpu ]; then
    cmd+=(--mem-fraction-static "$mem_fraction" --device cpu --attention-backend torch_native --disable-cuda-graph
          --disable-overlap-schedule --skip-server-warmup --sleep-on-idle --max-total-tokens "${max_total_tokens:-16384}")
  else
    cmd+=(--base-gpu-id $((base_gpu_id + $1 * tp_size)) --mem-fraction-static "$mem_fraction")
    [ -z "$max_total_tokens" ] || cmd+=(--max-total-tokens "$max_total_tokens")
  fi
  cmd+=("${extra_args[@]}")
}
[ "$device" = cpu ] && export SGLANG_USE_CPU_ENGINE=1  # without it SGLang's CPU model init looks for vllm
urls=()
n_local=0
[ "$local_servers" = 1 ] && n_local=$num_servers
for ((i = 0; i < n_local; i++)); do urls+=("http://$advertise_host:$((base_port + i))"); done
IFS=',' read -r -a other_hosts <<<"$worker_hosts"
for h in "${other_hosts[@]}"; do
  [ -n "$h" ] || continue
  for ((i = 0; i < num_servers; i++)); do urls+=("http://$h:$((base_port + i))"); done
done
router_cmd=("${router_launcher[@]}" --worker-urls "${urls[@]}" --host "$host" --port "$router_port" --policy "$router_policy")
router_url="http://$advertise_host:$router_port"
overrides="rollout.engine=sglang rollout.placement=disaggregated rollout.sglang.urls=[$(IFS=','; echo "${urls[*]}")]"
[ "$router" = 1 ] && overrides+=" rollout.sglang.router_url=$router_url"

show() { printf '+'; printf ' %q' "$@"; printf '\n'; }
for ((i = 0; i < n_local; i++)); do server_cmd "$i"; show "${cmd[@]}"; done
[ "$router" = 1 ] && show "${router_cmd[@]}"
if [ "$dry_run" = 1 ]; then
  echo "trainer overrides: $overrides"
  exit 0
fi

# ---- start, wait for health, stay in the foreground
mkdir -p "$log_dir"
case "$host" in 0.0.0.0|::|'') probe_host=127.0.0.1 ;; *) probe_host=$host ;; esac
pids=()
names=()
logs=()
stop_all() {  # SIGTERM to every process group started, SIGKILL to what is left after 10 s
  trap - INT TERM EXIT
  local pid t alive
  for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  for ((t = 0; t < 50; t++)); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 -- "-$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.2
  done
  [ "$alive" = 0 ] || for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
  remove_shm_leftovers
}
remove_shm_leftovers() {  # SGLang's /dev/shm files that no live process has open or mapped any more
  "$PYTHON" - <<'PY' 2>/dev/null || true
import os
names = [n for n in os.listdir("/dev/shm") if n.startswith(("sglang_", "sgl_shm_", "sem.mp-"))]
used = set()
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        used.update(os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd"))
        used.update(line.split()[-1] for line in open(f"/proc/{pid}/maps") if "/dev/shm/" in line)
    except OSError:
        pass
for n in names:
    if "/dev/shm/" + n not in used:
        try:
            os.unlink("/dev/shm/" + n)
        except OSError:
            pass
PY
}
trap 'stop_all; exit 143' TERM
trap 'stop_all; exit 130' INT
trap 'stop_all' EXIT
start() {  # name, log, argv...: in a session of its own (pid = process group), so the group can be stopped
  local name=$1 log=$2
  shift 2
  echo "starting $name (log $log)"
  setsid "$@" >>"$log" 2>&1 </dev/null &
  pids+=($!); names+=("$name"); logs+=("$log")
}
probe() {  # url -> exit 0 when it answers 200
  "$PYTHON" -c 'import sys, urllib.request
try:
    sys.exit(urllib.request.urlopen(sys.argv[1], timeout=10).status != 200)
except Exception:
    sys.exit(1)' "$1"
}
wait_healthy() {  # index into pids, url
  local k=$1 url=$2 deadline=$((SECONDS + health_timeout)) rc
  while ! probe "$url"; do
    if ! kill -0 "${pids[$k]}" 2>/dev/null; then
      wait "${pids[$k]}" && rc=0 || rc=$?
      echo "error: ${names[$k]} exited with code $rc before answering $url; log ${logs[$k]}, last line: $(tail -n 1 "${logs[$k]}" 2>/dev/null): fix what the log says" >&2
      exit 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "error: ${names[$k]} did not answer $url within ${health_timeout}s; log ${logs[$k]}, last line: $(tail -n 1 "${logs[$k]}" 2>/dev/null): raise --health-timeout or fix what the log says" >&2
      exit 1
    fi
    sleep 1
  done
}
for ((i = 0; i < n_local; i++)); do
  server_cmd "$i"
  start "sglang server $i" "$log_dir/sglang-server-$i.log" "${cmd[@]}"
done
for ((i = 0; i < n_local; i++)); do
  wait_healthy "$i" "http://$probe_host:$((base_port + i))/health_generate"
  echo "sglang server $i ready: ${urls[$i]}"
done
if [ "$router" = 1 ]; then
  start "sglang router" "$log_dir/sglang-router.log" "${router_cmd[@]}"
  wait_healthy "$((${#pids[@]} - 1))" "http://$probe_host:$router_port/health"
  echo "sglang router ready: $router_url"
fi
echo "trainer overrides: $overrides"
# a process that exits ends the whole set: the trainer must not keep using a partial one
wait -n "${pids[@]}" && rc=0 || rc=$?
echo "error: a process this script started exited (code $rc); stopping the others; logs in $log_dir" >&2
exit 1
