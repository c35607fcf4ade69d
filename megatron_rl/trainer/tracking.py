"""Metric tracking for a training run: JSONL file, console progress, TensorBoard, wandb, a PNG plot.

Built on global rank 0 only. The caller owns the metric names ("reward/mean", "actor/kl", ...);
the tracker writes what it is given and only picks a few known names for the console summary.

    tracker = Tracker(cfg.logging, output_dir, total_steps=N, start_step=resumed_step,
                      run_name=cfg.run.name, config=resolved_config_dict, desc="grpo")
    tracker.log(step, {"reward/mean": 0.3, ...}, kind="train")
    tracker.log(step, {"eval/accuracy": 0.4}, kind="eval")
    tracker.write("a line that does not break the progress bar")
    tracker.close()

Steps are the number of completed training steps (1-based); `start_step` is the step a resumed
run restarts after. On resume the lines of `metrics.jsonl` with a later step (the steps that will
be redone) are dropped before appending.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Mapping, Optional

from tqdm import tqdm

from ..config import ConfigError
from ..config.schema import LoggingConfig

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "metrics.png"
TENSORBOARD_DIR = "tensorboard"
WANDB_ID_FILE = "wandb_run_id"

# (short console name, metric keys tried in order). The console shows these when present.
CONSOLE_KEYS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("reward", ("reward/mean",)),
    ("acc", ("eval/accuracy", "reward/accuracy")),
    ("kl", ("actor/kl",)),
    ("ent", ("actor/entropy",)),
    ("len", ("response/length_mean",)),
    ("step_s", ("timing/step_s",)),
)
_RESERVED = ("step", "kind", "time")


def _scalar(value: Any) -> Any:
    """Python value for JSON: tensors / numpy scalars -> float or int; NaN and inf -> None."""
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return str(value)
    return value if math.isfinite(value) else None


def _number(value: Any) -> Optional[float]:
    """A float for TensorBoard / console, or None when the value is not a number."""
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, (bool, str)) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _fmt(value: Any) -> str:
    """Short console form: ints as is, floats to 4 significant digits, None (non-finite) as nan."""
    if value is None:
        return "nan"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    x = _number(value)
    if x is None:
        return str(value)
    return f"{x:.4g}"


def truncate_metrics(path: Path, start_step: int) -> None:
    """Keep only the lines with step <= start_step (and well-formed); atomic rewrite."""
    if not path.exists():
        return
    kept = []
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), (int, float)) \
                    and record["step"] <= start_step:
                kept.append(line if line.endswith("\n") else line + "\n")
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.writelines(kept)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _import_summary_writer():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("logging.tensorboard is true but tensorboard is not installed: "
                          "pip install tensorboard or set logging.tensorboard=false") from None
    return SummaryWriter


def _import_wandb():
    try:
        import wandb
    except ImportError:
        raise ConfigError("logging.wandb_project is set but wandb is not installed: "
                          "pip install wandb or unset logging.wandb_project") from None
    return wandb


class Tracker:
    """Writes each `log(step, metrics, kind)` to every enabled sink; see the module docstring."""

    def __init__(self, cfg: LoggingConfig, output_dir: str | os.PathLike, total_steps: int,
                 start_step: int = 0, run_name: Optional[str] = None,
                 config: Optional[Mapping[str, Any]] = None, desc: str = "train",
                 show_progress: Optional[bool] = None):
        """`show_progress`: None draws the bar only on a terminal (the log_every / eval lines
        are printed either way), True always, False never."""
        self.cfg = cfg
        self.output_dir = Path(output_dir)
        self.total_steps = int(total_steps)
        self.start_step = int(start_step)
        self.run_name = run_name
        self._closed = False
        self._latest: dict[str, Any] = {}  # last value of every metric seen (console postfix)
        self._history: list[dict] = []  # only kept when plotting without a JSONL file
        self._jsonl = None
        self._tb = None
        self._wandb_run = None

        # Fail on missing optional packages before anything is opened or written.
        summary_writer = _import_summary_writer() if cfg.tensorboard else None
        wandb = _import_wandb() if cfg.wandb_project else None

        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = self.output_dir / METRICS_FILE
        if cfg.jsonl:
            if self.start_step > 0:
                truncate_metrics(self.jsonl_path, self.start_step)
                self._jsonl = open(self.jsonl_path, "a")
            else:
                self._jsonl = open(self.jsonl_path, "w")
        if summary_writer is not None:
            self._tb = summary_writer(log_dir=str(self.output_dir / TENSORBOARD_DIR),
                                      purge_step=self.start_step + 1 if self.start_step > 0 else None)
        if wandb is not None:
            id_file = self.output_dir / WANDB_ID_FILE
            kwargs = dict(project=cfg.wandb_project, name=run_name,
                          config=dict(config) if config is not None else None,
                          resume="allow", dir=str(self.output_dir))
            if self.start_step > 0 and id_file.exists():
                kwargs["id"] = id_file.read_text().strip()  # continue the same wandb run
            self._wandb_run = wandb.init(**kwargs)
            run_id = getattr(self._wandb_run, "id", None)
            if isinstance(run_id, str) and run_id:
                id_file.write_text(run_id + "\n")

        self._bar = tqdm(total=self.total_steps, initial=min(self.start_step, self.total_steps), desc=desc,
                         dynamic_ncols=True, mininterval=1.0,
                         disable=None if show_progress is None else not show_progress)

    # --- logging ------------------------------------------------------------------------------

    def log(self, step: int, metrics: Mapping[str, Any], kind: str = "train") -> None:
        assert not self._closed, "Tracker.log after close()"
        clash = [k for k in metrics if k in _RESERVED]
        if clash:
            raise ValueError(f"metric names {clash} are reserved by the metrics file")
        step = int(step)
        values = {str(k): _scalar(v) for k, v in metrics.items()}
        record = {"step": step, "kind": kind, "time": time.time(), **values}
        if self._jsonl is not None:
            self._jsonl.write(json.dumps(record, allow_nan=False) + "\n")
            self._jsonl.flush()
        elif self.cfg.plot:
            self._history.append(record)
        if self._tb is not None:
            for k, v in metrics.items():
                x = _number(v)
                if x is not None:
                    self._tb.add_scalar(str(k), x, step)
            self._tb.flush()
        if self._wandb_run is not None:
            self._wandb_run.log({str(k): v.item() if hasattr(v, "item") else v for k, v in metrics.items()},
                                step=step)
        self._latest.update(values)
        if kind == "train":
            self._console_train(step, values)
        elif kind == "eval":
            self.write(f"[eval] step {step}: " + ", ".join(
                f"{k.removeprefix('eval/')} {_fmt(v)}" for k, v in values.items()))

    def _console_train(self, step: int, values: dict) -> None:
        postfix = {}
        for short, keys in CONSOLE_KEYS:
            for k in keys:
                if self._latest.get(k) is not None:
                    postfix[short] = _fmt(self._latest[k])
                    break
        self._bar.set_postfix(postfix, refresh=False)
        if step > self._bar.n:
            self._bar.update(step - self._bar.n)
        if step % self.cfg.log_every == 0 or step == self.total_steps:
            parts = []
            for short, keys in CONSOLE_KEYS:
                for k in keys:
                    if k in values:
                        parts.append(f"{short} {_fmt(values[k])}")
                        break
            if not parts:  # none of the known names: show the first few the caller gave
                parts = [f"{k} {_fmt(v)}" for k, v in list(values.items())[:6]]
            self.write(f"step {step}/{self.total_steps} | " + " | ".join(parts))

    def write(self, msg: str) -> None:
        """Print a line to the console without breaking the progress bar."""
        tqdm.write(str(msg))

    # --- closing ------------------------------------------------------------------------------

    def close(self) -> Optional[Path]:
        """Close the bar and the writers; write the PNG plot when logging.plot. Returns its path."""
        if self._closed:
            return None
        self._closed = True
        self._bar.close()
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb_run is not None:
            self._wandb_run.finish()
        if not self.cfg.plot:
            return None
        from .plot import plot_metrics, plot_records

        out = self.output_dir / PLOT_FILE
        try:
            if self.cfg.jsonl:
                return plot_metrics(self.jsonl_path, out, title=self.run_name)
            return plot_records(self._history, out, title=self.run_name)
        except Exception as exc:  # a failed plot must not fail a finished run
            self.write(f"warning: could not write the metrics plot {out}: {type(exc).__name__}: {exc}")
            return None

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
