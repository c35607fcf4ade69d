"""The `megatron-rl` command line.

Each subcommand is one `_add_<name>(subparsers)` function that declares its arguments and sets
`handler=<function(args) -> exit code>`; list it in COMMANDS. A ConfigError from any handler ends
in `error: <one line>` on stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Optional, Sequence

from megatron_rl import __version__
from megatron_rl.config import CONFIGS_DIR, ConfigError, layout_summary, load_config, resolved_yaml, save_resolved


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """CONFIG plus key.path=value overrides: shared by every command that loads a run config."""
    parser.add_argument("config", metavar="CONFIG", help="run config YAML (may include presets)")
    parser.add_argument("overrides", metavar="key.path=value", nargs="*",
                        help="overrides, YAML-typed, applied last (e.g. algorithm.kl.coef=0.01)")
    parser.add_argument("--world-size", type=_positive_int, default=None,
                        help="check against this many ranks instead of cluster.nnodes*gpus_per_node")


# --- validate ---------------------------------------------------------------------------------


def _validate(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides, world_size=args.world_size)
    if args.save:
        save_resolved(cfg, args.save)
    out = resolved_yaml(cfg)
    out += "# layout\n" + "".join(f"# {line}\n" for line in layout_summary(cfg, args.world_size).splitlines())
    sys.stdout.write(out)  # all of it is YAML: the layout lines are comments
    return 0


def _add_validate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="check a config and print it resolved, with its parallel layout",
                       description="Load CONFIG with its includes and overrides, run every check, print "
                                   "the resolved config and the parallel layout. Exit 0 if valid, 2 if not.")
    _add_config_arguments(p)
    p.add_argument("--save", metavar="PATH", help="also write the resolved config to PATH")
    p.set_defaults(handler=_validate)


# --- demo -------------------------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    """SFT warm start, then GRPO, on the generated cipher task (configs/demo.yaml); each phase
    launches its ranks (cluster.gpus_per_node) itself. Running it again resumes where it stopped."""
    import time
    from pathlib import Path

    from megatron_rl.data.synthetic import prepare_demo_data

    if args.config is not None and "=" in args.config and not os.path.exists(args.config):
        args.overrides, args.config = [args.config, *args.overrides], None  # `demo key=value ...`
    if args.config is None:
        args.config = str(CONFIGS_DIR / "demo.yaml")
    overrides = list(args.overrides) + ([f"trainer.total_steps={args.steps}"] if args.steps else [])
    # SFT generates nothing: the rollout overrides are GRPO's (rollout.engine=sglang needs the SFT model)
    sft_overrides = [o for o in overrides if not o.startswith("rollout.")]
    cfg = load_config(args.config, sft_overrides)
    start = time.monotonic()
    prepare_demo_data(Path(cfg.data.train_path).parent, **DEMO_TASK)
    sft_hf = Path(cfg.sft.output_dir) / "hf"
    if (sft_hf / "config.json").is_file():
        print(f"demo: SFT warm start already done ({sft_hf})")
    else:
        print(f"demo: 1/2 SFT warm start, {cfg.sft.steps} steps")
        rc = main(["sft", args.config, *sft_overrides])
        if rc:
            return rc
    print(f"demo: 2/2 GRPO, {cfg.trainer.total_steps} steps from {sft_hf}")
    rc = main(["train", args.config, *overrides, f"model.hf_path={sft_hf}"])
    if rc:
        return rc
    cfg = load_config(args.config, [*overrides, f"model.hf_path={sft_hf}"])
    from megatron_rl.trainer.plot import summary

    out = Path(cfg.run.output_dir)

    def first_last(key, kind):
        try:
            return summary(out / "metrics.jsonl", key, kind=kind)
        except KeyError:  # e.g. no eval set
            return float("nan"), float("nan")

    reward, accuracy = first_last("reward/mean", "train"), first_last("eval/accuracy", "eval")
    print(f"demo: train reward (sampled, T={cfg.rollout.sampling.temperature}) {reward[0]:.3f} -> {reward[1]:.3f}; "
          f"eval accuracy (greedy) {accuracy[0]:.3f} -> {accuracy[1]:.3f}; "
          f"{time.monotonic() - start:.0f} s; plot {out / 'metrics.png'}, metrics {out / 'metrics.jsonl'}")
    return 0


# The demo's task (megatron_rl.data.synthetic.make_cipher_dataset): 4-digit substitution cipher,
# 2000 train / 200 held-out prompts.
DEMO_TASK = {"task": "cipher", "length": 4, "n_train": 2000, "n_eval": 200}


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the CPU demo: SFT then GRPO of a tiny Megatron model that learns (plot, metrics)",
                       description="The full stack on 2 CPU ranks (configs/demo.yaml): generated cipher data and "
                                   "character tokenizer, SFT warm start of a tiny Megatron Qwen2, then GRPO with the "
                                   "embedded engine; prints the reward and eval accuracy at the start and the end.")
    p.add_argument("config", metavar="CONFIG", nargs="?", default=None)
    p.add_argument("overrides", metavar="key.path=value", nargs="*", help="overrides, applied last")
    p.add_argument("--steps", type=_positive_int, default=None, help="override trainer.total_steps")
    p.set_defaults(handler=_demo)


# --- convert ----------------------------------------------------------------------------------


def _convert(args: argparse.Namespace) -> int:
    """Training checkpoint -> HF safetensors. In one plain process the checkpoint is resharded to
    TP=1, PP=1 on load (any saved layout works); under torchrun it uses the config's layout."""
    import torch.distributed as dist

    from megatron_rl.checkpoint import load_checkpoint, resolve_checkpoint
    from megatron_rl.config.schema import ParallelConfig
    from megatron_rl.models.hf_io import save_hf
    from megatron_rl.models.role import MegatronRole
    from megatron_rl.parallel import destroy_parallel, init_parallel

    cfg = load_config(args.config, args.overrides, world_size=args.world_size)
    step_dir = resolve_checkpoint(args.checkpoint)  # fail before any process group exists
    parallel = cfg.parallel if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ParallelConfig()
    init_parallel(parallel, seed=cfg.run.seed)
    try:
        role = MegatronRole.build(args.role, cfg.model, parallel)
        state = load_checkpoint(str(step_dir), {args.role: role}, load_optimizer=False)
        save_hf(role.chunks, args.out, cfg.model, role=args.role)
        if dist.get_rank() == 0:
            print(f"wrote {args.out} ({args.role} at step {state['step']} from {step_dir})")
    finally:
        destroy_parallel()
    return 0


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="export a training checkpoint's model to Hugging Face safetensors",
                       description="Load ROLE from a Megatron distributed checkpoint (a step_<n> directory or the "
                                   "checkpoint root, whose newest complete step is used) and write an HF checkpoint "
                                   "that transformers and SGLang load.")
    _add_config_arguments(p)
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="step_<n> directory or checkpoint.dir")
    p.add_argument("--out", required=True, metavar="DIR", help="where to write the HF checkpoint")
    p.add_argument("--role", default="actor", choices=["actor", "critic", "reward"])
    p.set_defaults(handler=_convert)


