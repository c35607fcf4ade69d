#!/usr/bin/env bash
# The README's two commands:  launch/dev.sh demo [overrides]   |   launch/dev.sh test [pytest args]
# Creates (or reuses) a virtual environment in .venv and makes it exactly the lock
# (launch/requirements-cpu.lock: every distribution at its exact version, made by launch/lock.sh),
# with megatron-rl installed editable, whenever setup.py or the lock changed; then runs the main
# job or the test suite. The test suite, and a demo with rollout.engine=sglang, also get the isolated
# SGLang server environment (launch/sglang_env.sh: .venv-sglang, from its own lock), named to the
# project by MEGATRON_RL_SGLANG_PYTHON.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
venv=${MEGATRON_RL_VENV:-$root/.venv}
python=${PYTHON:-python3}
lock=launch/requirements-cpu.lock

# The lock holds binary wheels for one Python minor version (its header names it).
lock_python=$(sed -n 's/^# .* Python \([0-9.]*\), .*/\1/p' "$lock")
have_python=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) \
  || { echo "error: no Python at '$python': set PYTHON=python$lock_python" >&2; exit 2; }
[ "$have_python" = "$lock_python" ] \
  || { echo "error: $lock is for Python $lock_python, $python is $have_python: set PYTHON=python$lock_python, or make a lock for this Python with bash launch/lock.sh" >&2; exit 2; }
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"

stamp="$venv/.megatron-rl-install"
want=$(cat setup.py "$lock" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setting up $venv from $lock (log: $venv/install.log) ..."
  log="$venv/install.log"
  {
    # exact versions and no resolver: the lock was resolved once, by launch/lock.sh
    "$venv/bin/python" -m pip install --no-deps -r "$lock" &&
    # a distribution the lock does not name goes (an older lock's, or one installed by hand)
    extra=$("$venv/bin/python" -I launch/unlocked.py "$lock") &&
    { [ -z "$extra" ] || "$venv/bin/python" -m pip uninstall -y $extra; } &&
    # the project itself, editable, built by the locked setuptools
    "$venv/bin/python" -m pip install --no-deps --no-build-isolation -e .
  } >"$log" 2>&1 || { tail -n 30 "$log" >&2; echo "error: installing megatron-rl failed; see $log" >&2; exit 1; }
  echo "$want" >"$stamp"
fi

cmd=${1:-}
shift || true
# the real SGLang server's environment: for the tests, and for a demo on SGLang
wants_sglang=0
[ "$cmd" = test ] && wants_sglang=1
[ "$cmd" = demo ] && [[ " $* " == *" rollout.engine=sglang "* ]] && wants_sglang=1
if [ "$wants_sglang" = 1 ] && [ -z "${MEGATRON_RL_SGLANG_PYTHON:-}" ]; then
  MEGATRON_RL_SGLANG_PYTHON=$(PYTHON="$python" bash launch/sglang_env.sh)
  export MEGATRON_RL_SGLANG_PYTHON
fi
case "$cmd" in
  demo) exec "$venv/bin/megatron-rl" demo "$@" ;;
  test)  # pytest's arguments; the whole suite unless they name test files or folders
    for arg in "$@"; do
      if [[ "$arg" != -* && -e "${arg%%::*}" ]]; then exec "$venv/bin/python" -m pytest "$@"; fi
    done
    exec "$venv/bin/python" -m pytest tests "$@" ;;
  *) echo "usage: launch/dev.sh demo|test [args]" >&2; exit 2 ;;
esac
