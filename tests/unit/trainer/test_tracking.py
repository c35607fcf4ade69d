"""Tracker (JSONL / console / TensorBoard / wandb sinks) and the metrics plot."""
import builtins
import json
import math
import sys
import types

import pytest
import torch

from megatron_rl.config import ConfigError
from megatron_rl.config.schema import LoggingConfig
from megatron_rl.trainer import plot as P
from megatron_rl.trainer import tracking as T
from megatron_rl.trainer.tracking import Tracker


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _tracker(tmp_path, total=10, start=0, **logging):
    cfg = LoggingConfig(**{"plot": False, **logging})
    return Tracker(cfg, tmp_path, total_steps=total, start_step=start, run_name="t", desc="test",
                   show_progress=False)


def _train(step, **extra):
    return {"reward/mean": 0.1 * step, "actor/kl": 0.01, "response/length_mean": 12.0, **extra}


def test_jsonl_lines_are_flushed_before_close(tmp_path):
    tr = _tracker(tmp_path)
    tr.log(1, {"reward/mean": torch.tensor(0.25), "actor/kl": 0.5, "count": 3}, kind="train")
    tr.log(1, {"eval/accuracy": 0.4, "eval/pass@4": 0.7}, kind="eval")
    rows = _lines(tmp_path / "metrics.jsonl")  # read while the tracker is still open
    assert [r["kind"] for r in rows] == ["train", "eval"]
    assert rows[0]["step"] == 1 and rows[0]["reward/mean"] == 0.25 and rows[0]["count"] == 3
    assert rows[1]["eval/pass@4"] == 0.7
    assert all(abs(r["time"] - rows[0]["time"]) < 60 for r in rows) and rows[0]["time"] > 1.6e9
    tr.close()
    tr.close()  # idempotent


def test_non_finite_values_are_null(tmp_path):
    tr = _tracker(tmp_path)
    tr.log(1, {"a": float("nan"), "b": float("inf"), "c": torch.tensor(float("-inf")), "d": 1.5})
    tr.close()
    text = (tmp_path / "metrics.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text
    row = json.loads(text)
    assert row["a"] is None and row["b"] is None and row["c"] is None and row["d"] == 1.5


def test_reserved_metric_name_rejected(tmp_path):
    tr = _tracker(tmp_path)
    with pytest.raises(ValueError, match="reserved"):
        tr.log(1, {"step": 3})
    tr.close()


def test_resume_drops_steps_that_will_be_redone(tmp_path):
    tr = _tracker(tmp_path)
    for s in range(1, 6):
        tr.log(s, _train(s))
    tr.log(3, {"eval/accuracy": 0.5}, kind="eval")
    tr.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "kind": "tr')  # a line cut by a kill

    tr = _tracker(tmp_path, start=3)
    tr.log(4, _train(4))
    rows = _lines(tmp_path / "metrics.jsonl")
    tr.close()
    train_steps = [r["step"] for r in rows if r["kind"] == "train"]
    assert train_steps == [1, 2, 3, 4]
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [3]
    assert not (tmp_path / "metrics.jsonl.tmp").exists()


def test_fresh_run_overwrites(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 9, "kind": "train"}\n')
    tr = _tracker(tmp_path)
    tr.log(1, _train(1))
    tr.close()
    assert [r["step"] for r in _lines(tmp_path / "metrics.jsonl")] == [1]


def test_jsonl_switch_off(tmp_path):
    tr = _tracker(tmp_path, jsonl=False)
    tr.log(1, _train(1))
    tr.close()
    assert not (tmp_path / "metrics.jsonl").exists()


def test_console_lines_every_log_every_and_eval(tmp_path, capsys):
    tr = _tracker(tmp_path, total=7, log_every=3)
    for s in range(1, 8):
        tr.log(s, _train(s, **{"timing/step_s": 2.5, "actor/entropy": float("nan")}))
    tr.log(7, {"eval/accuracy": 0.4, "eval/pass@4": 0.7}, kind="eval")
    tr.write("hello")
    tr.close()
    out = capsys.readouterr().out.splitlines()
    step_lines = [line for line in out if line.startswith("step ")]
    # every 3rd step, and the last step
    assert [line.split()[1] for line in step_lines] == ["3/7", "6/7", "7/7"]
    assert "reward 0.3" in step_lines[0] and "kl 0.01" in step_lines[0] and "len 12" in step_lines[0]
    assert "step_s 2.5" in step_lines[0] and "ent nan" in step_lines[0]
    assert "[eval] step 7: accuracy 0.4, pass@4 0.7" in out
    assert "hello" in out


def test_console_line_falls_back_to_callers_keys(tmp_path, capsys):
    tr = _tracker(tmp_path, total=2)
    tr.log(1, {"my/loss": 1.25})
    tr.close()
    assert "step 1/2 | my/loss 1.25" in capsys.readouterr().out


def test_progress_bar_postfix_and_position(tmp_path):
    cfg = LoggingConfig(plot=False)
    tr = Tracker(cfg, tmp_path, total_steps=10, start_step=2, show_progress=True)
    assert tr._bar.n == 2
    tr.log(3, _train(3))
    tr.log(3, {"eval/accuracy": 0.5}, kind="eval")
    tr.log(4, _train(4))
    assert tr._bar.n == 4
    post = tr._bar.postfix
    assert "reward=0.4" in post and "acc=0.5" in post and "kl=0.01" in post and "len=12" in post
    tr.close()


def _records():
    rows = []
    for s in range(1, 21):
        rows.append({"step": s, "kind": "train", "reward/mean": s / 20, "actor/kl": 0.01 * s,
                     "response/length_mean": 10 + s, "timing/step_s": float("nan") if s == 5 else 1.0,
                     "actor/entropy": None, "other": 3.0})
        if s % 5 == 0:
            rows.append({"step": s, "kind": "eval", "eval/accuracy": s / 25})
    return rows


def test_plot_panels_and_png(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _records()))
    expected = ["reward/mean + eval/accuracy", "response/length_mean", "actor/kl", "timing/step_s"]
    fig = P._build_figure(P.load_metrics(path))
    assert [ax.get_title() for ax in fig.axes] == expected  # actor/entropy is all null: no panel
    reward_ax = fig.axes[0]
    assert len(reward_ax.lines) == 2 and len(reward_ax.lines[1].get_xdata()) == 4  # 4 eval points
    assert len(fig.axes[3].lines[0].get_xdata()) == 19  # the NaN point is left out

    out = P.plot_metrics(path, tmp_path / "sub" / "curves.png", title="run")
    data = out.read_bytes()
    assert out == tmp_path / "sub" / "curves.png" and data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    import matplotlib.image as mpimg
    h, w = mpimg.imread(out).shape[:2]
    assert w > h  # a 3 x 2 grid
    assert P.plot_metrics(path, tmp_path / "again.png", title="run").read_bytes() == data  # deterministic

    fig = P._build_figure(P.load_metrics(path), keys=["other", ("actor/kl", "missing")])
    assert [ax.get_title() for ax in fig.axes] == ["other", "actor/kl"]


