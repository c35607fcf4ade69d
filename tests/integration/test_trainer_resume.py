"""Kill a run mid-step, run the same command again: it continues from the last complete checkpoint
with the same data order and the same numbers as a run that was never interrupted; a corrupt
newest checkpoint is skipped with a warning."""
import shutil

from trainer_runs import explain, kill_job, metrics, run_train, start_train, wait_for, write_config

STEPS = ["trainer.total_steps=4", "checkpoint.save_every=2"]
SAME = ("reward/mean", "actor/loss", "actor/grad_norm", "response/length_mean", "actor/kl")


def test_killed_run_resumes_exactly(tmp_path):
    straight = tmp_path / "straight"
    result = run_train(write_config(straight), *STEPS)
    assert result.returncode == 0, explain(result)
    reference = metrics(straight)

    killed = tmp_path / "killed"
    cfg = write_config(killed)
    proc = start_train(cfg, *STEPS, log=tmp_path / "first.log")
    ckpt = killed / "checkpoints" / "step_00000002" / "complete.json"
    wait_for(lambda: ckpt.is_file(), 240, proc)
    kill_job(proc)  # SIGKILL to torchrun and both ranks, somewhere in step 3
    assert not (killed / "checkpoints" / "step_00000004").exists()

    result = run_train(cfg, *STEPS)
    assert result.returncode == 0, explain(result)
    assert "resumed from" in result.stdout and "(step 2)" in result.stdout, explain(result)
    resumed = metrics(killed)
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]  # the steps redone are not duplicated
    for a, b in zip(reference, resumed):
        for key in SAME:
            assert abs(a[key] - b[key]) <= 1e-5 * max(1.0, abs(a[key])), (a["step"], key, a[key], b[key])


def test_corrupt_checkpoint_is_skipped(tmp_path):
    cfg = write_config(tmp_path)
    result = run_train(cfg, *STEPS)
    assert result.returncode == 0, explain(result)
    newest = tmp_path / "checkpoints" / "step_00000004"
    for f in newest.glob("*.distcp"):
        f.write_bytes(b"not a checkpoint")
    shutil.rmtree(tmp_path / "checkpoints" / "step_00000002.partial", ignore_errors=True)
    (tmp_path / "checkpoints" / "step_00000006.partial").mkdir()  # a killed save: never a candidate

    result = run_train(cfg, "trainer.total_steps=5", "checkpoint.save_every=null")
    assert result.returncode == 0, explain(result)
    assert "warning: skipping checkpoint" in result.stdout and "step_00000004" in result.stdout, explain(result)
    assert "(step 2)" in result.stdout
    assert [r["step"] for r in metrics(tmp_path)] == [1, 2, 3, 4, 5]
