#!/usr/bin/env bash
# The README's two commands:  launch/dev.sh demo   |   launch/dev.sh test [pytest args]
# Creates (or reuses) a virtual environment in .venv, installs the project with its CPU pins when
# setup.py or the pins changed, then runs the main job or the test suite.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
venv=${MEGATRON_RL_VENV:-$root/.venv}
python=${PYTHON:-python3}

"$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
  || { echo "error: $python is $("$python" -V 2>&1); megatron-rl needs Python >= 3.10 (set PYTHON=...)" >&2; exit 2; }
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"

stamp="$venv/.megatron-rl-install"
want=$(cat setup.py launch/constraints-cpu.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setting up $venv (log: $venv/install.log) ..."
  log="$venv/install.log"
  {
    # torch first, from its pin, so nothing later can pull a CUDA build.
    "$venv/bin/pip" install -c launch/constraints-cpu.txt torch &&
    "$venv/bin/pip" install -c launch/constraints-cpu.txt -e ".[train,test,sglang-client]" &&
    # sglang's client-side pieces only (see setup.py): its full install would replace torch
    "$venv/bin/pip" install --no-deps -c launch/constraints-cpu.txt sglang
  } >"$log" 2>&1 || { tail -n 30 "$log" >&2; echo "error: installing megatron-rl failed; see $log" >&2; exit 1; }
  echo "$want" >"$stamp"
fi

cmd=${1:-}
shift || true
case "$cmd" in
  demo) exec "$venv/bin/megatron-rl" demo "$@" ;;
  test) exec "$venv/bin/python" -m pytest tests "$@" ;;
  *) echo "usage: launch/dev.sh demo|test [args]" >&2; exit 2 ;;
esac