def test_plot_without_panels_writes_note(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "kind": "train", "x": 1.0}\n')
    fig = P._build_figure(P.load_metrics(path))
    assert fig.axes == [] and any("no metrics" in t.get_text() for t in fig.texts)
    out = P.plot_metrics(path, tmp_path / "empty.png")
    assert out.stat().st_size > 0


def test_close_writes_plot(tmp_path):
    tr = Tracker(LoggingConfig(), tmp_path, total_steps=3, run_name="demo", show_progress=False)
    for s in range(1, 4):
        tr.log(s, _train(s))
    assert tr.close() == tmp_path / "metrics.png"
    assert (tmp_path / "metrics.png").stat().st_size > 0
    # without a JSONL file the plot comes from the records kept in memory
    sub = tmp_path / "nojsonl"
    tr = Tracker(LoggingConfig(jsonl=False), sub, total_steps=3, show_progress=False)
    tr.log(1, _train(1))
    assert tr.close() == sub / "metrics.png" and not (sub / "metrics.jsonl").exists()


def test_summary_first_last(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _records()))
    assert P.summary(path, "reward/mean") == (0.05, 1.0)
    assert P.summary(path, "eval/accuracy", kind="eval") == (0.2, 0.8)
    first, last = P.summary(path, "timing/step_s")
    assert first == 1.0 and last == 1.0 and not math.isnan(first)
    with pytest.raises(KeyError, match="actor/entropy"):
        P.summary(path, "actor/entropy")


def _block_import(monkeypatch, *names):
    real = builtins.__import__

    def fake(name, *args, **kwargs):
        if any(name == n or name.startswith(n + ".") for n in names):
            raise ImportError(f"No module named {name!r}")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake)


def test_missing_tensorboard_is_config_error(tmp_path, monkeypatch):
    _block_import(monkeypatch, "tensorboard", "torch.utils.tensorboard")
    with pytest.raises(ConfigError) as err:
        _tracker(tmp_path / "tb", tensorboard=True)
    msg = str(err.value)
    assert "\n" not in msg and "logging.tensorboard" in msg and "pip install tensorboard" in msg
    assert not (tmp_path / "tb").exists()  # failed before writing anything


def test_missing_wandb_is_config_error(tmp_path, monkeypatch):
    monkeypatch.delitem(sys.modules, "wandb", raising=False)
    _block_import(monkeypatch, "wandb")
    with pytest.raises(ConfigError) as err:
        _tracker(tmp_path / "wb", wandb_project="proj")
    msg = str(err.value)
    assert "\n" not in msg and "logging.wandb_project" in msg and "pip install wandb" in msg


def test_tensorboard_and_wandb_sinks(tmp_path, monkeypatch):
    calls = {"tb": [], "init": [], "log": [], "finish": 0, "closed": 0}

    class FakeWriter:
        def __init__(self, log_dir, purge_step=None):
            calls["tb_args"] = (log_dir, purge_step)

        def add_scalar(self, tag, value, step):
            calls["tb"].append((tag, value, step))

        def flush(self):
            pass

        def close(self):
            calls["closed"] += 1

    class FakeRun:
        id = "abc123"

        def log(self, metrics, step):
            calls["log"].append((metrics, step))

        def finish(self):
            calls["finish"] += 1

    fake_wandb = types.ModuleType("wandb")
    fake_wandb.init = lambda **kw: calls["init"].append(kw) or FakeRun()
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb)
    monkeypatch.setattr(T, "_import_summary_writer", lambda: FakeWriter)

    cfg_kw = dict(tensorboard=True, wandb_project="proj")
    tr = _tracker(tmp_path, **cfg_kw)
    tr.log(1, {"reward/mean": torch.tensor(0.5), "note": "x"})
    tr.close()
    assert calls["tb"] == [("reward/mean", 0.5, 1)] and calls["closed"] == 1
    assert calls["tb_args"][1] is None
    assert calls["init"][0] == dict(project="proj", name="t", config=None, resume="allow", dir=str(tmp_path))
    assert calls["log"] == [({"reward/mean": 0.5, "note": "x"}, 1)] and calls["finish"] == 1
    assert (tmp_path / "wandb_run_id").read_text().strip() == "abc123"

    tr = _tracker(tmp_path, start=1, **cfg_kw)  # resume: same wandb run, TB purges redone steps
    tr.close()
    assert calls["init"][1]["id"] == "abc123" and calls["tb_args"][1] == 2
