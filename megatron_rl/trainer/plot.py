"""Training curves from a metrics JSONL file (written by trainer.tracking.Tracker) as one PNG, and
the reader of that file (`load_metrics`); this module does not import the tracker.

A grid of small panels, one per main curve present in the file, x = step; train records are drawn
as lines, eval records as markers. Keys absent from the file are skipped; NaN / inf (stored as
null) and non-numeric values are left out. Draws on a bare matplotlib Figure (Agg canvas, no pyplot,
no display needed, the caller's backend untouched).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

# Each panel overlays the keys of one tuple; the panel title is the keys present, joined by " + ".
DEFAULT_PANELS: tuple[tuple[str, ...], ...] = (
    ("reward/mean", "eval/accuracy"),
    ("response/length_mean",),
    ("actor/kl",),
    ("actor/entropy",),
    ("actor/clip_frac",),
    ("actor/grad_norm",),
    ("actor/pg_loss",),
    ("critic/value_loss",),
    ("timing/step_s",),
)

PanelSpec = Union[str, Sequence[str]]


def load_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a metrics JSONL file; blank or partial lines (a killed writer) are skipped."""
    records = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


def _finite(value) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _series(records: Iterable[dict], key: str) -> dict[str, tuple[list[int], list[float]]]:
    """kind -> (steps, values) of the finite values of `key`, in record order."""
    out: dict[str, tuple[list[int], list[float]]] = {}
    for r in records:
        y = _finite(r.get(key))
        if y is None:
            continue
        xs, ys = out.setdefault(str(r.get("kind", "train")), ([], []))
        xs.append(r["step"])
        ys.append(y)
    return out


def _panels(records: list[dict], keys: Optional[Sequence[PanelSpec]] = None) -> list[tuple[str, ...]]:
    """The panels to draw: for each spec, the keys that have at least one finite value."""
    specs = DEFAULT_PANELS if keys is None else [(k,) if isinstance(k, str) else tuple(k) for k in keys]
    present = set()
    for r in records:
        present.update(k for k, v in r.items() if _finite(v) is not None)
    panels = []
    for spec in specs:
        found = tuple(k for k in spec if k in present)
        if found:
            panels.append(found)
    return panels


def _build_figure(records: list[dict], keys: Optional[Sequence[PanelSpec]] = None,
                  title: Optional[str] = None, note: str = "no metrics to plot"):
    """The matplotlib Figure: one axes per panel, titled with its keys joined by ' + '."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no backend switch

    panels = _panels(records, keys)
    if not panels:
        fig = Figure(figsize=(5, 2.5))
        fig.text(0.5, 0.5, note, ha="center", va="center", wrap=True)
        if title:
            fig.suptitle(title)
        return fig
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(4.3 * ncols, 3.0 * nrows + (0.4 if title else 0.0)))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[len(panels):]:
        fig.delaxes(ax)
    for ax, panel in zip(axes, panels):
        n_series = 0
        for key in panel:
            for kind, (xs, ys) in sorted(_series(records, key).items()):
                label = key if len(panel) > 1 else kind
                if kind == "train":
                    ax.plot(xs, ys, "-", lw=1.2, marker="." if len(xs) < 30 else None, label=label)
                else:
                    ax.plot(xs, ys, "o-", ms=4, lw=1.0, label=label if kind == "eval" else f"{label} ({kind})")
                n_series += 1
        ax.set_title(" + ".join(panel), fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if n_series > 1:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_records(records: list[dict], out_png: str | os.PathLike, keys: Optional[Sequence[PanelSpec]] = None,
                 title: Optional[str] = None, note: str = "no metrics to plot") -> Path:
    """Write the panel grid for in-memory records (the same dicts as the JSONL lines)."""
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig = _build_figure(records, keys, title, note)
    # no "Software" metadata: the same input gives the same bytes
    fig.savefig(out, dpi=100, metadata={"Software": None})
    return out


def plot_metrics(jsonl_path: str | os.PathLike, out_png: str | os.PathLike,
                 keys: Optional[Sequence[PanelSpec]] = None, title: Optional[str] = None) -> Path:
    """Plot the main curves of a metrics JSONL file to `out_png`; returns its path.

    `keys`: panels to draw, each a metric name or a list of names overlaid in one panel; default
    DEFAULT_PANELS. Absent keys are skipped; with no panel left the PNG carries a note instead.
    """
    records = load_metrics(jsonl_path)
    return plot_records(records, out_png, keys, title, note=f"no metrics to plot in {Path(jsonl_path).name}")


def summary(jsonl_path: str | os.PathLike, key: str, kind: Optional[str] = None) -> tuple[float, float]:
    """(first, last) finite value of `key` in the file (optionally only records of one kind)."""
    values = [v for r in load_metrics(jsonl_path)
              if (kind is None or r.get("kind") == kind) and (v := _finite(r.get(key))) is not None]
    if not values:
        raise KeyError(f"{key!r} has no finite value in {jsonl_path}" + (f" (kind={kind})" if kind else ""))
    return values[0], values[-1]
