"""The RL loop: `megatron-rl train CONFIG`, one process per rank (torchrun) or a single process.

One step, top-down (DESIGN.md's data flow):

    prompts -> rollout -> rewards (-> dynamic-sampling filter, overlong shaping)      rank 0
    -> broadcast samples -> old / reference logprobs, values, reward-model scores     every rank
    -> advantages -> epochs x mini-batches of actor (and critic) updates
    -> weight sync to the engine -> (rm.iterative: retrain the reward model) -> metrics -> checkpoint

Rank 0 owns the prompts, the rollout engine, the reward functions and the metrics; every rank
holds the whole step's batch (see trainer/batch.py) and trains its data-parallel share of it.
"""
from __future__ import annotations

import signal
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from .. import algorithms as A
from ..config import ConfigError
from ..config.schema import RunConfig
from ..rollout.types import SamplingParams
from .batch import build_batch, data_parallel_shard, mini_batches, pad_rows, trim_columns
from .distill import build_teacher
from .errors import from_rank0
from .losses import (actor_loss_fn, advantages_and_returns, critic_loss_fn, mini_batch_normalizer, mini_batch_tokens,
                     shift_values)
from .reward_model import IterativeRewardModel, RewardModelScorer, check_batch_layout
from .rollout_phase import collect_rollouts

