"""The Megatron demo, shortened: `megatron-rl demo` makes its data, runs SFT, then GRPO, and
reports; the full-length run (which must show learning) is the README command itself."""
import json
import subprocess
import sys


def test_demo_command_short(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "megatron_rl", "demo", f"run.output_dir={tmp_path}", "sft.steps=10",
         "trainer.total_steps=3", "trainer.eval_every=3", "algorithm.prompts_per_step=4", "algorithm.mini_batch_prompts=2",
         "actor.micro_batch_size=8", "data.eval_max_prompts=8", "checkpoint.save_every=null"],
        capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    assert "demo: train reward" in out.stdout and "->" in out.stdout, out.stdout
    rows = [json.loads(line) for line in (tmp_path / "data" / "eval.jsonl").open()]
    assert len(rows) == 200 and all(len(r["prompt"]) == 4 and len(r["answer"]) == 4 for r in rows)  # DEMO_TASK: cipher
    assert (tmp_path / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "sft" / "hf" / "config.json").is_file() and (tmp_path / "sft" / "hf" / "tokenizer.json").is_file()
    assert "train_path: " + str(tmp_path / "data" / "train.jsonl") in (tmp_path / "config.yaml").read_text()
    # a second run reuses the data and the SFT model and resumes the finished run: nothing to redo
    again = subprocess.run([sys.executable, "-m", "megatron_rl", "demo", f"run.output_dir={tmp_path}", "sft.steps=10",
                            "trainer.total_steps=3", "algorithm.prompts_per_step=4", "algorithm.mini_batch_prompts=2",
                            "actor.micro_batch_size=8", "data.eval_max_prompts=8", "checkpoint.save_every=null"],
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-5000:]
    assert "SFT warm start already done" in again.stdout and "(step 3)" in again.stdout