# --- plan -------------------------------------------------------------------------------------


def _plan(args: argparse.Namespace) -> int:
    """Layout and per-GPU memory of a config (pure arithmetic, docs/plan.md); exit 2 when it does not fit."""
    from megatron_rl.config.plan import format_plan, plan, refusal

    cfg = load_config(args.config, args.overrides, world_size=args.world_size)
    result = plan(cfg, args.world_size)
    print(format_plan(cfg, result))
    problem = refusal(cfg, result, args.world_size)
    if problem:
        sys.stdout.flush()
        raise ConfigError(problem)
    print("fits")
    return 0


def _add_plan(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="show where every rank and engine runs and the memory each GPU needs",
                       description="Load CONFIG, print the process layout (nodes, TP/PP/DP groups, SGLang GPUs) and "
                                   "the busiest GPU's memory per role and phase. Exit 0 if it fits "
                                   "cluster.gpu_memory_gb, 2 with one line naming the overflow and the knob if not.")
    _add_config_arguments(p)
    p.set_defaults(handler=_plan)


# --- dry-run ----------------------------------------------------------------------------------


def _dry_run(args: argparse.Namespace) -> int:
    """Megatron's process groups and the model's shard shapes for every rank of the config's world,
    on a fake process group and the meta device, in this one process (docs/dryrun.md)."""
    cfg = load_config(args.config, args.overrides, world_size=args.world_size)
    from megatron_rl.parallel.dryrun import dry_run, format_report

    print(format_report(dry_run(cfg, world_size=args.world_size, ranks=args.ranks)))
    return 0


def _add_dry_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dry-run", help="build a full-size layout's process groups and shard shapes without GPUs",
                       description="For every rank of the world, join a fake process group, run Megatron's "
                                   "initialize_model_parallel and build the actor (and critic) on the meta device; "
                                   "check the groups against the layout and that the shards reassemble to the HF "
                                   "shapes. Exit 0 if OK, 2 with one line at the first mismatch.")
    _add_config_arguments(p)
    p.add_argument("--ranks", default="auto", metavar="auto|all|R,R,...",
                   help="auto (default): models on one rank per TP x PP coordinate, groups on every rank "
                        "(up to 256 ranks); all: both on every rank; or a list such as 0,5,31")
    p.set_defaults(handler=_dry_run)


# --- train / sft ------------------------------------------------------------------------------


