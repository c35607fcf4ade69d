"""Print the installed distributions that a lock file does not pin (space-separated), for
launch/dev.sh to uninstall so the environment is exactly the lock.

    python launch/unlocked.py launch/requirements-cpu.lock

The project itself (megatron-rl, installed editable after the lock) is not expected in the lock.
It runs after the lock is installed, so `packaging` (locked) is there.
"""
import sys
from importlib.metadata import distributions

from packaging.utils import canonicalize_name as canonical


def pinned_names(lock_path: str) -> set[str]:
    with open(lock_path, encoding="utf-8") as f:
        return {canonical(line.split("==")[0]) for line in f if "==" in line and not line.startswith("#")}


def main(lock_path: str) -> int:
    allowed = pinned_names(lock_path) | {"megatron-rl"}
    extra = sorted({d.metadata["Name"] for d in distributions() if canonical(d.metadata["Name"]) not in allowed})
    print(" ".join(extra))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
