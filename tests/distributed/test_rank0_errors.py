"""from_rank0 on 2 gloo ranks: rank 0 re-raises its own error; the other ranks raise PeerFailed,
marked bad_input when rank 0's error is a user's input (ConfigError and its subclasses), so every
rank exits as rank 0 does (2) and torchrun's exit code does not depend on which rank it saw fail
first (seen in a fresh-clone run: a missing dataset field exited 1 instead of 2)."""
from dist_harness import run_ranks


def _worker(kind):
    import torch.distributed as dist

    from megatron_rl.config import ConfigError
    from megatron_rl.data.prompts import DataError
    from megatron_rl.trainer.errors import PeerFailed, from_rank0

    dist.init_process_group("gloo")
    errors = {"data": DataError("data.train_path: line 2: no 'prompt' key"), "config": ConfigError("bad key"),
              "bug": RuntimeError("a bug")}

    def fail():
        raise errors[kind]

    try:
        from_rank0(fail)
    except PeerFailed as exc:
        return "peer", exc.bad_input, str(exc)
    except Exception as exc:  # noqa: BLE001
        return "own", type(exc).__name__, str(exc)
    return "none", None, ""


def test_peers_exit_like_rank_0():
    for kind, bad_input in (("data", True), ("config", True), ("bug", False)):
        rank0, rank1 = run_ranks(_worker, 2, kind)
        assert rank0[0] == "own" and rank1[:2] == ("peer", bad_input), (kind, rank0, rank1)
        assert rank0[2] in rank1[2]
