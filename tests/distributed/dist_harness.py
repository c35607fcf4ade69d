"""Run a function on N CPU ranks (gloo), each a fresh spawned process, and collect what each returns.

Megatron's parallel_state is per-process global state, so every test gets new processes.
"""
from __future__ import annotations

import os
import socket
import traceback

import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, world_size, port, fn, args, queue):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    import torch

    torch.set_num_threads(1)
    try:
        queue.put((rank, "ok", fn(*args)))
    except BaseException:
        queue.put((rank, "error", traceback.format_exc()))
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            try:
                from megatron_rl.parallel import destroy_parallel

                destroy_parallel()
            except Exception:
                pass


def run_ranks(fn, world_size: int, *args, timeout: float = 240.0) -> list:
    """fn(*args) on ranks 0..world_size-1; returns the per-rank results, or raises with a rank's traceback."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    # not daemonic: megatron's checkpoint writer starts helper processes of its own
    procs = [ctx.Process(target=_entry, args=(r, world_size, port, fn, args, queue))
             for r in range(world_size)]
    for p in procs:
        p.start()
    results, errors = {}, []
    import queue as queue_lib
    import time

    deadline = time.monotonic() + timeout
    try:
        while len(results) < world_size and not errors:
            try:
                rank, status, value = queue.get(timeout=1.0)
            except queue_lib.Empty:
                dead = [r for r, p in enumerate(procs) if p.exitcode not in (None, 0) and r not in results]
                if dead:  # crashed before it could report (segfault, os._exit, killed)
                    errors.append(f"rank {dead[0]} exited with code {procs[dead[0]].exitcode} without a result")
                elif time.monotonic() > deadline:
                    errors.append(f"timed out after {timeout:.0f} s waiting for {world_size - len(results)} rank(s)")
                continue
            if status == "error":
                errors.append(f"rank {rank}:\n{value}")
            else:
                results[rank] = value
    finally:
        for p in procs:
            p.join(timeout=5 if not errors else 0.5)
            if p.is_alive():
                p.kill()
    if errors:
        raise AssertionError(errors[0])
    return [results[r] for r in range(world_size)]
