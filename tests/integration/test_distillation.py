"""On-policy distillation end to end on 2 CPU ranks: a teacher warm-started by `megatron-rl sft` on
the demo's cipher, a random-initialised student, `distill.mode: alone` (no task reward in the
advantages): the student's reverse KL to the teacher on its own samples falls, and a checkpoint
that cannot be a teacher ends in one line."""
import os
import subprocess
import sys

from trainer_runs import explain, metrics, run_train, write_config


def _sft(config, out_dir, steps):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "megatron_rl.cli", "sft", str(config), f"sft.steps={steps}",
                           f"sft.output_dir={out_dir}", "logging.plot=false"],
                          capture_output=True, text=True, timeout=400, env=env)


def test_student_moves_toward_the_teacher(tmp_path):
    cfg = write_config(tmp_path, "grpo")
    sft = _sft(cfg, tmp_path / "teacher", steps=40)
    assert sft.returncode == 0, explain(sft)
    result = run_train(cfg, "trainer.total_steps=16", "actor.optim.lr=2e-3", "distill.enabled=true",
                       f"distill.teacher_path={tmp_path / 'teacher' / 'hf'}", "distill.mode=alone",
                       "rollout.sampling.max_new_tokens=6", timeout=400)
    assert result.returncode == 0, explain(result)
    kl = [r["distill/reverse_kl"] for r in metrics(tmp_path)]
    first, last = sum(kl[:3]) / 3, sum(kl[-3:]) / 3
    assert first > 1.0 and last < 0.5 * first, kl  # a random student is far from a trained teacher


def test_a_checkpoint_that_cannot_teach_fails_in_one_line(tmp_path):
    cfg = write_config(tmp_path, "grpo")
    result = run_train(cfg, "trainer.total_steps=1", "distill.enabled=true", f"distill.teacher_path={tmp_path / 'none'}")
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, explain(result)
    assert errors[0].startswith("error: distill.teacher_path: no config.json in ") and "ForCausalLM" in errors[0]
