#!/usr/bin/env bash
# Refresh the lock: launch/requirements-cpu.lock pins every distribution of the CPU development / CI
# environment to an exact version. It resolves setup.py's ranges (extras train, test, sglang-client)
# in a scratch virtual environment under launch/constraints-cpu.txt and under the requirement list
# of the sglang release pinned there (so every library the SGLang server stack shares with us gets
# a version that server accepts), and records what got installed. Run it after changing setup.py or
# the constraints, then commit the lock:
#   bash launch/lock.sh
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
python=${PYTHON:-python3}
lock=launch/requirements-cpu.lock
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# the project is built from a copy, so no build/ or egg-info is left in the checkout
mkdir "$scratch/src" && cp -r setup.py megatron_rl kernels configs "$scratch/src/"
"$python" -m venv "$scratch/venv"
pip=("$scratch/venv/bin/python" -m pip)
log="$scratch/install.log"
sglang=$(sed -n 's/^sglang==//p' launch/constraints-cpu.txt)
{
  # sglang's own requirements, read from its wheel, as constraints: all but torch, whose CUDA build
  # the server pins (development runs the CPU build above); extras dropped (pip refuses them there)
  "${pip[@]}" download --no-deps -d "$scratch/sglang" "sglang==$sglang" &&
  "$scratch/venv/bin/python" - "$scratch"/sglang/sglang-*.whl >"$scratch/sglang-constraints.txt" <<'PY' &&
import re, sys, zipfile
from email.parser import Parser
with zipfile.ZipFile(sys.argv[1]) as wheel:
    meta = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    requires = Parser().parsestr(wheel.read(meta).decode()).get_all("Requires-Dist") or []
for req in requires:
    name = re.match(r"[A-Za-z0-9._-]+", req).group(0)
    if name.lower() != "torch" and "extra ==" not in req:
        print(re.sub(r"^([A-Za-z0-9._-]+)\s*\[[^]]*\]", r"\1", req))
PY
  # the newest pip and setuptools (they are locked too: the project builds with --no-build-isolation)
  "${pip[@]}" install --upgrade pip setuptools wheel &&
  # torch first, from its pin, so nothing later can pull a CUDA build
  "${pip[@]}" install -c launch/constraints-cpu.txt torch triton &&
  "${pip[@]}" install -c launch/constraints-cpu.txt -c "$scratch/sglang-constraints.txt" "$scratch/src[train,test,sglang-client]" &&
  # sglang's client-side modules only: its own dependency list pins a CUDA torch (setup.py, sglang-client)
  "${pip[@]}" install --no-deps -c launch/constraints-cpu.txt sglang
} >"$log" 2>&1 || { tail -n 30 "$log" >&2; echo "error: resolving the lock failed (log above)" >&2; exit 1; }

{
  echo "# The CPU development / CI environment, every distribution at its exact version."
  echo "# Made by: bash launch/lock.sh   (from setup.py + launch/constraints-cpu.txt; do not edit by hand)"
  echo "# Installed exactly, with --no-deps, by launch/dev.sh. Python $("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])'), $(uname -m)."
  "${pip[@]}" freeze --all --exclude megatron-rl | LC_ALL=C sort -f
} >"$lock.tmp"
mv "$lock.tmp" "$lock"
echo "wrote $lock ($(grep -c '==' "$lock") distributions)"
