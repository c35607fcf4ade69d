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
    from megatron_rl import toy_grpo  # torch-heavy: imported only for this command

    if "=" in args.config and not os.path.exists(args.config):  # `demo key=value ...`: no CONFIG given
        args.overrides, args.config = [args.config, *args.overrides], str(CONFIGS_DIR / "toy_grpo.yaml")
    return toy_grpo.main(args.config, args.overrides, steps=args.steps, output_dir=args.output_dir, lr=args.lr)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="a small GRPO run on CPU that learns (progress bar, metrics, plot)",
                       description="Train a toy GRU policy with the algorithm settings of CONFIG "
                                   "(default configs/toy_grpo.yaml); prints the reward at the start and "
                                   "the end and writes metrics.jsonl, reward_curve.png and config.yaml.")
    p.add_argument("config", metavar="CONFIG", nargs="?", default=str(CONFIGS_DIR / "toy_grpo.yaml"))
    p.add_argument("overrides", metavar="key.path=value", nargs="*", help="overrides, applied last")
    p.add_argument("--steps", type=_positive_int, default=None, help="override trainer.total_steps")
    p.add_argument("--output-dir", default=None, help="default: run.output_dir")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate of the toy policy")
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


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_validate, _add_demo, _add_convert]


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
    try:
        return int(args.handler(args) or 0)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # a CheckpointError (bad or missing checkpoint) is a ValueError with one line
        from megatron_rl.models.hf_io import CheckpointError

        if not isinstance(exc, CheckpointError):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `megatron-rl validate x.yaml | head`: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
