#!/usr/bin/env bash
# The isolated SGLang server environment for a CPU machine (development, CI, the CPU demo):
#   bash launch/sglang_env.sh            make or refresh .venv-sglang exactly from the lock, print its python
#   bash launch/sglang_env.sh --relock   resolve launch/sglang-server-cpu.in afresh, rewrite
#                                        launch/requirements-sglang-cpu.lock (commit it), then install it
# The environment is SGLang's own, never the project's venv: torch 2.14.1 (the CUDA build sglang 0.5.23
# pins; it runs on the CPU), sglang installed without its CUDA-only dependencies, the server's own
# dependency list, sglang-router, and launch/sglang_cpu on its path. launch/sglang_cpu holds an
# import-time stand-in for sgl_kernel, SGLang's CPU kernel package, which is not on PyPI (see its
# __init__.py): it only lets the server's imports resolve, and raises on any call.
# MEGATRON_RL_SGLANG_VENV moves the environment (default .venv-sglang in the checkout); PYTHON picks
# the interpreter that makes it (the lock's Python version).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
venv=${MEGATRON_RL_SGLANG_VENV:-$root/.venv-sglang}
python=${PYTHON:-python3}
inputs=launch/sglang-server-cpu.in
lock=launch/requirements-sglang-cpu.lock
sglang=0.5.23
relock=0
case "${1:-}" in
  --relock) relock=1 ;;
  "") ;;
  *) echo "usage: bash launch/sglang_env.sh [--relock]" >&2; exit 2 ;;
esac

have_python=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) \
  || { echo "error: no Python at '$python': set PYTHON=python3.11" >&2; exit 2; }
if [ "$relock" = 1 ]; then
  scratch=$(mktemp -d)
  trap 'rm -rf "$scratch"' EXIT
  "$python" -m venv "$scratch/venv"
  pip=("$scratch/venv/bin/python" -m pip)
  {
    "${pip[@]}" install --upgrade pip setuptools wheel &&
    # torch first, alone: nothing later may move it
    "${pip[@]}" install $(grep -E '^torch(vision)?==' "$inputs") &&
    "${pip[@]}" install -r "$inputs" &&
    "${pip[@]}" install --no-deps "sglang==$sglang"
  } >"$scratch/install.log" 2>&1 || { tail -n 30 "$scratch/install.log" >&2; echo "error: resolving $lock failed (log above)" >&2; exit 1; }
  {
    echo "# The isolated SGLang server environment on a CPU machine, every distribution at its exact version."
    echo "# Made by: bash launch/sglang_env.sh --relock   (from $inputs; do not edit by hand)"
    echo "# Installed exactly, with --no-deps, by launch/sglang_env.sh. Python $have_python, $(uname -m)."
    "${pip[@]}" freeze --all | LC_ALL=C sort -f
  } >"$lock.tmp"
  mv "$lock.tmp" "$lock"
  echo "wrote $lock ($(grep -c '==' "$lock") distributions)" >&2
fi

lock_python=$(sed -n 's/^# .* Python \([0-9.]*\), .*/\1/p' "$lock")
[ "$have_python" = "$lock_python" ] \
  || { echo "error: $lock is for Python $lock_python, $python is $have_python: set PYTHON=python$lock_python, or relock with bash launch/sglang_env.sh --relock" >&2; exit 2; }
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
stamp="$venv/.megatron-rl-sglang-install"
want=$(cat "$lock" launch/sglang_cpu/sgl_kernel/__init__.py | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setting up the SGLang server environment $venv from $lock (several GB; log: $venv/install.log) ..." >&2
  log="$venv/install.log"
  {
    "$venv/bin/python" -m pip install --no-deps -r "$lock" &&
    extra=$("$venv/bin/python" -I launch/unlocked.py "$lock") &&
    { [ -z "$extra" ] || "$venv/bin/python" -m pip uninstall -y $extra; } &&
    # the sgl_kernel stand-in, from the checkout (a .pth line: site-packages gets no copy to go stale)
    site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') &&
    echo "$root/launch/sglang_cpu" >"$site/megatron_rl_sglang_cpu.pth" &&
    SGLANG_USE_CPU_ENGINE=1 "$venv/bin/python" -c 'import sglang.srt.entrypoints.http_server, sglang_router'
  } >"$log" 2>&1 || { tail -n 30 "$log" >&2; echo "error: making the SGLang server environment failed; see $log" >&2; exit 1; }
  echo "$want" >"$stamp"
fi
echo "$venv/bin/python"
