"""Training checkpoints with Megatron's distributed checkpointing (torch_dist format).

Each role's model and optimizer state is saved as sharded tensors in the *model's* coordinate space
(the distributed optimizer in its `fully_reshardable` form), so a checkpoint written at one
TP/PP/DP layout loads at another. Step, LR-scheduler state and the caller's `extra` dict (trainer
state: data position, policy version, KL controller...) are saved as common state; each rank's RNG
state is saved beside it and restored when the world size is unchanged.

Atomicity: everything is written to `step_<n>.partial/`; after every rank has finished, rank 0
writes the `complete.json` marker, renames the directory to `step_<n>/` and updates `latest`. A
killed save leaves only a `.partial` directory, which `find_latest` never returns.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from ..models.builder import unwrap
from ..models.hf_io import CheckpointError

_STEP_RE = re.compile(r"^step_(\d+)$")
_MARKER = "complete.json"
_OPTIM_META = {"distrib_optim_sharding_type": "fully_reshardable"}  # changes of TP, PP and DP


def _model_sd(role, name: str):
    # GPTModel names, without DDP's "module." prefix; the role name prefixes every sharded key, so
    # two roles of the same architecture (actor and reference) do not write the same tensors
    chunks = [unwrap(c) for c in role.chunks]
    if len(chunks) == 1:
        return {"model": chunks[0].sharded_state_dict(prefix=f"{name}.")}
    return {f"model{i}": c.sharded_state_dict(prefix=f"{name}.") for i, c in enumerate(chunks)}


def _strip(state: dict, name: str) -> dict:
    prefix = f"{name}."
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}


def _fill_empty_adam_state(optimizer) -> None:
    """Give every parameter an (all-zero) Adam state before loading into a fresh optimizer.

    Without Apex/TE, megatron reads the step count from the torch optimizer's state, which a
    freshly built optimizer does not have yet; the loaded values then overwrite these zeros.
    """
    inner = getattr(optimizer, "chained_optimizers", [optimizer])
    for opt in inner:
        torch_opt = opt.optimizer
        for group in torch_opt.param_groups:
            for p in group["params"]:
                if not torch_opt.state[p]:
                    torch_opt.state[p].update(step=torch.tensor(0.0), exp_avg=torch.zeros_like(p.data),
                                              exp_avg_sq=torch.zeros_like(p.data))


@contextlib.contextmanager
def _torch_adam_step_passthrough(optimizer):
    """Work around two faults of megatron-core 0.16.1 loading a fully_reshardable state into torch's AdamW.

    Its loader skips the per-parameter "step" (restored from the param groups just before) but then
    copies every state key, "step" included, and fails with KeyError. Handing each parameter its own,
    already restored step makes that copy a no-op. Only the torch-optimizer path (no Apex / TE, i.e.
    CPU) keeps "step" in the per-parameter state; elsewhere this changes nothing.
    """
    patched = []
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        original = getattr(opt, "_set_main_param_and_optimizer_states", None)
        if original is None:
            continue

        def with_step(model_param, tensors, _opt=opt, _orig=original):
            group, order = _opt.model_param_group_index_map[model_param]
            state = _opt.optimizer.state[_opt.optimizer.param_groups[group]["params"][order]]
            if "step" in state and "step" not in tensors:
                tensors = {**tensors, "step": state["step"]}
            return _orig(model_param, tensors)

        opt._set_main_param_and_optimizer_states = with_step
        patched.append(opt)
    try:
        yield
    finally:
        for opt in patched:
            del opt._set_main_param_and_optimizer_states  # back to the class method
            # the same loader hands one shared "step" tensor to every parameter; torch's AdamW
            # increments it in place per parameter, which would break bias correction
            for state in opt.optimizer.state.values():
                if torch.is_tensor(state.get("step")):
                    state["step"] = state["step"].clone()


def _sharded_state(roles: dict, is_loading: bool) -> dict:
    state = {}
    for name, role in roles.items():
        sd = _model_sd(role, name)
        if role.optimizer is not None:
            if is_loading:
                _fill_empty_adam_state(role.optimizer)
            model_sd = sd["model"] if len(sd) == 1 else dict(sd)  # VPP: model0, model1, ...
            sd["optimizer"] = role.optimizer.sharded_state_dict(model_sd, is_loading=is_loading, metadata=_OPTIM_META)
        state[name] = sd
    return state


def _rng_state() -> dict:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    try:
        from megatron.core.tensor_parallel import get_cuda_rng_tracker

        state["tracker"] = get_cuda_rng_tracker().get_states()
    except Exception:
        pass
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    if "tracker" in state:
        from megatron.core.tensor_parallel import get_cuda_rng_tracker

        get_cuda_rng_tracker().set_states(state["tracker"])


def save_checkpoint(ckpt_dir: str, step: int, roles: dict, extra: Optional[dict] = None, keep_last: Optional[int] = None) -> Path:
    """Save `roles` ({"actor": MegatronRole, "critic": ...}) at `step`; collective over all ranks."""
    from megatron.core import dist_checkpointing

    root = Path(ckpt_dir)
    final = root / f"step_{step:08d}"
    partial = root / f"step_{step:08d}.partial"
    rank = dist.get_rank()
    if rank == 0:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    dist.barrier()
    sharded = _sharded_state(roles, is_loading=False)
    sharded["common"] = {
        "step": step,
        "schedulers": {n: r.scheduler.state_dict() for n, r in roles.items() if r.scheduler is not None},
        "role_steps": {n: r.step for n, r in roles.items()},
        "extra": extra or {},
    }
    dist_checkpointing.save(sharded, str(partial))
    rng_dir = partial / "rng"
    if rank == 0:
        rng_dir.mkdir(exist_ok=True)
    dist.barrier()
    torch.save(_rng_state(), rng_dir / f"rank_{rank:05d}.pt")
    dist.barrier()
    if rank == 0:
        marker = {"step": step, "world_size": dist.get_world_size(), "roles": sorted(roles)}
        (partial / _MARKER).write_text(json.dumps(marker))
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
        tmp = root / "latest.tmp"
        tmp.write_text(str(step))
        os.replace(tmp, root / "latest")
        if keep_last:
            for old in sorted(_complete_steps(root))[:-keep_last]:
                shutil.rmtree(root / f"step_{old:08d}", ignore_errors=True)
    dist.barrier()
    return final


def _complete_steps(root: Path) -> list[int]:
    steps = []
    if root.is_dir():
        for d in root.iterdir():
            m = _STEP_RE.match(d.name)
            if m and d.is_dir() and (d / _MARKER).is_file():
                steps.append(int(m.group(1)))
    return steps


def list_checkpoints(ckpt_dir: str) -> list[Path]:
    """The complete checkpoint directories under `ckpt_dir`, newest first."""
    return [Path(ckpt_dir) / f"step_{step:08d}" for step in sorted(_complete_steps(Path(ckpt_dir)), reverse=True)]


def find_latest(ckpt_dir: str) -> Optional[Path]:
    """The newest complete checkpoint directory under `ckpt_dir`, or None."""
    steps = _complete_steps(Path(ckpt_dir))
    return Path(ckpt_dir) / f"step_{max(steps):08d}" if steps else None


def resolve_checkpoint(path: str) -> Path:
    """A step_<n> directory as given, or the newest complete one under a checkpoint root."""
    p = Path(path)
    if (p / _MARKER).is_file():
        return p
    latest = find_latest(path)
    if latest is None:
        raise CheckpointError(f"no complete checkpoint at {p}: give a step_<n> directory or a checkpoint.dir with one")
    return latest


def load_checkpoint(path: str, roles: dict, *, load_optimizer: bool = True) -> dict:
    """Load a checkpoint into `roles` (built at any layout); returns the saved `extra` dict and step."""
    from megatron.core import dist_checkpointing

    path = Path(path)
    if not (path / _MARKER).is_file():
        raise CheckpointError(
            f"{path} is not a complete checkpoint (no {_MARKER}): pass a step_<n> directory or the checkpoint root"
        )
    marker = json.loads((path / _MARKER).read_text())
    missing = sorted(set(roles) - set(marker["roles"]))
    if missing:
        raise CheckpointError(f"{path} has no state for {', '.join(missing)} (it holds {', '.join(marker['roles'])})")
    sharded = _sharded_state(roles, is_loading=True)
    if not load_optimizer:
        for sd in sharded.values():
            sd.pop("optimizer", None)
    loaded = dist_checkpointing.load(sharded, str(path))
    common = dist_checkpointing.load_common_state_dict(str(path))["common"]
    for name, role in roles.items():
        state = loaded[name]
        if len(role.chunks) == 1:
            unwrap(role.chunks[0]).load_state_dict(_strip(state["model"], name))
        else:
            for i, c in enumerate(role.chunks):
                unwrap(c).load_state_dict(_strip(state[f"model{i}"], name))
        if load_optimizer and role.optimizer is not None:
            with _torch_adam_step_passthrough(role.optimizer):
                role.optimizer.load_state_dict(state["optimizer"])
        if role.scheduler is not None and name in common["schedulers"]:
            role.scheduler.load_state_dict(common["schedulers"][name])
        role.step = common["role_steps"].get(name, common["step"])
    rng = path / "rng" / f"rank_{dist.get_rank():05d}.pt"
    if marker["world_size"] == dist.get_world_size() and rng.is_file():
        _set_rng_state(torch.load(rng, weights_only=False))
    return {"step": common["step"], "extra": common["extra"]}