class RLTrainer:
    def __init__(self, cfg: RunConfig):
        from ..models.role import MegatronRole
        from ..parallel import init_parallel

        self.cfg, algo = cfg, cfg.algorithm
        init_parallel(cfg.parallel, seed=cfg.run.seed)
        from megatron.core import parallel_state as ps

        self.rank0 = dist.get_rank() == 0
        self.dp, self.dp_rank, self.dp_group = (ps.get_data_parallel_world_size(), ps.get_data_parallel_rank(),
                                                ps.get_data_parallel_group())
        self.output_dir = Path(cfg.run.output_dir)
        # "correct": full marks from the rule-based sources (a reward model's score has no maximum)
        self.full_marks = sum(src.weight for src in cfg.reward.sources if src.weight > 0 and src.type != "reward_model")
        self.step = 0
        self.stop_requested = False

        # models: the actor trains; the reference and critic exist only when the algorithm uses them
        updates_per_step = algo.epochs * -(-algo.prompts_per_step // algo.mini_batch_prompts)
        total_updates = cfg.trainer.total_steps * updates_per_step
        hf = cfg.model.hf_path
        self.actor = MegatronRole.build("actor", cfg.model, cfg.parallel, cfg.actor.optim, total_steps=total_updates,
                                        hf_path=hf, recompute=cfg.actor.recompute)
        self.use_kl_loss = cfg.reference.enabled and algo.kl.placement == "loss"
        self.use_kl_reward = cfg.reference.enabled and algo.kl.placement == "reward"
        self.reference = None
        if self.use_kl_loss or self.use_kl_reward:
            self.reference = MegatronRole.build("reference", cfg.model, cfg.parallel, hf_path=hf)
            self.reference.copy_weights_from(self.actor)  # identical at the start, also without hf_path
        self.teacher = build_teacher(cfg)  # on-policy distillation (trainer/distill.py)
        self.critic = None
        if cfg.critic.enabled and cfg.critic.init_from == "reward":
            raise ConfigError("critic.init_from 'reward' is not supported yet: set critic.init_from=actor")
        if cfg.critic.enabled:
            self.critic = MegatronRole.build("critic", cfg.model, cfg.parallel, cfg.critic.optim,
                                             total_steps=total_updates, hf_path=hf)
        # a reward_model source is scored on these ranks (trainer/reward_model/); rm.iterative retrains it
        iterative = cfg.rm.iterative
        if iterative.enabled:
            check_batch_layout(cfg.rm, self.dp)
        self.reward_model = RewardModelScorer.from_config(
            cfg, optim=cfg.rm.optim if iterative.enabled else None,
            total_steps=max(1, cfg.trainer.total_steps // iterative.every * iterative.steps))
        self.kl_ctl = (A.AdaptiveKLController(algo.kl.coef, algo.kl.target, algo.kl.horizon)
                       if algo.kl.controller == "adaptive" else A.FixedKLController(algo.kl.coef))
        self.shuffle = torch.Generator().manual_seed(cfg.run.seed)  # mini-batch order

        # rank 0: data, tokenizer, engine, rewards, metrics
        self.engine = self.tokenizer = self.sampler = self.runner = self.tracker = None
        self.train_data = self.eval_data = None
        self.pad_id, self.eos_id = from_rank0(self._setup_rank0)
        self.iterative_rm = (IterativeRewardModel(self.reward_model, cfg.rm, seed=cfg.run.seed + 1, pad_id=self.pad_id,
                                                  dp_rank=self.dp_rank, dp=self.dp) if iterative.enabled else None)
        from ..weight_sync.factory import build_weight_sync

        self.sync = build_weight_sync(cfg.rollout, self.engine, output_dir=str(self.output_dir))
        self.sampling = self._sampling_params(cfg.rollout.sampling)
        self._resume()
        signal.signal(signal.SIGTERM, self._on_sigterm)

    # ================================================================== the loop
    def run(self) -> dict:
        cfg = self.cfg
        self._sync_weights()  # the engine serves the actor's current weights from the first rollout on
        if cfg.trainer.eval_every and self.step == 0:
            self._evaluate(0)
        while self.step < cfg.trainer.total_steps:
            step = self.step + 1
            metrics = self.train_one_step(step)
            self.step = step
            if self.rank0:
                self.tracker.log(step, metrics, kind="train")
            if cfg.trainer.eval_every and step % cfg.trainer.eval_every == 0:
                self._evaluate(step)
            stop = self._agree(self.stop_requested)
            skipped = metrics.get("actor/nonfinite_loss", 0.0) > 0
            last = step == cfg.trainer.total_steps
            if stop or last or (cfg.checkpoint.save_every and step % cfg.checkpoint.save_every == 0):
                if skipped:  # keep the last good checkpoint rather than one taken after a bad step
                    self._print(f"step {step}: non-finite loss; not checkpointing this step")
                else:
                    self._save(step)
            if stop:
                self._print(f"stopped by SIGTERM after step {step}; run the same command again to resume")
                break
        return self.close()

    def train_one_step(self, step: int) -> dict:
        cfg, algo, times = self.cfg, self.cfg.algorithm, {}
        with _timed(times, "rollout"):
            rollout = self._rollout()
        batch = build_batch(rollout.samples, rollout.scores, pad_id=self.pad_id, step_ends=rollout.step_ends,
                            step_scores=rollout.step_scores)
        with _timed(times, "score"):
            reward_model_metrics = self._score(batch)
        advantages, metrics = advantages_and_returns(algo, batch, kl_coef=self.kl_ctl.value if self.use_kl_reward else None,
                                                     distill=cfg.distill if self.teacher is not None else None)
        metrics.update(reward_model_metrics)
        batch.update(advantages)
        if algo.mismatch.mode != "none":
            weights, keep, mismatch = A.mismatch_importance_weights(
                batch["old_logprobs"], batch["rollout_logprobs"], batch["response_mask"], algo.mismatch.level,
                algo.mismatch.mode, algo.mismatch.upper, algo.mismatch.lower)
            batch["is_weights"], batch["response_mask"] = weights, batch["response_mask"] * keep
            metrics.update({f"mismatch/{k}": v.item() for k, v in mismatch.items()})
        with _timed(times, "update"):
            metrics.update(self._update(batch, step))
        # the names the console and the plot show (trainer/tracking.py, trainer/plot.py)
        for alias, key in (("actor/clip_frac", "actor/pg_clipfrac"), ("actor/kl", "actor/kl_loss"),
                           ("actor/kl", "actor/reward_kl")):
            if key in metrics:
                metrics[alias] = metrics[key]
        with _timed(times, "sync"):
            self._sync_weights(step)
        if cfg.reference.reset_every and self.reference is not None and step % cfg.reference.reset_every == 0:
            self.reference.copy_weights_from(self.actor)  # R1: the reference follows the policy
        if self.iterative_rm is not None:
            with _timed(times, "reward_model"):
                metrics.update(self._iterate_reward_model(batch, rollout.rewards, step))
        if self.use_kl_reward:
            self.kl_ctl.update(metrics.get("actor/reward_kl", 0.0), n_steps=len(rollout.samples))
            metrics["actor/kl_coef"] = self.kl_ctl.value
        metrics.update(rollout.metrics)
        metrics.update(self._batch_metrics(batch, rollout))
        metrics.update({f"timing/{k}_s": v for k, v in times.items()})
        metrics["timing/step_s"] = sum(times.values())
        if self.rank0 and self.sync_stats.get("bytes"):
            metrics["sync/gbytes_per_s"] = self.sync_stats["bytes"] / 1e9 / max(self.sync_stats.get("seconds", 0.0), 1e-9)
        metrics["throughput/tokens_per_s"] = float(batch["lengths"].sum()) / max(metrics["timing/step_s"], 1e-9)
        return metrics

    # ================================================================== phases
    def _rollout(self):
        """Rank 0 generates and scores; the samples and scores reach every rank."""
        def generate():
            position = self.sampler.state_dict()
            try:
                result = collect_rollouts(
                    self.engine, self._draw_prompts, self.sampling, self.cfg.rollout.n_samples_per_prompt,
                    num_prompts=self.cfg.algorithm.prompts_per_step, runner=self.runner, tokenizer=self.tokenizer,
                    algo=self.cfg.algorithm)
            except Exception as exc:
                if type(exc).__name__ != "SGLangStaleWeightsError":
                    raise
                self.sampler.load_state_dict(position)  # the same prompts again after the re-sync
                return None
            if self.cfg.rollout.placement == "colocated":
                self.engine.release_memory()  # the trainer takes the GPU until the next sync
            return result

        for _ in range(3):
            result = from_rank0(generate)
            if result is not None:
                return result
            # a restarted SGLang server holds its launch weights: push the current ones to every server
            self._print("rollout: a restarted server has stale weights; syncing and generating again")
            self._sync_weights()
        raise RuntimeError("rollout: servers kept restarting with stale weights; see the SGLang server logs")

    @torch.no_grad()
    def _score(self, batch: dict) -> dict:
        """Old (pre-update) actor logprobs, reference and teacher logprobs, values and reward-model scores for
        every row: each data-parallel rank scores its share, then the shares are gathered. The reward
        model's (weighted) score joins the rule-based one in `scores` and `token_rewards`."""
        rows, mbs = batch["input_ids"].shape[0], self.cfg.actor.micro_batch_size
        padded = pad_rows(batch, self.dp * mbs)  # equal micro-batches on every rank (pipeline shapes)
        shard = data_parallel_shard(padded, self.dp_rank, self.dp)
        temperature = self._train_temperature()
        scored = {"old_logprobs": self.actor.score(shard, micro_batch_size=mbs, temperature=temperature)["logprobs"]}
        if self.reference is not None:
            scored["ref_logprobs"] = self.reference.score(shard, micro_batch_size=mbs, temperature=temperature)["logprobs"]
        if self.teacher is not None:
            scored["teacher_logprobs"] = self.teacher.score(shard, micro_batch_size=mbs, temperature=temperature)["logprobs"]
        if self.critic is not None:
            raw = self.critic.score(shard, micro_batch_size=self.cfg.critic.micro_batch_size)["values"]
            scored["values"] = shift_values(raw) * shard["response_mask"]
        if self.reward_model is not None:
            scored["model_rewards"] = self.reward_model.score(shard, micro_batch_size=mbs)
        for key, local in scored.items():
            parts = [torch.empty_like(local) for _ in range(self.dp)]
            dist.all_gather(parts, local.contiguous(), group=self.dp_group)
            batch[key] = torch.cat(parts)[:rows].float()
        if self.reward_model is None:
            return {}
        added, metrics = self.reward_model.transform(batch["model_rewards"])  # weight * (normalised) score
        batch["model_rewards"] = added
        batch["scores"] = batch["scores"] + added
        answered = (batch["response_lengths"] > 0).nonzero()[:, 0]  # as build_batch: on the last response token
        batch["token_rewards"][answered, batch["lengths"][answered] - 1] += added[answered]
        return metrics

    def _update(self, batch: dict, step: int) -> dict:
        cfg, algo = self.cfg, self.cfg.algorithm
        rows_per_update = algo.mini_batch_prompts * cfg.rollout.n_samples_per_prompt
        train_actor = step > cfg.critic.warmup_steps or self.critic is None
        totals: dict[str, list[float]] = {}
        for _ in range(algo.epochs):
            for mb in mini_batches(batch, rows_per_update, shuffle=True, generator=self.shuffle):
                normalizer = mini_batch_normalizer(algo, mb["response_mask"], self.sampling.max_new_tokens)
                tokens = mini_batch_tokens(mb["response_mask"])
                if train_actor:
                    out = self.actor.train_step(self._micro(mb, cfg.actor.micro_batch_size), actor_loss_fn(
                        algo, normalizer=normalizer, token_count=tokens, temperature=self._train_temperature(),
                        vocab_size=cfg.model.vocab_size, backend=cfg.model.kernels, use_kl_loss=self.use_kl_loss,
                        use_is_weights="is_weights" in mb), skip_nonfinite=cfg.trainer.skip_nonfinite)
                    for k, v in out.items():
                        totals.setdefault(f"actor/{k}", []).append(float(v))
                if self.critic is not None:
                    out = self.critic.train_step(self._micro(mb, cfg.critic.micro_batch_size),
                                                 critic_loss_fn(algo, normalizer=normalizer, token_count=tokens),
                                                 skip_nonfinite=cfg.trainer.skip_nonfinite)
                    for k, v in out.items():
                        totals.setdefault(f"critic/{k}", []).append(float(v))
        # over the step's updates: the mean of each update's value, the extremes of the extremes
        reduce = lambda k, v: max(v) if k.endswith("_max") else min(v) if k.endswith("_min") else sum(v) / len(v)  # noqa: E731
        metrics = {k: reduce(k, v) for k, v in totals.items()}
        for role in ("actor", "critic"):  # counts, not means
            if f"{role}/nonfinite_loss" in totals:
                metrics[f"{role}/nonfinite_loss"] = float(sum(totals[f"{role}/nonfinite_loss"]))
                metrics[f"{role}/update_skipped"] = float(sum(totals[f"{role}/update_skipped"]))
        if metrics.get("actor/nonfinite_loss", 0) or metrics.get("critic/nonfinite_loss", 0):
            self._print(f"step {step}: non-finite loss in {int(metrics.get('actor/nonfinite_loss', 0))} actor / "
                        f"{int(metrics.get('critic/nonfinite_loss', 0))} critic updates; those updates were skipped")
        return metrics

    def _iterate_reward_model(self, batch: dict, rule_rewards: list[float], step: int) -> dict:
        """Iterative RL (DeepSeekMath): every step's samples give preference pairs (rule-based score
        decides); every `rm.iterative.every` steps the reward model is retrained on them (with replay)
        and the reference is reset to the current policy."""
        it = self.cfg.rm.iterative
        self.iterative_rm.collect(batch, rule_rewards)
        if step % it.every:
            return {}
        metrics = self.iterative_rm.retrain()
        if not metrics["rm/pairs_fresh"]:
            self._print(f"step {step}: no preference pairs (every group's rule-based scores tie); "
                        "reward model not retrained")
        elif it.reset_reference and self.reference is not None:
            self.reference.copy_weights_from(self.actor)
        return metrics

    def _micro(self, mini_batch: dict, micro_batch_size: int) -> list[dict]:
        """This rank's micro-batches of a mini-batch: equal row counts and widths on every rank."""
        from ..models.forward import split_micro_batches

        padded = trim_columns(pad_rows(mini_batch, self.dp * micro_batch_size))
        return split_micro_batches(data_parallel_shard(padded, self.dp_rank, self.dp), micro_batch_size)

    def _sync_weights(self, version: Optional[int] = None) -> None:
        from ..weight_sync.parity import check_parity

        version = self.step if version is None else version
        if self.cfg.rollout.placement == "colocated" and torch.cuda.is_available():
            # the caching allocator still holds the update's activations: give them back to the
            # driver, or a colocated engine resuming its weights and KV cache finds the GPU full
            torch.cuda.empty_cache()
        self.sync_stats = self.sync.sync(self.actor, version=version)
        if self.cfg.rollout.check_parity:
            probes = [self.train_data[i].prompt_ids for i in range(min(2, len(self.train_data)))] if self.rank0 else None
            check_parity(self.actor, self.engine, probes, micro_batch_size=self.cfg.actor.micro_batch_size)

    # ================================================================== rank 0: data, evaluation, metrics
    def _setup_rank0(self) -> tuple[int, int]:
        from ..data import PromptDataset, PromptSampler
        from ..rewards import build_reward_runner
        from ..rollout.factory import build_rollout_engine
        from .setup import run_tokenizer

        cfg = self.cfg
        self.tokenizer, pad_id = run_tokenizer(cfg)
        self.train_data = PromptDataset.from_config(cfg.data, self.tokenizer, split="train")
        if cfg.data.eval_path:
            self.eval_data = PromptDataset.from_config(cfg.data, self.tokenizer, split="eval")
        self.sampler = PromptSampler(len(self.train_data), shuffle=cfg.data.shuffle, seed=cfg.run.seed)
        self.runner = build_reward_runner(cfg.reward)
        self.engine = build_rollout_engine(cfg.rollout, cfg.model, rank=0, hf_path=cfg.model.hf_path,
                                           seed=cfg.run.seed, output_dir=str(self.output_dir),
                                           decode=self.tokenizer.decode, pad_token_id=pad_id)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.tracker_args = dict(total_steps=cfg.trainer.total_steps, run_name=cfg.run.name,
                                 config=cfg.model_dump(mode="json"), desc=cfg.algorithm.advantage)
        return pad_id, self.tokenizer.eos_token_id

    def _draw_prompts(self, k: int) -> list:
        return [self.train_data[i] for i in self.sampler.next_indices(k)]

    def _sampling_params(self, sampling_cfg) -> SamplingParams:
        params = SamplingParams.from_config(sampling_cfg)
        if self.eos_id is not None and self.eos_id not in params.stop_token_ids:  # stop at EOS, as SGLang does
            params = SamplingParams(**{**params.__dict__, "stop_token_ids": params.stop_token_ids + (self.eos_id,)})
        return params

    def _train_temperature(self) -> float:
        # logprobs are recomputed under the distribution the engine sampled from
        return self.sampling.temperature if self.sampling.temperature > 0 else 1.0

    def _evaluate(self, step: int) -> None:
        from_rank0(lambda: self._evaluate_rank0(step))

    def _evaluate_rank0(self, step: int) -> None:
        if self.eval_data is None:
            return
        from .evaluate import evaluate

        metrics = evaluate(self.engine, self.eval_data, self.runner, self.tokenizer,
                           greedy=self._eval_params(self.cfg.rollout.eval_sampling),
                           sampling=self.sampling, pass_k=self.cfg.trainer.eval_pass_k,
                           full_marks=self.full_marks,
                           max_prompts=self.cfg.data.eval_max_prompts,
                           step_separator=(self.cfg.algorithm.process.step_separator
                                           if self.cfg.algorithm.advantage == "grpo_process" else None))
        self.tracker.log(step, metrics, kind="eval")

    def _eval_params(self, sampling_cfg) -> SamplingParams:
        """Eval sampling with the same stop tokens (EOS) as training; rank 0 only."""
        params = SamplingParams.from_config(sampling_cfg)
        stop = tuple(dict.fromkeys(params.stop_token_ids + self.sampling.stop_token_ids))
        return SamplingParams(**{**params.__dict__, "stop_token_ids": stop})

    def _batch_metrics(self, batch: dict, rollout) -> dict:
        from ..weight_sync.parity import rollout_train_gap

        rule = torch.tensor(rollout.rewards)
        rewards = rule + batch["model_rewards"] if "model_rewards" in batch else rule
        lengths = batch["response_lengths"].float()
        out = {
            "reward/mean": rewards.mean().item(), "reward/std": rewards.std().item() if len(rewards) > 1 else 0.0,
            "reward/accuracy": (rule >= self.full_marks - 1e-6).float().mean().item(),
            "score/mean": batch["scores"].mean().item(),
            "response/length_mean": lengths.mean().item(), "response/length_max": lengths.max().item(),
            "response/truncated_frac": sum(s.finish_reason == "length" for s in rollout.samples) / len(rollout.samples),
            "policy_version": float(self.step + 1),
        }
        out.update({f"rollout/{k}": v for k, v in rollout_train_gap(rollout.samples, batch["old_logprobs"]).items()})
        return out

    # ================================================================== checkpoints
    def _state(self) -> dict:
        """Trainer state beside the models; identical on every rank (Megatron's common state)."""
        def rank0_state():
            state = {"sampler": self.sampler.state_dict()}
            if hasattr(self.engine, "generator"):  # the embedded engine's sampling stream
                state["engine_rng"] = self.engine.generator.get_state()
            return state

        state = {"kl": self.kl_ctl.state_dict(), "shuffle_rng": self.shuffle.get_state(), **from_rank0(rank0_state)}
        if self.reward_model is not None:
            state["reward_model"] = self.reward_model.state_dict()
        if self.iterative_rm is not None:
            state["iterative_rm"] = self.iterative_rm.state_dict()
        return state

    def _roles(self) -> dict:
        roles = {"actor": self.actor}
        if self.reference is not None:
            roles["reference"] = self.reference
        if self.critic is not None:
            roles["critic"] = self.critic
        if self.iterative_rm is not None:  # retrained in place: its weights and optimizer are run state
            roles["reward"] = self.reward_model.role
        return roles

    def _save(self, step: int) -> None:
        from ..checkpoint import save_checkpoint

        path = save_checkpoint(self.cfg.checkpoint.dir, step, self._roles(), extra=self._state(),
                               keep_last=self.cfg.checkpoint.keep_last)
        self._print(f"step {step}: checkpoint {path}")

    def _resume(self) -> None:
        """Continue from the newest complete checkpoint that loads; one that fails is skipped with a warning."""
        from torch.distributed.checkpoint.api import CheckpointException  # a BaseException

        from ..checkpoint import list_checkpoints, load_checkpoint

        resumed = None
        if self.cfg.checkpoint.resume == "auto":
            for path in list_checkpoints(self.cfg.checkpoint.dir):  # the same listing on every rank
                error = None
                try:
                    resumed = load_checkpoint(str(path), self._roles())
                except (Exception, CheckpointException) as exc:  # corrupt: fall back to the one before
                    error, resumed = exc, None
                if not self._agree(error is not None):
                    break
                resumed = None
                self._print(f"warning: skipping checkpoint {path}, it does not load: "
                            f"{' '.join(str(error or 'failed on another rank').split())[:300]}")
        if resumed is not None:
            self.step = resumed["step"]
            extra = resumed["extra"]
            self.kl_ctl.load_state_dict(extra["kl"])
            self.shuffle.set_state(extra["shuffle_rng"])
            if self.reward_model is not None and "reward_model" in extra:
                self.reward_model.load_state_dict(extra["reward_model"])
            if self.iterative_rm is not None and "iterative_rm" in extra:
                self.iterative_rm.load_state_dict(extra["iterative_rm"])
            if self.rank0:
                self.sampler.load_state_dict(extra["sampler"])
                if "engine_rng" in extra and hasattr(self.engine, "generator"):
                    self.engine.generator.set_state(extra["engine_rng"])
            self._print(f"resumed from {path} (step {self.step})")
        if self.rank0:
            from .tracking import Tracker

            self.tracker = Tracker(self.cfg.logging, str(self.output_dir), start_step=self.step, **self.tracker_args)

    def close(self) -> dict:
        summary = {"step": self.step}
        if self.rank0:
            self.tracker.close()
            from .plot import summary as first_last

            jsonl = self.output_dir / "metrics.jsonl"
            if jsonl.is_file():
                for key in ("reward/mean", "eval/accuracy"):
                    try:
                        summary[key] = first_last(str(jsonl), key)
                    except (KeyError, ValueError):
                        pass
            self.runner.close()
            self.engine.shutdown()
        return summary

    # ================================================================== small helpers
    def _on_sigterm(self, signum, frame) -> None:
        self.stop_requested = True  # finish the step, checkpoint, exit

    def _agree(self, flag: bool) -> bool:
        t = torch.tensor([1.0 if flag else 0.0])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def _print(self, msg: str) -> None:
        if self.rank0:
            (self.tracker.write if self.tracker is not None else print)(msg)


@contextmanager
def _timed(times: dict, name: str):
    start = time.perf_counter()
    yield
    times[name] = time.perf_counter() - start