def _under_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _relaunch(args: argparse.Namespace, nproc: int) -> int:
    """Not under torchrun but the config wants several ranks on this node: start them here, with
    torchrun's own launcher. A rank's one-line error is the message; torchrun's failure report (a
    traceback of the launcher itself) is not printed. Exit code: 2 when rank 0 reported a bad input."""
    import logging

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # megatron-core warns at import, once per module and rank, that TE/Apex are absent (expected on
    # CPU, where the local layer spec and torch optimizers are the intended path)
    quiet = "ignore:Transformer Engine and Apex are not installed:UserWarning"
    os.environ["PYTHONWARNINGS"] = ",".join(w for w in (os.environ.get("PYTHONWARNINGS"), quiet) if w)
    argv = ["--standalone", f"--nproc_per_node={nproc}", "-m", "megatron_rl.cli", args.command, args.config,
            *args.overrides]
    print(f"launching {nproc} ranks: torchrun {' '.join(argv)}", file=sys.stderr)
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        run(get_args_parser().parse_args(argv))
        return 0
    except ChildFailedError as exc:
        codes = {failure.exitcode for failure in exc.failures.values()}
        return 2 if 2 in codes else 1


def _load_for_launch(args: argparse.Namespace):
    world = int(os.environ["WORLD_SIZE"]) if _under_torchrun() else None
    return load_config(args.config, args.overrides, world_size=world or args.world_size)


def _run_job(args: argparse.Namespace, job: str) -> int:
    """`train` / `sft` / `rm`: validate, re-launch under torchrun when one node needs several ranks, run."""
    cfg = _load_for_launch(args)
    if not _under_torchrun() and cfg.cluster.world_size > 1:
        if cfg.cluster.nnodes > 1:
            raise ConfigError(f"cluster.nnodes={cfg.cluster.nnodes}: start every node with torchrun "
                              "(launch/torchrun.sh), or set cluster.nnodes=1")
        return _relaunch(args, cfg.cluster.gpus_per_node)
    from megatron_rl.parallel import destroy_parallel
    from megatron_rl.trainer.errors import PeerFailed

    try:
        if job == "sft":
            from megatron_rl.trainer.sft import run_sft

            result = run_sft(cfg)
        elif job == "rm":
            from megatron_rl.trainer.reward_model import run_rm

            result = run_rm(cfg)
        else:
            from megatron_rl.trainer.rl import RLTrainer

            if int(os.environ.get("RANK", "0")) == 0:
                save_resolved(cfg, os.path.join(cfg.run.output_dir, "config.yaml"))
            result = RLTrainer(cfg).run()
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"{job} done: " + ", ".join(f"{k}={v}" for k, v in result.items()))
        return 0
    except PeerFailed as exc:  # rank 0 reported the cause; the other ranks leave quietly, with its exit code
        return 2 if exc.bad_input else 1
    finally:
        destroy_parallel()


def _train(args: argparse.Namespace) -> int:
    return _run_job(args, "train")


def _sft(args: argparse.Namespace) -> int:
    return _run_job(args, "sft")


def _rm(args: argparse.Namespace) -> int:
    return _run_job(args, "rm")


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="RL training (PPO, GRPO, DAPO, GSPO, ...) from a run config",
                       description="Run the RL loop of CONFIG. Under torchrun each process is one rank; "
                                   "started plainly with cluster.gpus_per_node > 1 it launches that many "
                                   "ranks on this machine. Resumes from the newest complete checkpoint.")
    _add_config_arguments(p)
    p.set_defaults(handler=_train)


def _add_sft(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sft", help="supervised fine-tuning (warm start before RL), exported to HF",
                       description="Fine-tune the actor on sft.train_path (prompt/response rows) and write "
                                   "an HF checkpoint to sft.output_dir/hf.")
    _add_config_arguments(p)
    p.set_defaults(handler=_sft)


def _add_rm(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rm", help="train a reward model on preference pairs (Bradley-Terry), exported to HF",
                       description="Train the reward role on rm.train_path (prompt/chosen/rejected rows) with "
                                   "-log sigmoid(r_chosen - r_rejected), evaluate on rm.eval_path and write an HF "
                                   "*ForSequenceClassification checkpoint to rm.output_dir/hf "
                                   "(docs/reward_model.md).")
    _add_config_arguments(p)
    p.set_defaults(handler=_rm)


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_validate, _add_train, _add_sft, _add_demo,
                                                                 _add_convert, _add_dry_run, _add_rm,
                                                                 _add_plan]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="megatron-rl",
                                     description="Megatron-core RL post-training for LLMs (PPO, GRPO, ...).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # overrides may sit between options (`validate c.yaml a=1 --world-size 8 b=2`)
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if getattr(args, "handler", None) is None:
        parser.print_help(sys.stderr)
        return 2
    report = os.environ.get("RANK", "0") == "0"  # under torchrun every rank may fail alike: rank 0 says it
    try:
        return int(args.handler(args) or 0)
    except ConfigError as exc:
        if report:
            print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # a CheckpointError (bad or missing checkpoint) is a ValueError with one line
        from megatron_rl.models.hf_io import CheckpointError

        if not isinstance(exc, CheckpointError):
            raise
        if report:
            print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `megatron-rl validate x.yaml | head`: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
